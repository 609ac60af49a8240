"""Shared fixtures: tiny synthetic galleries and paths to the optional real data."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from retrieval.faces.cli import main

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(*args: object, ok: bool = True) -> Result:
    """``retrieve ARGS`` through click's CliRunner (stderr in the output); with ``ok``, it must
    exit 0."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def need_shared(sub: str) -> Path:
    """The real data folder ``sub``, or skip the test saying why."""
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(
            f"real data {path} is absent (only the developers' machines have ../shared/data)"
        )
    return path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_growth(run: Callable[[], object]) -> tuple[int, int]:
    """(how far this process's peak RSS rose above its RSS while ``run`` ran, how much more RSS
    it holds afterwards), in bytes. The peak is reset first (/proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("the peak RSS cannot be reset here (/proc/self/clear_refs)")
    before = _status("VmRSS")
    run()
    return _status("VmHWM") - before, _status("VmRSS") - before


def flat_png(
    width: int, height: int, color: tuple[int, ...] = (90, 160, 40, 255), level: int = 1
) -> bytes:
    """A PNG of one colour (RGBA, RGB or L by the length of ``color``), written without
    holding its pixels: megapixels in a few hundred kilobytes (compression ``level``)."""
    kind = {4: 6, 3: 2, 1: 0}[len(color)]
    row = b"\x00" + bytes(color) * width
    compressor = zlib.compressobj(level)
    raw = b"".join(compressor.compress(row * 64) for _ in range(height // 64))
    raw += compressor.compress(row * (height % 64)) + compressor.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, kind, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def write_image(path: Path, color: tuple[int, int, int], seed: int, size: int = 48) -> Path:
    """A noisy image around ``color``: same colour = same class, the noise makes each unique."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color, np.float32) + rng.normal(0, 12, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


# The keys of `retrieve evaluate --json` (a contract: scripts read them).
EVALUATE_JSON_KEYS = {
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "map_at_r",
    "enrollment",
    "n_images",
    "n_classes",
    "model",
}

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    """Three colour classes x 4 images, one nested a level deeper."""
    root = tmp_path / "gallery"
    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(4):
            sub = root / label / ("nested" if j == 3 else "")
            write_image(sub / f"{j}.png", color, seed=ci * 10 + j)
    return root
