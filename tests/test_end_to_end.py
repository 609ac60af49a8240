"""The installed ``retrieve`` command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import COLORS, write_image


def retrieve_exe() -> str:
    exe = Path(sys.executable).parent / "retrieve"
    found = str(exe) if exe.exists() else shutil.which("retrieve")
    if found is None:
        pytest.skip("the retrieve command is not installed in this environment (pip install -e .)")
    return found


def test_installed_command_round_trip(gallery: Path, tmp_path: Path):
    exe = retrieve_exe()
    env = {**os.environ, "RETRIEVE_INDEX": str(tmp_path / "index")}

    def call(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
        )

    built = call("build-index", gallery, "--model", "tiny")
    assert built.returncode == 0, built.stderr
    q = write_image(tmp_path / "q.png", COLORS["green"], seed=42)
    answer = call("query", q, "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["label"] == "green"
    missing = call("query", tmp_path / "missing.jpg")
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "missing.jpg" in missing.stderr
