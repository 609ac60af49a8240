"""Helpers of the reliability tests: synthetic galleries, the installed command, the report file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ..conftest import write_image
from ..server.conftest import built, index  # noqa: F401 - the tiny index and its copies

REPORT_ENV = "RETRIEVE_RELIABILITY_REPORT"
REPO = Path(__file__).resolve().parents[2]
# Several commands run at once on few cores: one compute thread each keeps torch's thread pools
# from fighting over the cores (a run takes half the time on a busy 2-core machine).
COMMAND_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
_report_lock = threading.Lock()


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated colours."""
    return [((97 * i) % 256, (157 * i + 60) % 256, (211 * i + 120) % 256) for i in range(n)]


def write_gallery(root: Path, labels: int, per_label: int, *, seed: int = 0) -> Path:
    """``labels`` folders of ``per_label`` small unique PNGs each, under ``root``."""
    for li, color in enumerate(palette(labels)):
        for j in range(per_label):
            write_image(root / f"label{li:02d}" / f"{j:04d}.png", color, seed + li * 10_000 + j, 24)
    return root


def write_images(folder: Path, n: int, color: tuple[int, int, int], *, seed: int) -> list[Path]:
    """``n`` unique PNGs in ``folder``, in the order enrol reads them (sorted by name)."""
    return [write_image(folder / f"{j:04d}.png", color, seed + j, 24) for j in range(n)]


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


def retrieve_exe() -> str:
    exe = Path(sys.executable).parent / "retrieve"
    found = str(exe) if exe.exists() else shutil.which("retrieve")
    if found is None:
        pytest.skip("the retrieve command is not installed in this environment (pip install -e .)")
    return found


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


def record(fault: str, **figures: object) -> None:
    """Add what a test tried and saw to the JSON report at $RETRIEVE_RELIABILITY_REPORT, if set."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    with _report_lock:
        target = Path(path)
        data = json.loads(target.read_text()) if target.exists() else {}
        data[fault] = figures
        target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
