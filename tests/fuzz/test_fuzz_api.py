"""The HTTP API fuzzed from its own OpenAPI schema (issue 15): Schemathesis, all its checks and
phases, against a real `retrieve serve` on loopback (tests/fuzz/api.py); a short budget here
($RETRIEVE_FUZZ_API_EXAMPLES cases per operation and phase, 15 by default), a long one in
scripts/fuzz.py. Zero failures, server errors and contract alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .api import run_schemathesis, schemathesis_exe


def test_the_api_keeps_its_schema_under_fuzzing(index: Path, tmp_path: Path):  # noqa: F811
    if schemathesis_exe() is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    examples = int(os.environ.get("RETRIEVE_FUZZ_API_EXAMPLES", "15"))
    done = run_schemathesis(index, tmp_path / "st", max_examples=examples)
    summary = done.stdout[done.stdout.rfind("SUMMARY") :]
    assert done.returncode == 0, done.stdout[-6000:]
    assert "passed" in summary and "failure" not in summary and "error" not in summary, summary
