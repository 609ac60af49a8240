"""The open world: whether a query's species is in the gallery at all, and how likely its answer
is right — both fitted from the gallery alone (numpy only).

Decision score: the relative Mahalanobis distance (Ren et al. 2021) with a covariance shrunk
toward the identity::

    D_c(q) = (q - m_c)' Sw_a^-1 (q - m_c) / (1 + 1/n_c)     m_c the mean of the n_c items of class c
    D_0(q) = (q - mu)'  S0_a^-1 (q - mu)  / (1 + 1/N)       mu the mean of all N items
    score  = -(min_c D_c - D_0) / d                         higher: more like a known class
    S_a    = (1 - ALPHA) S + ALPHA (tr S / d) I             Sw within-class, S0 whole-gallery

It was the best of 21 candidate scores measured (README, "The open world"). A query is answered
"unknown" when its score is under the index's threshold; its confidence is a logistic function of
the score, the estimated probability that the answered label is right.

Everything is fitted from ``Stats``, sufficient statistics of the gallery (per label: count and sum
of vectors; overall: count, sum and second moment) that enrolment and removal update in O(d^2) per
item. ``Shape`` (the two shrunk covariances, an O(d^3) eigendecomposition independent of N) may lag
behind the statistics (it is refitted when a twentieth of the items changed); the class means never
do. ``calibrate`` probes the gallery with its own items: left out one at a time (a known species) and
whole classes left out (an absent one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from retrieval.engine.classify import Closeness, Neighbor, nearest_prototype

ALPHA = 0.9  # shrinkage toward the identity (cosine geometry)
KNOWN_ACCEPT = 0.95  # share of known queries the threshold keeps
ABSENT_SHARE = 0.2  # weight of absent probes in the confidence fit (see calibrate)
REFIT_FRACTION = 0.05  # Shape and calibration are refitted when this share of items changed
MAX_PROBES = 1000  # items probed as known queries, and as absent ones, per calibration
PER_CLASS = 30  # probes per class at most
CLASS_FOLDS = 20  # absent probes: classes left out in at most this many folds
_BLOCK = 2048
_GALLERY_BLOCK = 32768  # gallery rows a probe's similarities are computed against at a time


class Gallery(Protocol):
    """The gallery ``calibrate`` probes, by row: its vectors where asked, and all of them a
    block at a time (consecutive rows from row 0), so that a gallery on disk is never in memory
    whole."""

    def take(self, rows: np.ndarray) -> np.ndarray: ...

    def blocks(self) -> Iterable[np.ndarray]: ...


class InMemory:
    """A Gallery of vectors in memory (n, d)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows]

    def blocks(self) -> Iterable[np.ndarray]:
        for at in range(0, len(self.vectors), _GALLERY_BLOCK):
            yield self.vectors[at : at + _GALLERY_BLOCK]


