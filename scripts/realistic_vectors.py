"""Synthetic galleries with the statistics of real embeddings, for benchmarks at sizes no photo
collection here reaches.

``measure`` takes real embeddings (unit rows) and their labels and keeps what the generator
needs: the mean and covariance of the class means (the spread *between* classes), the pooled
covariance of the images around their class mean (the spread *within* a class), and the
empirical distributions of class sizes, of each class's spread relative to the pooled one and of
each image's distance to its class mean relative to its class's. ``Gallery`` draws as many
classes as a gallery of n needs, each a mean from the first gaussian and a spread from the
empirical ones, and its images as mean + a residual of the pooled within-class covariance scaled
by the class's and an image's spread, normalised to unit length: seeded, chunk by chunk (a chunk
can be drawn again on its own), so that a million 1280-d rows need never be in memory at once.

With 50 real classes the between-class covariance has rank 49: new classes vary along the
directions the real ones do, no more. ``compare`` puts real and synthetic sets of the same size
side by side (nearest-neighbour accuracy, cosines, recall of approximate search): see
scripts/bench_ann.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

CHUNK = 10_000
FIXED_CLASS = 100
"""Class 0 of every gallery has exactly this many images (the label a benchmark removes)."""


def _factor(cov: np.ndarray) -> np.ndarray:
    """F with F @ F.T == cov (positive part), columns of negligible variance dropped."""
    w, v = np.linalg.eigh(cov)
    keep = w > w.max() * 1e-9
    return v[:, keep] * np.sqrt(w[keep])


@dataclass(frozen=True)
class EmbeddingStats:
    """What ``measure`` keeps of real embeddings (float64; d = their dimension)."""

    mean: np.ndarray  # (d,) mean of the class means
    between: np.ndarray  # (d, r): class mean = mean + between @ z, z ~ N(0, I_r)
    within: np.ndarray  # (d, d'): residual direction = within @ e, e ~ N(0, I_d')
    class_sizes: np.ndarray  # (C,) images per real class
    class_spread: np.ndarray  # (C,) rms residual of a class / pooled rms residual
    image_spread: np.ndarray  # (N,) |residual| of an image / rms residual of its class
    classes: int
    images: int
    between_scale: float = 1.0  # class means drawn at this fraction of the measured spread

    def scaled(self, between_scale: float) -> EmbeddingStats:
        return replace(self, between_scale=between_scale)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


def measure(vectors: np.ndarray, labels: np.ndarray) -> EmbeddingStats:
    """The statistics of real embeddings ``vectors`` (n, d) of classes ``labels`` (n,)."""
    x = np.asarray(vectors, dtype=np.float64)
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    classes = int(y.max()) + 1
    means = np.stack([x[y == c].mean(axis=0) for c in range(classes)])
    residuals = x - means[y]
    sq = np.einsum("ij,ij->i", residuals, residuals)
    per_class = np.array([sq[y == c].mean() for c in range(classes)])
    pooled = residuals.T @ residuals / (len(x) - classes)
    return EmbeddingStats(
        mean=means.mean(axis=0),
        between=_factor(np.cov(means.T)),
        within=_factor(pooled),
        class_sizes=np.bincount(y),
        class_spread=np.sqrt(per_class / sq.mean()),
        image_spread=np.sqrt(sq / per_class[y]),
        classes=classes,
        images=len(x),
    )


class Gallery:
    """``n`` seeded unit rows drawn after ``stats`` (see the module's docstring), their classes
    (``labels``: int, class 0 of exactly ``FIXED_CLASS`` images when n allows), and queries:
    further images of the same classes, none of them in the gallery."""

    def __init__(self, stats: EmbeddingStats, n: int, *, seed: int = 0) -> None:
        self.stats, self.n, self.seed = stats, n, seed
        rng = np.random.default_rng([seed, 0])
        sizes: list[int] = [min(FIXED_CLASS, n)] if n >= 2 * FIXED_CLASS else []
        while sum(sizes) < n:
            sizes.extend(rng.choice(stats.class_sizes, 1024).tolist())
        counts = np.array(sizes)
        counts = counts[np.cumsum(counts) - counts < n]
        counts[-1] -= counts.sum() - n
        self.classes = len(counts)
        self.labels = np.repeat(np.arange(self.classes), counts)
        z = rng.standard_normal((self.classes, stats.between.shape[1]))
        offsets = z @ stats.between.T * stats.between_scale
        self._means = (stats.mean + offsets).astype(np.float32)
        self._spread = rng.choice(stats.class_spread, self.classes).astype(np.float32)
        self._rms = float(np.sqrt((stats.within**2).sum()))

    @property
    def dim(self) -> int:
        return self.stats.dim

    def _draw(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        e = rng.standard_normal((len(classes), self.stats.within.shape[1]), dtype=np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True) / np.sqrt(e.shape[1])
        image = rng.choice(self.stats.image_spread, len(classes)).astype(np.float32)
        x = self._means[classes] + (self._spread[classes] * image)[:, None] * (
            e @ self.stats.within.T.astype(np.float32)
        )
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x, dtype=np.float32)

    def chunk(self, number: int) -> np.ndarray:
        """Rows ``number * CHUNK`` to the next CHUNK (fewer at the end), the same each time."""
        start = number * CHUNK
        classes = self.labels[start : start + CHUNK]
        return self._draw(classes, np.random.default_rng([self.seed, 1, number]))

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of every chunk, in order."""
        for number in range((self.n + CHUNK - 1) // CHUNK):
            yield number * CHUNK, self.chunk(number)

    def queries(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """``m`` new images (m, d) of the gallery's classes (chosen as an image of the gallery
        would be), and their classes."""
        rng = np.random.default_rng([self.seed, 2])
        classes = self.labels[rng.integers(0, self.n, m)]
        return self._draw(classes, rng), classes


def exact_top(gallery: Gallery, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, row numbers) of each query's ``k`` nearest gallery rows by inner product, best
    first, computed chunk by chunk."""
    m = len(queries)
    best_s = np.full((m, k), -np.inf, np.float32)
    best_i = np.full((m, k), -1, np.int64)
    for start, rows in gallery.chunks():
        s = queries @ rows.T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, axis=1)
        best_i = np.take_along_axis(cand_i, order, axis=1)
    return best_s, best_i


def describe(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out statistics of a small labelled set (n x n similarities): nearest-neighbour
    accuracy, mean cosine of same-class and of other-class pairs, mean cosine to the nearest
    neighbour."""
    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    same = y[:, None] == y[None, :]
    np.fill_diagonal(same, False)
    other = y[:, None] != y[None, :]
    return {
        "n": len(x),
        "classes": len(np.unique(y)),
        "nn_accuracy": float(np.mean(y[s.argmax(axis=1)] == y)),
        "cos_same_class": float(s[same].mean()),
        "cos_other_class": float(s[other].mean()),
        "cos_nearest": float(s.max(axis=1).mean()),
    }


def calibrate(
    stats: EmbeddingStats, real_nn_accuracy: float, *, seeds: tuple[int, ...] = (1, 2, 3)
) -> EmbeddingStats:
    """``stats`` with the spread of the class means scaled so that synthetic sets of the real
    size have the real leave-one-out nearest-neighbour accuracy (mean over ``seeds``; bisection
    on the scale, which the accuracy grows with). Gaussian residuals are independent of the
    class, while real ones (backgrounds, poses) are shared between classes: at the measured
    spread synthetic classes come out easier to tell apart than real ones."""

    def accuracy(scale: float) -> float:
        scaled = stats.scaled(scale)
        found = []
        for seed in seeds:
            g = Gallery(scaled, stats.images, seed=seed)
            rows = np.concatenate([c for _, c in g.chunks()])
            found.append(describe(rows, g.labels)["nn_accuracy"])
        return float(np.mean(found))

    low, high = 0.3, 1.5
    for _ in range(7):
        mid = (low + high) / 2
        if accuracy(mid) < real_nn_accuracy:
            low = mid
        else:
            high = mid
    return stats.scaled(round((low + high) / 2, 3))
