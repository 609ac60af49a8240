"""Helpers shared by the test packages: the retrieve command through CliRunner, synthetic images
and galleries, the real data, the installed command and the reliability report, answers of two
indexes compared, and an index's vectors and files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import sys
import threading
import zlib
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from index import IndexStore
from retrieval.faces.cli import main
from retrieval.indexing.shards import shard_dirs

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# --- the command ----------------------------------------------------------------------------------


def run(*args: object, ok: bool = True, input: str | None = None) -> Result:
    """``retrieve ARGS`` through click's CliRunner (stderr in the output), ``input`` its stdin;
    with ``ok``, it must exit 0."""
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


# Several commands run at once on few cores: one compute thread each keeps torch's thread pools
# from fighting over the cores (a run takes half the time on a busy 2-core machine).
COMMAND_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def retrieve_exe() -> str:
    """The installed retrieve command, or skip the test saying why."""
    exe = Path(sys.executable).parent / "retrieve"
    found = str(exe) if exe.exists() else shutil.which("retrieve")
    if found is None:
        pytest.skip("the retrieve command is not installed in this environment (pip install -e .)")
    return found


# The keys of one answer of `retrieve query --json` (a contract: scripts read them).
ANSWER_JSON_KEYS = {
    "query",
    "label",
    "confidence",
    "vote_share",
    "decision",
    "unknown_because",
    "rerank",
    "neighbors",
}

# The keys of `retrieve evaluate --json` (a contract: scripts read them).
EVALUATE_JSON_KEYS = {
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "map_at_r",
    "mirror",
    "enrollment",
    "n_images",
    "n_classes",
    "model",
    "open_set",
    "ece",
    "ece_at_absent_share",
    "rerank",
}

# --- images and galleries -------------------------------------------------------------------------

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_image(path: Path, color: tuple[int, int, int], seed: int, size: int = 48) -> Path:
    """A noisy image around ``color``: same colour = same class, the noise makes each unique."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color, np.float32) + rng.normal(0, 12, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


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


def need_shared(sub: str) -> Path:
    """The real data folder ``sub``, or skip the test saying why."""
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(
            f"real data {path} is absent (only the developers' machines have ../shared/data)"
        )
    return path


# --- the reliability report -----------------------------------------------------------------------

REPORT_ENV = "RETRIEVE_RELIABILITY_REPORT"
_report_lock = threading.Lock()


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


# --- answers of two indexes -----------------------------------------------------------------------


def answers(index: Path, queries: list[Path], *extra: object) -> list[dict]:
    """``retrieve query --json -k 10 --rerank none`` of each query, parsed (the neighbours as
    the index's search finds them: a sharded index is not re-ranked)."""
    out = run(
        "query", *queries, "--index", index, "-k", 10, "--rerank", "none", "--json", *extra
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def same_answers(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    """The same labels and neighbours with the same scores, up to float noise (the network
    runs with one thread in a Ray actor, two in a local build) and to the order of neighbours
    with equal scores (the tiny test network gives exact ties; which of two tied items a
    search lists first, or keeps at the k-th place, is arbitrary)."""
    assert [x["label"] for x in a] == [y["label"] for y in b]
    for x, y in zip(a, b, strict=True):
        ours, theirs = x["neighbors"], y["neighbors"]
        assert len(ours) == len(theirs)
        for n, m in zip(ours, theirs, strict=True):
            assert abs(n["score"] - m["score"]) < tol
        found = {(m["path"], m["label"]): m["score"] for m in theirs}
        for n in ours:
            key = (n["path"], n["label"])
            if key in found:
                assert abs(found[key] - n["score"]) < tol
            else:  # cut at the k-th place among equals
                assert abs(n["score"] - theirs[-1]["score"]) < tol


def shard_sizes(index: Path) -> list[int]:
    """Items in each shard of a sharded index."""
    out = []
    for d in shard_dirs(index):
        with IndexStore.open(d) as store:
            out.append(len(store))
    return out


def gallery_queries(gallery: Path, n: int) -> list[Path]:
    """Every few images of the gallery, ``n`` in all."""
    images = sorted(gallery.rglob("*.png"))
    return images[:: max(1, len(images) // n)][:n]


# --- an index's vectors and files -----------------------------------------------------------------

DIM = 16
MODEL = {"name": "tiny", "source": "builtin:tiny", "fingerprint": "f" * 16, "dim": DIM}


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """``n`` random float32 L2-normalised rows."""
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_sha(i: int) -> str:
    return hashlib.sha256(f"item-{i}".encode()).hexdigest()


def add_items(
    store: IndexStore, vectors: np.ndarray, labels: list[str], start: int = 0
) -> np.ndarray:
    """Add ``vectors`` with the given labels and made-up paths/hashes numbered from ``start``."""
    n = len(vectors)
    paths = [f"/gallery/{labels[i]}/{start + i}.jpg" for i in range(n)]
    shas = [fake_sha(start + i) for i in range(n)]
    return store.add(vectors, labels, paths, shas)


def db_generation(root: Path) -> int:
    with closing(sqlite3.connect(root / "records.sqlite")) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def sidecar(root: Path) -> dict:
    return json.loads((root / "vectors.faiss.json").read_text(encoding="utf-8"))


def logged_generations(root: Path, after: int) -> set[int]:
    """The generations after ``after`` that the records' change log holds."""
    with closing(sqlite3.connect(root / "records.sqlite")) as conn:
        rows = conn.execute(
            "SELECT DISTINCT generation FROM changes WHERE generation > ?", (after,)
        )
        return {int(r[0]) for r in rows}


def cache_is_current(root: Path) -> bool:
    """Whether the FAISS base on disk is intact and, with the records' change log after its
    generation, gives the records of now (the log holds every generation since)."""
    meta = sidecar(root)
    digest = hashlib.sha256((root / "vectors.faiss").read_bytes()).hexdigest()
    now = db_generation(root)
    behind = set(range(meta["generation"] + 1, now + 1))
    return meta["sha256"] == digest and logged_generations(root, meta["generation"]) == behind


def base_is_current(root: Path) -> bool:
    """Whether the FAISS base on disk is intact and of the records' generation (merged)."""
    return cache_is_current(root) and sidecar(root)["generation"] == db_generation(root)


def build_tiny_index(root: Path) -> Path:
    """Three colour classes x 4 images under ``root/gallery``, indexed with the tiny model into
    ``root/index``; returns the index folder."""
    from retrieval.indexing.build import build_index

    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(4):
            write_image(root / "gallery" / label / f"{j}.png", color, seed=ci * 10 + j)
    build_index(root / "gallery", root / "index", model="tiny")
    return root / "index"


def copy_index(index: Path, dest: Path) -> Path:
    """A copy of an index folder, for a test that changes it."""
    shutil.copytree(index, dest)
    return dest


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