class Stats:
    """Sufficient statistics of a gallery: per label its count and vector sum (the prototypes),
    the overall count, sum and second moment (d x d)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.labels: list[str] = []
        self._code: dict[str, int] = {}
        self.counts = np.zeros(0, np.int64)
        self.sums = np.zeros((0, dim))
        self.total = np.zeros(dim)
        self.second = np.zeros((dim, dim))

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def classes(self) -> int:
        return int((self.counts > 0).sum())

    def _codes(self, labels: Sequence[str]) -> np.ndarray:
        new = [lab for lab in dict.fromkeys(labels) if lab not in self._code]
        for lab in new:
            self._code[lab] = len(self.labels)
            self.labels.append(lab)
        if new:
            self.counts = np.r_[self.counts, np.zeros(len(new), np.int64)]
            self.sums = np.r_[self.sums, np.zeros((len(new), self.dim))]
        return np.array([self._code[lab] for lab in labels], np.int64)

    def update(self, vectors: np.ndarray, labels: Sequence[str], sign: int) -> None:
        """Add (``sign`` 1) or remove (-1) items; ValueError when a label would go below 0."""
        rows = np.asarray(vectors, np.float64).reshape(-1, self.dim)
        if len(rows) != len(labels):
            raise ValueError(f"{len(rows)} vectors for {len(labels)} labels")
        if not len(rows):
            return
        codes, where = np.unique(self._codes(labels), return_inverse=True)
        counts = np.bincount(where, minlength=len(codes))
        if sign < 0 and (counts > self.counts[codes]).any():
            raise ValueError("removing more items of a label than the statistics hold")
        order = np.argsort(where, kind="stable")
        sums = np.add.reduceat(rows[order], np.r_[0, np.cumsum(counts)[:-1]])
        self.counts[codes] += sign * counts
        self.sums[codes] += sign * sums
        self.sums[codes[self.counts[codes] == 0]] = 0.0
        self.total = self.total + sign * rows.sum(0)
        self.second = self.second + sign * (rows.T @ rows)

    @classmethod
    def of(cls, vectors: np.ndarray, labels: Sequence[str]) -> Stats:
        stats = cls(np.asarray(vectors).shape[1])
        stats.update(vectors, labels, 1)
        return stats

    def merged(self, other: Stats) -> Stats:
        """The statistics of two galleries together (the shards of one index)."""
        out = Stats(self.dim)
        for part in (self, other):
            codes = out._codes(part.labels)
            out.counts[codes] += part.counts
            out.sums[codes] += part.sums
            out.total += part.total
            out.second += part.second
        return out

    def present(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(labels, counts, means) of the labels that hold items."""
        keep = np.flatnonzero(self.counts > 0)
        counts = self.counts[keep]
        return [self.labels[i] for i in keep], counts, self.sums[keep] / counts[:, None]

    def to_arrays(self) -> dict[str, np.ndarray]:
        keep = self.counts > 0
        return {
            "labels": np.array(self.labels, dtype=str)[keep],
            "counts": self.counts[keep],
            "sums": self.sums[keep],
            "total": self.total,
            "second": self.second,
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> Stats:
        sums = np.asarray(arrays["sums"], np.float64)
        stats = cls(np.asarray(arrays["total"]).shape[0])
        labels = [str(lab) for lab in arrays["labels"]]
        stats.labels, stats._code = labels, {lab: i for i, lab in enumerate(labels)}
        stats.counts = np.asarray(arrays["counts"], np.int64).reshape(len(labels))
        stats.sums = sums.reshape(len(labels), stats.dim)
        stats.total = np.asarray(arrays["total"], np.float64)
        stats.second = np.asarray(arrays["second"], np.float64)
        return stats


@dataclass(frozen=True)
class Shrunk:
    """A shrunk precision in low-rank form: S_a^-1 v.v = (|v|^2 - sum_j w_j (u_j.v)^2) / s."""

    u: np.ndarray  # (d, r)
    w: np.ndarray  # (r,)
    s: float

    @classmethod
    def of(cls, cov: np.ndarray) -> Shrunk:
        lam, vecs = np.linalg.eigh((cov + cov.T) / 2)
        lam = np.maximum(lam, 0.0)
        s = ALPHA * max(float(lam.sum()) / len(lam), 1e-12)
        w = (1 - ALPHA) * lam / ((1 - ALPHA) * lam + s)
        keep = w > 1e-9
        return cls(np.ascontiguousarray(vecs[:, keep], np.float32), w[keep], s)

    def quad(self, v: np.ndarray) -> np.ndarray:
        """v' S_a^-1 v for the rows of v."""
        proj = v @ self.u
        return ((v * v).sum(1) - (proj * proj * self.w).sum(1)) / self.s

    def solve(self, v: np.ndarray) -> np.ndarray:
        """S_a^-1 v for the rows of v."""
        return (v - ((v @ self.u) * self.w) @ self.u.T) / self.s


@dataclass(frozen=True)
class Shape:
    """The within-class and whole-gallery covariances, shrunk, of the statistics at ``n`` items
    and ``classes`` labels."""

    within: Shrunk
    background: Shrunk
    n: int
    classes: int

    @classmethod
    def of(cls, stats: Stats) -> Shape:
        n = max(stats.n, 1)
        _, counts, means = stats.present()
        between = (means * counts[:, None]).T @ means  # sum_c S_c S_c' / n_c
        mu = stats.total / n
        within = (stats.second - between) / n
        background = stats.second / n - np.outer(mu, mu)
        return cls(Shrunk.of(within), Shrunk.of(background), stats.n, stats.classes)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "within_u": self.within.u,
            "within_w": self.within.w,
            "within_s": np.array(self.within.s),
            "background_u": self.background.u,
            "background_w": self.background.w,
            "background_s": np.array(self.background.s),
            "shape_n": np.array([self.n, self.classes]),
        }

    @classmethod
    def from_arrays(cls, a: Any) -> Shape:
        def part(name: str) -> Shrunk:
            return Shrunk(
                np.asarray(a[f"{name}_u"], np.float32),
                np.asarray(a[f"{name}_w"], np.float64),
                float(a[f"{name}_s"]),
            )

        n, classes = (int(v) for v in a["shape_n"])
        return cls(part("within"), part("background"), n, classes)

    def stale(self, stats: Stats) -> bool:
        """Whether the statistics moved on by more than REFIT_FRACTION of their items or labels."""
        return _moved(self.n, stats.n) or _moved(self.classes, stats.classes)


