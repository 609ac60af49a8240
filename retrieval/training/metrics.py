"""Retrieval metrics as pure functions on arrays: Recall@K, MAP@R, k-NN accuracy, enrolment curves,
the most confused label pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.engine import openset
from retrieval.engine.classify import Neighbor, nearest_prototype, vote
from retrieval.engine.rerank import Lists, rerank, shortlist, uses_lists

BLOCK = 1024


def neighbors_leave_one_out(
    x: np.ndarray, k: int, block: int = BLOCK, *, queries: np.ndarray | None = None
) -> np.ndarray:
    """Indices (n, k) of each row's k most similar other rows, best first.

    ``x`` is (n, d) float32, rows L2-normalised. Row i is asked as ``queries[i]`` (default
    ``x[i]``: embedded the same way). Works in blocks of ``block`` queries, so memory is
    O(block * n), never n * n. The row itself is excluded.
    """
    n = x.shape[0]
    k = min(k, n - 1)
    asked = x if queries is None else queries
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, block):
        sim = asked[s : s + block] @ x.T
        rows = np.arange(sim.shape[0])
        sim[rows, s + rows] = -np.inf
        part = (
            np.argpartition(-sim, k - 1, axis=1)[:, :k]
            if k < n - 1
            else np.argsort(-sim, axis=1)[:, :k]
        )
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        out[s : s + block] = np.take_along_axis(part, order, axis=1)
    return out


def reranked_leave_one_out(
    x: np.ndarray,
    labels: Sequence[str],
    k: int,
    method: str,
    *,
    queries: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (n, k) of each row's k best other rows as ``query --rerank method`` ranks them
    in a gallery of all the other rows (with their ``labels``): the shortlist of the index,
    re-ranked, each row queried on its own (as ``queries[i]``, default ``x[i]``) and left out
    of every DBA neighbour list first."""
    asked = x if queries is None else queries
    if method == "none":
        return neighbors_leave_one_out(x, k, queries=asked)
    cand = neighbors_leave_one_out(x, shortlist(k, method), queries=asked)
    lists = Lists.of(x, labels) if uses_lists(method) else None
    out = np.empty((len(x), min(k, cand.shape[1])), np.int64)
    for i, row in enumerate(cand):
        scores = rerank(method, asked[i], row, x.__getitem__, lists, without=i)
        out[i] = row[np.argsort(-scores, kind="stable")[: out.shape[1]]]
    return out


