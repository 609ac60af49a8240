"""Helpers of the index tests: clustered unit vectors and a brute-force reference search (the
shared ones, random unit rows and an index's files, are in tests/helpers.py)."""

from __future__ import annotations

import numpy as np

from index import Hit

from ..helpers import DIM


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
