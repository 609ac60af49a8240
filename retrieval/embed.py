"""Embedder: image paths or PIL images -> (n, d) float32 unit rows, decoded in worker processes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from retrieval.errors import ImageError
from retrieval.images import Box, load_rgb
from retrieval.model import EmbeddingNet
from retrieval.transforms import EvalTransform

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass
class EmbedResult:
    """Vectors for the paths that decoded; ``ok[i]`` is the index in the input of row i."""

    vectors: np.ndarray
    ok: list[int]
    failures: list[tuple[str, str]] = field(default_factory=list)


class _PathDataset(Dataset):
    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: EvalTransform,
        boxes: Sequence[Box | None] | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        if len(self.boxes) != len(self.paths):
            raise ValueError(f"{len(self.boxes)} boxes for {len(self.paths)} paths")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            img = load_rgb(self.paths[i], min_side=self.transform.pre.resize, box=self.boxes[i])
            return i, self.transform(img), ""
        except ImageError as exc:
            return i, None, str(exc)


def _collate(items: list[tuple[int, torch.Tensor | None, str]]):
    good = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, err) for i, t, err in items if t is None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, bad


class Embedder:
    """Runs an EmbeddingNet in eval mode over images; ``fingerprint`` names weights + preprocessing."""

    def __init__(
        self,
        net: EmbeddingNet,
        fingerprint: str,
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        self.net = net.eval()
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.num_workers = min(2, os.cpu_count() or 1) if num_workers is None else num_workers
        self.transform = EvalTransform(net.preprocess)

    @property
    def dim(self) -> int:
        return self.net.dim

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        out = self.net(batch.contiguous(memory_format=torch.channels_last))
        return np.ascontiguousarray(out.float().numpy(), dtype=np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, d) float32 unit rows for RGB PIL images."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        rows = [
            self._forward(
                torch.stack([self.transform(im) for im in images[s : s + self.batch_size]])
            )
            for s in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(rows)

    def iter_paths(
        self,
        paths: Sequence[str | Path],
        *,
        boxes: Sequence[Box | None] | None = None,
        chunk: int | None = None,
        progress: Progress | None = None,
    ) -> Iterator[EmbedResult]:
        """Embed files in order (each cut to its box, if ``boxes`` gives one), yielding a result
        for each run of ``chunk`` inputs (rounded up to whole batches; the last run may be
        shorter), or one for all of them. ``ok`` indexes into ``paths``. A file that cannot be
        decoded is reported in ``failures``, never fatal."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        dataset = _PathDataset(paths, self.transform, boxes)
        # Worker start-up costs more than it saves on a handful of images.
        workers = self.num_workers if len(dataset) > 2 * self.batch_size else 0
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=workers,
            collate_fn=_collate,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        rows: list[np.ndarray] = []
        ok: list[int] = []
        failures: list[tuple[str, str]] = []
        seen = 0
        yielded = False
        for idx, batch, bad in loader:
            for i, err in bad:
                log.debug("skipped %s", err)
                failures.append((dataset.paths[i], err))
            if batch is not None:
                rows.append(self._forward(batch))
                ok.extend(idx)
            if progress is not None:
                progress(len(idx) + len(bad))
            seen += len(idx) + len(bad)
            if chunk is not None and seen >= chunk:
                yield self._result(rows, ok, failures)
                rows, ok, failures, seen, yielded = [], [], [], 0, True
        if seen or not yielded:
            yield self._result(rows, ok, failures)

    def _result(
        self, rows: list[np.ndarray], ok: list[int], failures: list[tuple[str, str]]
    ) -> EmbedResult:
        vectors = np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)
        return EmbedResult(vectors, ok, failures)

    def embed_paths(
        self,
        paths: Sequence[str | Path],
        progress: Progress | None = None,
        boxes: Sequence[Box | None] | None = None,
    ) -> EmbedResult:
        """Embed files (each cut to its box, if ``boxes`` gives one); one that cannot be decoded
        is reported in ``failures``, never fatal."""
        (result,) = self.iter_paths(paths, boxes=boxes, progress=progress)
        return result
