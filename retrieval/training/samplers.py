"""Class-balanced P×K batch sampling over dataset labels (indices only, no tensors)."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Batches of exactly ``p`` distinct classes × ``k`` dataset indices each (batch size p*k).

    Use as ``DataLoader(dataset, batch_sampler=PKSampler(labels, p, k))``; ``labels[i]`` is the
    label of dataset item ``i``.

    Within an epoch each class draws from its own shuffled pool of images, so images repeat
    only once the class's pool is used up (without replacement as far as possible). Classes are
    picked with probability proportional to the images they have left this epoch, so a
    ``len(self)``-batch epoch covers most images once; when fewer than ``p`` classes have images
    left, the rest of the batch is filled with classes picked uniformly. A class with fewer
    than ``k`` (but at least 2) images contributes all its images plus some drawn again with
    replacement. Classes with a single image cannot give a positive pair and are left out;
    ``dropped_classes`` counts them.

    The shuffle depends only on ``seed + epoch`` (see ``set_epoch``): the same seed and epoch
    give the same batches.
    """

    def __init__(
        self,
        labels: Sequence[int | str],
        p: int,
        k: int,
        *,
        seed: int = 0,
        batches: int | None = None,
    ) -> None:
        if p < 2 or k < 2:
            raise ValueError(
                f"P×K batches need p >= 2 classes and k >= 2 images per class (got p={p}, k={k}): "
                "mining needs a positive and a negative for every anchor; raise p and k"
            )
        if batches is not None and batches < 1:
            raise ValueError(f"batches must be >= 1 (got {batches}); pass None for one pass")
        by_class: dict[Hashable, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(label, []).append(index)
        self.classes: list[list[int]] = [idx for idx in by_class.values() if len(idx) >= 2]
        self.dropped_classes: int = len(by_class) - len(self.classes)
        if len(self.classes) < p:
            raise ValueError(
                f"P×K batches need at least {p} classes with >= 2 images; the data has "
                f"{len(self.classes)} ({self.dropped_classes} classes have a single image): "
                "lower p or add images"
            )
        self.p = p
        self.k = k
        self.seed = seed
        self.epoch = 0
        usable_images = sum(len(idx) for idx in self.classes)
        self.batches: int = batches if batches is not None else max(1, usable_images // (p * k))

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``: the batches become a function of ``seed + epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        n_classes = len(self.classes)
        pools: list[list[int]] = [[] for _ in range(n_classes)]
        left = np.array([len(idx) for idx in self.classes], dtype=np.float64)
        for _ in range(self.batches):
            chosen = self._pick_classes(rng, left)
            batch: list[int] = []
            for c in chosen:
                batch.extend(self._draw(rng, c, pools))
                left[c] = max(0.0, left[c] - self.k)
            yield batch

    def _pick_classes(self, rng: np.random.Generator, left: np.ndarray) -> list[int]:
        """``p`` distinct class positions, weighted by images left this epoch, then uniform."""
        fresh = np.flatnonzero(left > 0)
        take = min(self.p, fresh.size)
        chosen: list[int] = []
        if take:
            weights = left[fresh] / left[fresh].sum()
            chosen.extend(int(c) for c in rng.choice(fresh, size=take, replace=False, p=weights))
        if take < self.p:
            rest = np.setdiff1d(np.arange(len(self.classes)), chosen)
            chosen.extend(int(c) for c in rng.choice(rest, size=self.p - take, replace=False))
        return chosen

    def _draw(self, rng: np.random.Generator, c: int, pools: list[list[int]]) -> list[int]:
        """``k`` indices of class ``c``: distinct when the class has >= k images."""
        images = self.classes[c]
        pool = pools[c]
        if not pool:
            pool.extend(int(i) for i in rng.permutation(images))
        taken = pool[: self.k]
        del pool[: self.k]
        short = self.k - len(taken)
        if short and len(images) >= self.k:
            # The pool ran dry mid-draw: start a new pass, skipping what this draw already holds.
            fresh = [int(i) for i in rng.permutation(images)]
            seen = set(taken)
            others = [i for i in fresh if i not in seen]
            taken.extend(others[:short])
            pool[:] = others[short:] + [i for i in fresh if i in seen]
        elif short:
            taken.extend(int(i) for i in rng.choice(images, size=short))
        return taken
