"""Embedder: image paths or PIL images -> (n, d) float32 unit rows. Decoding runs in a thread pool
ahead of the forward pass; the forward pass is any batch function (ONNX Runtime or torch), so this
module imports neither."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.config import Preprocess
from retrieval.engine.images import Box, load_rgb
from retrieval.engine.rerank import normalise
from retrieval.engine.transforms import EvalTransform
from retrieval.errors import ImageError

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
Forward = Callable[[np.ndarray], np.ndarray]  # (n, 3, h, w) float32 -> (n, d) float32 unit rows

_LOOKAHEAD = 3  # batches decoded ahead of the one being embedded


@dataclass
class EmbedResult:
    """Vectors for the paths that decoded; ``ok[i]`` is the index in the input of row i.
    ``mirrored`` (asked with ``mirror``): each row averaged with its mirror image's, as a
    query is asked (``mirror_average``)."""

    vectors: np.ndarray
    ok: list[int]
    failures: list[tuple[str, str]] = field(default_factory=list)
    mirrored: np.ndarray | None = None


def mirror_average(vectors: np.ndarray, mirrors: np.ndarray) -> np.ndarray:
    """Each image's unit vector averaged with its mirror image's, re-normalised: what a network
    trained with ``--flip`` returns in one call, here from a one-pass network's two."""
    return normalise(vectors + mirrors)


class Embedder:
    """Runs a forward function over images; ``fingerprint`` names weights + preprocessing;
    ``runtime`` says what runs the network ("onnxruntime" or "torch")."""

    def __init__(
        self,
        forward: Forward,
        preprocess: Preprocess,
        dim: int,
        fingerprint: str,
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
        runtime: str = "torch",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        self.forward = forward
        self.dim = dim
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.num_workers = min(2, os.cpu_count() or 1) if num_workers is None else num_workers
        self.transform = EvalTransform(preprocess)
        self.runtime = runtime

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.forward(batch), dtype=np.float32)

    def _forward_mirrored(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the batch's vectors, each averaged with its mirror image's), one forward call of
        the batch and its mirror images (flipped left-right after preprocessing)."""
        both = self._forward(np.concatenate([batch, batch[..., ::-1]]))
        vectors = both[: len(batch)]
        return vectors, mirror_average(vectors, both[len(batch) :])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, d) float32 unit rows for RGB PIL images."""
        return self.embed_images_mirrored(images, mirror=False)[0]

    def embed_images_mirrored(
        self, images: Sequence[Image.Image], *, mirror: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float32 unit rows for RGB PIL images, and (``mirror``) the same averaged with
        their mirror images' (``mirror_average``; without ``mirror``, the same array again)."""
        if not images:
            empty = np.zeros((0, self.dim), np.float32)
            return empty, empty
        plain, mirrored = [], []
        for s in range(0, len(images), self.batch_size):
            batch = np.stack([self.transform(im) for im in images[s : s + self.batch_size]])
            if mirror:
                vectors, averaged = self._forward_mirrored(batch)
                mirrored.append(averaged)
            else:
                vectors = self._forward(batch)
            plain.append(vectors)
        rows = np.concatenate(plain)
        return rows, (np.concatenate(mirrored) if mirror else rows)

    def _decode_batch(
        self, paths: Sequence[str], boxes: Sequence[Box | None], start: int
    ) -> tuple[list[int], np.ndarray | None, list[tuple[int, str]]]:
        """Decode and transform one batch: (input indices, stacked arrays, (index, error))."""
        arrays, ok, bad = [], [], []
        for i in range(start, min(start + self.batch_size, len(paths))):
            try:
                img = load_rgb(paths[i], min_side=self.transform.pre.resize, box=boxes[i])
                arrays.append(self.transform(img))
                ok.append(i)
            except ImageError as exc:
                bad.append((i, str(exc)))
        return ok, (np.stack(arrays) if arrays else None), bad

    def _batches(
        self, paths: Sequence[str], boxes: Sequence[Box | None]
    ) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
        """Decoded batches in order; with workers, decoded in threads (Pillow's decoding and
        resizing and numpy's arithmetic release the GIL) while the caller runs the network."""
        starts = range(0, len(paths), self.batch_size)
        # Thread start-up costs more than it saves on a batch or two.
        if self.num_workers == 0 or len(starts) <= 2:
            for s in starts:
                yield self._decode_batch(paths, boxes, s)
            return
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="decode") as pool:
            pending: deque[Future] = deque()
            queue = iter(starts)
            for s in queue:
                pending.append(pool.submit(self._decode_batch, paths, boxes, s))
                if len(pending) >= self.num_workers + _LOOKAHEAD:
                    break
            while pending:
                batch = pending.popleft().result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(pool.submit(self._decode_batch, paths, boxes, nxt))
                yield batch

    def iter_paths(
        self,
        paths: Sequence[str | Path],
        *,
        boxes: Sequence[Box | None] | None = None,
        chunk: int | None = None,
        progress: Progress | None = None,
        mirror: bool = False,
    ) -> Iterator[EmbedResult]:
        """Embed files in order (each cut to its box, if ``boxes`` gives one), yielding a result
        for each run of ``chunk`` inputs (rounded up to whole batches; the last run may be
        shorter), or one for all of them. ``ok`` indexes into ``paths``. A file that cannot be
        decoded is reported in ``failures``, never fatal. With ``mirror`` each result also
        holds the vectors averaged with their mirror images' (twice the network's work)."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        names = [str(p) for p in paths]
        boxes = list(boxes) if boxes is not None else [None] * len(names)
        if len(boxes) != len(names):
            raise ValueError(f"{len(boxes)} boxes for {len(names)} paths")
        rows: list[np.ndarray] = []
        mirrored: list[np.ndarray] | None = [] if mirror else None
        ok: list[int] = []
        failures: list[tuple[str, str]] = []
        seen = 0
        yielded = False
        for idx, batch, bad in self._batches(names, boxes):
            for i, err in bad:
                log.debug("skipped %s", err)
                failures.append((names[i], err))
            if batch is not None:
                if mirrored is None:
                    rows.append(self._forward(batch))
                else:
                    vectors, averaged = self._forward_mirrored(batch)
                    rows.append(vectors)
                    mirrored.append(averaged)
                ok.extend(idx)
            if progress is not None:
                progress(len(idx) + len(bad))
            seen += len(idx) + len(bad)
            if chunk is not None and seen >= chunk:
                yield self._result(rows, ok, failures, mirrored)
                rows, ok, failures, seen, yielded = [], [], [], 0, True
                mirrored = [] if mirror else None
        if seen or not yielded:
            yield self._result(rows, ok, failures, mirrored)

    def _result(
        self,
        rows: list[np.ndarray],
        ok: list[int],
        failures: list[tuple[str, str]],
        mirrored: list[np.ndarray] | None = None,
    ) -> EmbedResult:
        def stacked(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

        return EmbedResult(
            stacked(rows), ok, failures, None if mirrored is None else stacked(mirrored)
        )

    def embed_paths(
        self,
        paths: Sequence[str | Path],
        progress: Progress | None = None,
        boxes: Sequence[Box | None] | None = None,
        mirror: bool = False,
    ) -> EmbedResult:
        """Embed files (each cut to its box, if ``boxes`` gives one); one that cannot be decoded
        is reported in ``failures``, never fatal. ``mirror``: see ``iter_paths``."""
        (result,) = self.iter_paths(paths, boxes=boxes, progress=progress, mirror=mirror)
        return result
