"""Helpers of the reliability tests: Python subprocesses (one holding the writer lock), the
installed command, and what interrupted writers leave behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from ..helpers import COMMAND_ENV, REPO, retrieve_exe


def python(script: str, *args: object) -> subprocess.Popen[str]:
    """A Python subprocess running ``script`` (dedented), stdout piped, with the repo importable."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )


HOLD = """
    import sys, time
    from index.lock import writer_lock
    lock = writer_lock(sys.argv[1])
    assert lock.acquire(timeout=10)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(folder: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the writer lock of ``folder`` for ``seconds``, once it says so."""
    proc = python(HOLD, folder, seconds)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def retrieve(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed command to completion."""
    return subprocess.run(
        [retrieve_exe(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=COMMAND_ENV,
    )


def stray_files(folder: Path) -> list[str]:
    """Temp files and build folders that interrupted writers can leave anywhere below ``folder``."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.endswith(".tmp") or ".building" in p.name or p.name.endswith(".replaced")
    )