def _moved(then: int, now: int) -> bool:
    return abs(now - then) > REFIT_FRACTION * max(then, 1) or (then == 0) != (now == 0)


class Scorer:
    """The decision score of queries against a gallery's statistics and shape."""

    def __init__(self, stats: Stats, shape: Shape) -> None:
        self.labels, counts, means = stats.present()
        self.counts = counts.astype(np.float64)
        self.means = means.astype(np.float32)
        self.n = stats.n
        self.sums = stats.sums[stats.counts > 0]
        self.mu = (stats.total / max(self.n, 1)).astype(np.float32)
        self.shape = shape
        self.dim = stats.dim
        # The class means through the within-class precision, once (C x d): a query's distances
        # are then one product with them (at 17,000 classes, 5 ms instead of 130 per query).
        within = shape.within
        keep = (
            np.eye(self.dim, dtype=np.float32)
            - (within.u * within.w.astype(np.float32)) @ within.u.T
        )
        self._pm = self.means @ keep
        self._mpm = (self.means * self._pm).sum(1)
        self._code = {label: i for i, label in enumerate(self.labels)}

    def closeness(self, distances: np.ndarray) -> Closeness:
        """How near one query each label's mean is, from its ``distances`` (C,) to them (a row of
        ``distances``): minus the label's distance; None for a label the gallery lacks."""

        def of(label: str) -> float | None:
            i = self._code.get(label)
            return None if i is None else -float(distances[i])

        return of

    def closeness_among(self, query: np.ndarray, labels: Iterable[str]) -> Closeness:
        """``closeness`` of one query to ``labels`` only (None for any other): their distances
        alone, O(len(labels) d) instead of O(C d), for a label chosen among a shortlist's."""
        known = [label for label in dict.fromkeys(labels) if label in self._code]
        rows = np.array([self._code[label] for label in known], np.int64)
        near = dict(zip(known, self.distances(query, rows)[0].tolist(), strict=True))

        def of(label: str) -> float | None:
            return None if label not in near else -near[label]

        return of

    def distances(self, queries: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """(m, C): the size-corrected Mahalanobis distance of each query to each class mean; to
        the classes of the indices ``classes`` only, when given (m, len(classes))."""
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        pm, mpm, counts = (
            (self._pm, self._mpm, self.counts)
            if classes is None
            else (self._pm[classes], self._mpm[classes], self.counts[classes])
        )
        within = self.shape.within
        qu = q @ within.u
        own = (q * q).sum(1) - (qu * qu * within.w).sum(1)
        d = (own[:, None] - 2 * (q @ pm.T) + mpm[None]) / within.s
        return d / (1 + 1 / counts)[None]

    def background(self, queries: np.ndarray, mu: np.ndarray | None = None, n: int | None = None):
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        n = self.n if n is None else n
        return self.shape.background.quad(q - (self.mu if mu is None else mu)) / (1 + 1 / max(n, 1))

    def score(self, queries: np.ndarray, distances: np.ndarray | None = None) -> np.ndarray:
        """Higher: more like a class of the gallery. -inf for an empty gallery. ``distances``:
        the queries' ``distances``, when already computed."""
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        if not len(self.labels):
            return np.full(len(q), -np.inf)
        d = self.distances(q) if distances is None else distances
        return -(d.min(1) - self.background(q)) / self.dim


@dataclass(frozen=True)
class Calibration:
    """What an index decided from its own gallery: the score under which a query is unknown
    (None: never), the logistic map from score to the probability that an answer is right, and
    what it was fitted on."""

    threshold: float | None
    known_accept: float
    absent_share: float
    intercept: float
    slope: float
    n: int
    classes: int
    probes: dict[str, Any] = field(default_factory=dict)

    def confidence(self, score: float) -> float:
        """The estimated probability that an answer of this decision score is right."""
        z = self.intercept + self.slope * float(np.clip(score, -1e6, 1e6))
        return float(1 / (1 + math.exp(-min(max(z, -30), 30))))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Calibration:
        return cls(**obj)

    def stale(self, stats: Stats) -> bool:
        return _moved(self.n, stats.n) or _moved(self.classes, stats.classes)


def _blocks(rows: np.ndarray, n: int) -> list[np.ndarray]:
    """``rows`` in blocks whose distances to ``n`` class means fit in about 256 MB."""
    size = max(1, min(_BLOCK, (1 << 26) // max(n, 1)))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def knn(
    queries: np.ndarray, vectors: np.ndarray, k: int, hide: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) of each query over ``vectors`` (exact), rows where ``hide[i]``
    (m, N) is True left out."""
    sims = queries @ vectors.T
    sims[hide] = -np.inf
    k = min(k, vectors.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    scores = np.take_along_axis(sims, top, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(top, order, 1)


def nearest(
    queries: np.ndarray, gallery: Gallery, k: int, own: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) of each query over the gallery (exact, one pass over its blocks),
    the query's own row ``own[i]`` left out."""
    best_s = np.zeros((len(queries), 0), np.float32)
    best_r = np.zeros((len(queries), 0), np.int64)
    at = 0
    for block in gallery.blocks():
        hide = (own[:, None] - at) == np.arange(len(block))[None]
        s, r = knn(queries, block, k, hide)
        scores, rows = np.c_[best_s, s], np.c_[best_r, r + at]
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        at += len(block)
    return best_s, best_r


def _labels(
    scores: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    scorer: Scorer,
    distances: np.ndarray,
    k: int,
) -> list[str | None]:
    """The label each left-out probe gets by the default rule (classify.nearest_prototype), from
    its ``distances`` to the class means with itself left out of them."""
    out = []
    for j in range(len(scores)):
        neighbors = [
            Neighbor("", str(labels[i]), float(s))
            for s, i in zip(scores[j], rows[j], strict=True)
            if s > -np.inf
        ]
        out.append(nearest_prototype(neighbors, scorer.closeness(distances[j]), k))
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted logistic regression of y on x (Newton's method, a little ridge): (a, b)."""
    mean, sd = float(np.average(x, weights=w)), float(x.std()) + 1e-9
    z = np.c_[np.ones(len(x)), (x - mean) / sd]
    beta = np.zeros(2)
    ridge = 1e-3 * w.sum() * np.diag([0.0, 1.0])
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(z @ beta, -30, 30)))
        grad = z.T @ (w * (p - y)) + ridge @ beta
        hess = (z * (w * p * (1 - p))[:, None]).T @ z + ridge + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(beta[0] - beta[1] * mean / sd), float(beta[1] / sd)


def calibrate(
    gallery: Gallery,
    labels: Sequence[str],
    stats: Stats,
    shape: Shape,
    *,
    known_accept: float = KNOWN_ACCEPT,
    absent_share: float = ABSENT_SHARE,
    k: int = 5,
    seed: int = 0,
) -> Calibration:
    """Threshold and confidence from the gallery (its vectors by row, their ``labels`` and
    ``stats``):

    * known probes: up to PER_CLASS items of each label with two or more (MAX_PROBES in all),
      each scored with its own vector left out of its class mean and of the gallery mean, and
      answered by the k-NN vote of the other items;
    * absent probes: labels left out whole, in at most CLASS_FOLDS folds, up to PER_CLASS of
      their items scored against the other classes and answered by the others' vote;
    * the threshold keeps ``known_accept`` of the known probes;
    * the confidence is a logistic regression of "the answer is right" on the score over the
      probes that are answered (an absent probe's answer is always wrong), known and absent
      weighted (1 - absent_share) : absent_share — the share of queries of species the gallery
      lacks, which the gallery cannot know; 0.2 measured best over many galleries.

    The covariances (``shape``) are not refitted per probe: one label out of many moves them
    little. Cost: O(MAX_PROBES * (N + C) * d) time, one pass over the gallery's vectors, and
    memory for the probes, not the gallery.
    """
    if not 0 < known_accept < 1:
        raise ValueError(f"known_accept must be between 0 and 1, not {known_accept}")
    if not 0 <= absent_share < 1:
        raise ValueError(f"absent_share must be at least 0 and below 1, not {absent_share}")
    y = np.array(labels, dtype=str)
    scorer = Scorer(stats, shape)
    code = {lab: i for i, lab in enumerate(scorer.labels)}
    yc = np.array([code[lab] for lab in y], np.int64)
    rng = np.random.default_rng(seed)
    classes = len(scorer.labels)

    per = [rng.permutation(np.flatnonzero(yc == c))[:PER_CLASS] for c in range(classes)]
    order = rng.permutation(classes)
    rounds = [
        [per[c][r] for c in order if scorer.counts[c] >= 2 and r < len(per[c])]
        for r in range(PER_CLASS)
    ]
    known = np.array([i for r in rounds for i in r][:MAX_PROBES], np.int64)
    known_x = gallery.take(known)
    known_s, known_nn = nearest(known_x, gallery, k, known)
    k_score, k_right = [], []
    within, back = scorer.shape.within, scorer.shape.background
    big_n = scorer.n
    for part in _blocks(np.arange(len(known)), classes):
        rows, q = known[part], known_x[part]
        c = yc[rows]
        n = scorer.counts[c]
        # Each probe leaves the gallery: out of its class mean and the gallery mean, and out of
        # both covariances (a rank-one downdate, Sherman-Morrison; in high dimension an item's
        # own residual is otherwise in the covariance's span and looks close).
        r = q - scorer.means[c]
        g = (big_n - 1) / big_n * within.solve(r)  # B^-1 r, B = N/(N-1) S_a
        gamma = (1 - ALPHA) * (n / (n - 1)) / (big_n - 1)
        denom = 1 - gamma * (r * g).sum(1)
        idx = np.arange(len(rows))
        own_mean = ((scorer.sums[c] - q) / (n - 1)[:, None]).astype(np.float32)
        base = scorer.distances(q) * (1 + 1 / scorer.counts)[None]
        base[idx, c] = within.quad(q - own_mean)
        proj = (q * g).sum(1)[:, None] - g @ scorer.means.T  # (x - m_j) . g
        proj[idx, c] = ((q - own_mean) * g).sum(1)
        counts = np.repeat(scorer.counts[None], len(rows), 0)
        counts[idx, c] = n - 1
        dist = ((big_n - 1) / big_n * base + gamma[:, None] * proj**2 / denom[:, None]) / (
            1 + 1 / counts
        )
        r0 = q - scorer.mu
        g0 = (big_n - 1) / big_n * back.solve(r0)
        gamma0 = (1 - ALPHA) * (big_n / (big_n - 1)) / (big_n - 1)
        v0 = big_n / (big_n - 1) * r0
        b0 = (big_n - 1) / big_n * back.quad(v0)
        b0 = b0 + gamma0 * (v0 * g0).sum(1) ** 2 / (1 - gamma0 * (r0 * g0).sum(1))
        k_score.append(-(dist.min(1) - b0 / (1 + 1 / (big_n - 1))) / scorer.dim)
        s, nn = known_s[part], known_nn[part]
        k_right.append(np.array(_labels(s, nn, y, scorer, dist, k)) == y[rows])
    known_scores = np.concatenate(k_score) if k_score else np.zeros(0)
    known_right = np.concatenate(k_right).astype(bool) if k_right else np.zeros(0, bool)

    a_score = []
    if classes >= 2:
        folds = np.array_split(rng.permutation(classes), min(CLASS_FOLDS, classes))
        cap = max(1, MAX_PROBES // classes)
        for fold in folds:
            n = scorer.n - int(scorer.counts[fold].sum())
            mu = ((stats.total - scorer.sums[fold].sum(0)) / n).astype(np.float32)
            for rows in _blocks(np.concatenate([per[c][:cap] for c in fold]), classes):
                q = gallery.take(rows)
                dist = scorer.distances(q)
                dist[:, fold] = np.inf
                a_score.append(-(dist.min(1) - scorer.background(q, mu, n)) / scorer.dim)
    absent_scores = np.concatenate(a_score) if a_score else np.zeros(0)

    if len(known_scores) == 0:  # no label has two items: nothing to learn a threshold from
        return Calibration(None, known_accept, absent_share, 0.0, 0.0, stats.n, stats.classes)
    threshold = float(np.quantile(known_scores, 1 - known_accept))
    answered_known = known_scores >= threshold
    answered_absent = absent_scores >= threshold
    x_fit = np.r_[known_scores[answered_known], absent_scores[answered_absent]]
    y_fit = np.r_[known_right[answered_known].astype(float), np.zeros(answered_absent.sum())]
    w_known = (1 - absent_share) / len(known_scores)
    w_absent = absent_share / len(absent_scores) if len(absent_scores) else 0.0
    weights = np.r_[
        np.full(answered_known.sum(), w_known), np.full(answered_absent.sum(), w_absent)
    ]
    if len(np.unique(y_fit)) < 2:  # every probe right (or wrong): no slope to learn
        p = float(np.clip(np.average(y_fit, weights=weights), 0.01, 0.99))
        a, b = math.log(p / (1 - p)), 0.0
    else:
        a, b = fit_logistic(x_fit, y_fit, weights / weights.mean())
    probes = {
        "known": int(len(known_scores)),
        "absent": int(len(absent_scores)),
        "absent_rejected": float((absent_scores < threshold).mean())
        if len(absent_scores)
        else None,
    }
    return Calibration(threshold, known_accept, absent_share, a, b, stats.n, stats.classes, probes)