def recall_at_k(labels: np.ndarray, nn_labels: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries with at least one same-label item among their first k neighbours.

    ``labels`` (n,), ``nn_labels`` (n, K) labels of each query's neighbours, best first, K >= max(ks).
    """
    hit = nn_labels == labels[:, None]
    return {k: float(hit[:, :k].any(axis=1).mean()) for k in ks}


def map_at_r(labels: np.ndarray, nn_labels: np.ndarray) -> float:
    """Mean average precision at R (Musgrave et al. 2020), R = number of other same-label items.

    ``nn_labels`` (n, K) with K >= the largest R. Queries with R = 0 are left out.
    """
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    valid = r > 0
    if not valid.any():
        return 0.0
    if nn_labels.shape[1] < r.max():
        raise ValueError(f"need {r.max()} neighbours per query for MAP@R, got {nn_labels.shape[1]}")
    rel = (nn_labels == labels[:, None])[:, : r.max()]
    ranks = np.arange(1, rel.shape[1] + 1)
    in_r = ranks[None, :] <= r[:, None]
    precision = np.cumsum(rel, axis=1) / ranks[None, :]
    ap = (precision * rel * in_r).sum(axis=1) / np.maximum(r, 1)
    return float(ap[valid].mean())


def retrieval_metrics(
    x: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
    rerank: str = "none",
    *,
    queries: np.ndarray | None = None,
) -> dict[str, float]:
    """Leave-one-out Recall@K and MAP@R of embeddings ``x`` (n, d) with ``labels`` (n,), each
    row asked as ``queries[i]`` (default ``x[i]``), the neighbours re-ranked by ``rerank``
    (reranked_leave_one_out)."""
    _, counts = np.unique(labels, return_counts=True)
    idx = reranked_leave_one_out(
        x, labels, max(max(ks), int(counts.max()) - 1), rerank, queries=queries
    )
    nn_labels = labels[idx]
    out = {f"recall_at_{k}": v for k, v in recall_at_k(labels, nn_labels, ks).items()}
    out["map_at_r"] = map_at_r(labels, nn_labels)
    return out


def knn_accuracy(
    gallery: np.ndarray,
    gallery_labels: Sequence[str],
    queries: np.ndarray,
    query_labels: Sequence[str],
    *,
    k: int = 5,
    method: str = "prototype",
) -> float:
    """Top-1 accuracy of each query's label from its k nearest gallery items, by the rule
    ``query`` uses (``prototype``: of their labels, the one whose gallery mean is nearest, in
    the within-class shape of the gallery as an index measures it; or their ``weighted`` /
    ``majority`` vote)."""
    if len(query_labels) == 0:
        return 0.0
    scorer = None
    if method == "prototype":
        stats = openset.Stats.of(gallery, list(gallery_labels))
        scorer = openset.Scorer(stats, openset.Shape.of(stats))
    correct = 0
    for s in range(0, len(queries), BLOCK):
        sim = queries[s : s + BLOCK] @ gallery.T
        nearness = (
            None
            if scorer is None
            else [scorer.closeness(d) for d in scorer.distances(queries[s : s + BLOCK])]
        )
        kk = min(k, gallery.shape[0])
        top = np.argsort(-sim, axis=1)[:, :kk]
        for row, (qi, order) in enumerate(zip(range(s, s + len(sim)), top, strict=True)):
            neighbors = [Neighbor("", gallery_labels[j], float(sim[row, j])) for j in order]
            if nearness is not None:
                label = nearest_prototype(neighbors, nearness[row], kk)
            else:
                label = vote(neighbors, k=kk, method=method).label
            correct += label == query_labels[qi]
    return correct / len(query_labels)


def enrollment_accuracy(
    x: np.ndarray,
    labels: Sequence[str],
    shots: int,
    *,
    seed: int = 0,
    k: int = 5,
    queries: np.ndarray | None = None,
) -> float | None:
    """Enrol ``shots`` random images per class (seeded), classify all the others as ``query``
    does (knn_accuracy's prototype rule): the enrolled images by their rows of ``x``, the
    classified ones by their rows of ``queries`` (default ``x``: embedded the same way).

    Classes with no image left to classify are skipped; None when no class has enough images.
    """
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    gallery_idx: list[int] = []
    query_idx: list[int] = []
    for lab in sorted(set(labels_arr.tolist())):
        members = np.flatnonzero(labels_arr == lab)
        if len(members) <= shots:
            continue
        chosen = rng.permutation(members)
        gallery_idx.extend(chosen[:shots].tolist())
        query_idx.extend(chosen[shots:].tolist())
    if not query_idx:
        return None
    return knn_accuracy(
        x[gallery_idx],
        labels_arr[gallery_idx].tolist(),
        (x if queries is None else queries)[query_idx],
        labels_arr[query_idx].tolist(),
        k=k,
    )


RECALL_CURVE_KS = (1, 2, 4, 8, 16, 32)


def recall_curve(
    x: np.ndarray, labels: np.ndarray, ks: Sequence[int] = RECALL_CURVE_KS
) -> dict[int, float]:
    """Leave-one-out Recall@K of embeddings ``x`` (n, d) with ``labels`` (n,) for each K of
    ``ks`` below n (a larger K would only see the n - 1 other items again)."""
    ks = [k for k in ks if k < len(labels)]
    if not ks:
        return {}
    idx = neighbors_leave_one_out(x, max(ks))
    return recall_at_k(labels, labels[idx], ks)


@dataclass(frozen=True)
class Confusion:
    """Items of ``true`` whose nearest other item is of ``found``: how many, and the first such
    item with that neighbour (row indices), as an example."""

    true: str
    found: str
    count: int
    example: int
    neighbor: int


def confusions(labels: Sequence[str], nearest: np.ndarray, top: int = 10) -> list[Confusion]:
    """The ``top`` most frequent (label, label of its nearest neighbour) pairs that differ.

    ``nearest`` (n,) is each row's nearest other row (leave-one-out). Pairs are directed (A
    taken for B is not B taken for A), most frequent first, then by the labels.
    """
    found: dict[tuple[str, str], list[int]] = {}
    for i, j in enumerate(nearest.tolist()):
        if labels[i] != labels[j]:
            found.setdefault((labels[i], labels[j]), []).append(i)
    pairs = sorted(found.items(), key=lambda item: (-len(item[1]), item[0]))[:top]
    return [Confusion(a, b, len(rows), rows[0], int(nearest[rows[0]])) for (a, b), rows in pairs]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney); NaN if either
    side is empty."""
    if not len(positive) or not len(negative):
        return float("nan")
    both = np.r_[positive, negative]
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    n = len(positive)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * len(negative)))


