"""Schemathesis against a real `retrieve serve` on loopback: the service started as a process of
its own over a copy of a tiny index, with an access token, and `st run` with all its checks and
phases (examples, coverage, fuzzing, stateful), the photos drawn as real image files
(st_hooks.py). Used by test_fuzz_api.py (a short budget) and scripts/fuzz.py (a long one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..server.helpers import REPO, serve_process

TOKEN = "fuzzing-token-0123456789"


def schemathesis_exe() -> str | None:
    exe = Path(sys.executable).parent / "st"
    return str(exe) if exe.exists() else shutil.which("st")


def run_schemathesis(
    index: Path,
    workdir: Path,
    *,
    max_examples: int,
    max_time: float | None = None,
    seed: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Serve ``index`` (changed by the run: give a copy) and run Schemathesis against it; its
    output, its JUnit report in ``workdir``, the server's log in ``workdir/server.log``."""
    exe = schemathesis_exe()
    if exe is None:
        raise FileNotFoundError("schemathesis is not installed (the dev extra has it)")
    workdir.mkdir(parents=True, exist_ok=True)
    server, url = serve_process(index, "--token", TOKEN, log=workdir / "server.log")
    try:
        command = [
            exe,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            str(max_examples),
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(workdir),
        ]
        if max_time is not None:
            command += ["--max-time", str(int(max_time))]
        if seed is not None:
            command += ["--seed", str(seed)]
        return subprocess.run(
            command,
            cwd=workdir,
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "SCHEMATHESIS_HOOKS": "tests.fuzz.st_hooks",
            },
            capture_output=True,
            text=True,
            timeout=(max_time or 600) + 120,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
