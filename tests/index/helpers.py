"""Seeded synthetic unit vectors (random or clustered), a brute-force reference search and index-file helpers."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

from index import Hit, IndexStore

DIM = 16
MODEL = {"name": "tiny", "source": "builtin:tiny", "fingerprint": "f" * 16, "dim": DIM}


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """``n`` random float32 L2-normalised rows."""
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_rows(
    n: int, dim: int = DIM, *, centres: int = 40, noise: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 unit rows around ``centres`` random unit centres (gaussian noise of norm
    about ``noise``), and the centre of each row."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    which = rng.integers(0, centres, n)
    x = c[which] + rng.normal(size=(n, dim)) * (noise / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), which


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


def brute_force(
    gallery_ids: np.ndarray, gallery: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) by inner product, best first."""
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), gallery_ids[order]


def assert_matches_reference(
    hits: list[list[Hit]], ref_scores: np.ndarray, ref_ids: np.ndarray, tol: float = 1e-5
) -> None:
    """Scores equal within ``tol``; ids equal wherever the reference score is not tied."""
    assert len(hits) == len(ref_scores)
    for row, scores, ids in zip(hits, ref_scores, ref_ids, strict=True):
        got = np.array([h.score for h in row])
        assert got.shape == scores.shape
        np.testing.assert_allclose(got, scores, atol=tol)
        for j, (hit, ref_id) in enumerate(zip(row, ids, strict=True)):
            tied_before = j > 0 and abs(scores[j] - scores[j - 1]) <= tol
            tied_after = j + 1 < len(scores) and abs(scores[j] - scores[j + 1]) <= tol
            if not (tied_before or tied_after):
                assert hit.id == ref_id, f"rank {j}: got id {hit.id}, expected {ref_id}"


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