def expected_calibration_error(
    confidence: np.ndarray, right: np.ndarray, bins: int = 10, weights: np.ndarray | None = None
) -> float:
    """Sum over ``bins`` equal-width confidence bins of (share of answers in the bin) x |mean
    confidence - share right| (0 for no answers); with ``weights``, each answer counts by its
    weight in the shares and the means."""
    conf = np.asarray(confidence, np.float64)
    if not len(conf):
        return 0.0
    hit = np.asarray(right, np.float64)
    w = np.ones(len(conf)) if weights is None else np.asarray(weights, np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        inside = which == b
        if w[inside].sum() > 0:
            gap = np.average(conf[inside], weights=w[inside]) - np.average(
                hit[inside], weights=w[inside]
            )
            err += w[inside].sum() / w.sum() * abs(gap)
    return float(err)


def share_weights(known: np.ndarray, absent_share: float) -> np.ndarray:
    """Each query's weight when the ``known`` ones (a mask) and the absent ones (the others)
    count (1 - absent_share) : absent_share in all, whatever their numbers (equal weights when
    either kind is missing)."""
    known = np.asarray(known, bool)
    n_known, n_absent = int(known.sum()), int((~known).sum())
    if not n_known or not n_absent:
        return np.ones(len(known))
    return np.where(known, (1 - absent_share) / n_known, absent_share / n_absent)


def open_set_split(
    labels: Sequence[str],
    paths: Sequence[str],
    *,
    seed: int | None = 0,
    gallery_share: float = 0.6,
    absent_per_class: int = 12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery, known, absent) indices: half the classes (rounded down; in name order, or
    shuffled with ``seed``) hold the first ``gallery_share`` of their files (by path) in the
    gallery, the rest are known queries; the first ``absent_per_class`` files of each other
    class are absent queries (the right answer is unknown)."""
    classes = sorted(set(labels))
    if seed is not None:
        classes = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    inside = set(classes[: len(classes) // 2])
    by_class: dict[str, list[int]] = {}
    for i in sorted(range(len(labels)), key=lambda i: paths[i]):
        by_class.setdefault(labels[i], []).append(i)
    gallery, known, absent = [], [], []
    for label, rows in by_class.items():
        if label in inside:
            cut = int(gallery_share * len(rows))
            gallery += rows[:cut]
            known += rows[cut:]
        else:
            absent += rows[:absent_per_class]
    return np.array(gallery, np.int64), np.array(known, np.int64), np.array(absent, np.int64)


@dataclass(frozen=True)
class OpenSetRun:
    """Known and absent queries answered one at a time against a gallery, as ``retrieve query``
    answers them by default: each query's decision score, whether it is of a known class,
    answered (not unknown), right (answered with its label), and its confidence; and the share
    of absent queries the confidence assumes (the calibration's ``absent_share``)."""

    threshold: float | None
    scores: np.ndarray
    known: np.ndarray
    answered: np.ndarray
    right: np.ndarray
    confidence: np.ndarray
    closed_right: np.ndarray
    absent_share: float

    def metrics(self) -> dict[str, Any]:
        known, absent = self.known, ~self.known
        return {
            "auroc": auroc(self.scores[known], self.scores[absent]),
            "known_right": float(self.right[known].mean()) if known.any() else None,
            "closed_set_right": float(self.closed_right[known].mean()) if known.any() else None,
            "absent_rejected": float((~self.answered[absent]).mean()) if absent.any() else None,
            "threshold": self.threshold,
            "absent_share": self.absent_share,
            "queries_absent": float(absent.mean()) if len(absent) else None,
            "ece": expected_calibration_error(
                self.confidence[self.answered], self.right[self.answered]
            ),
            "ece_at_absent_share": expected_calibration_error(
                self.confidence[self.answered],
                self.right[self.answered],
                weights=share_weights(self.known, self.absent_share)[self.answered],
            ),
        }


def open_set_run(
    vectors: np.ndarray,
    labels: Sequence[str],
    gallery: np.ndarray,
    known: np.ndarray,
    absent: np.ndarray,
    *,
    k: int = 5,
    asked: np.ndarray | None = None,
) -> OpenSetRun:
    """``OpenSetRun`` of the ``known`` and ``absent`` rows against the ``gallery`` rows, the
    gallery calibrated from itself alone (retrieval/engine/openset.py, default settings). As
    ``query`` asks them: the label from each query's row of ``asked`` (default ``vectors``;
    the mirror-averaged rows of a mirrored query), the decision score from its row of
    ``vectors``."""
    x = np.ascontiguousarray(vectors, np.float32)
    a = x if asked is None else np.ascontiguousarray(asked, np.float32)
    y = np.asarray(labels, dtype=str)
    g = x[gallery]
    stats = openset.Stats.of(g, list(y[gallery]))
    shape = openset.Shape.of(stats)
    calibration = openset.calibrate(openset.InMemory(g), list(y[gallery]), stats, shape, k=k)
    queries = np.r_[known, absent]
    scorer = openset.Scorer(stats, shape)
    distances = scorer.distances(x[queries])  # each query alone: none helps another
    scores = scorer.score(x[queries], distances)
    near = distances if asked is None else scorer.distances(a[queries])
    s, rows = openset.knn(a[queries], g, k, np.zeros((len(queries), len(g)), bool))
    voted = np.array(
        [
            nearest_prototype(
                [Neighbor("", str(y[gallery][i]), float(v)) for v, i in zip(sr, ir, strict=True)],
                scorer.closeness(d),
                k,
            )
            for d, sr, ir in zip(near, s, rows, strict=True)
        ],
        dtype=object,
    )
    is_known = np.r_[np.ones(len(known), bool), np.zeros(len(absent), bool)]
    closed_right = is_known & (voted == y[queries])
    threshold = calibration.threshold
    answered = np.ones(len(queries), bool) if threshold is None else scores >= threshold
    confidence = np.array([calibration.confidence(v) for v in scores])
    return OpenSetRun(
        threshold,
        scores,
        is_known,
        answered,
        closed_right & answered,
        confidence,
        closed_right,
        calibration.absent_share,
    )
