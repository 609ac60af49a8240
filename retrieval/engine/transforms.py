"""Eval transform from a backbone's preprocessing: resize, centre crop, normalise (numpy only)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from retrieval.config import Preprocess


class EvalTransform:
    """PIL RGB image -> (3, crop, crop) float32 array, normalised as the backbone expects."""

    def __init__(self, pre: Preprocess) -> None:
        self.pre = pre
        self.mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, 1, 3) * 255.0
        self.inv_std = 1.0 / (np.asarray(pre.std, dtype=np.float32).reshape(1, 1, 3) * 255.0)

    def _resized(self, size: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
        """(resized size, left, top of the centre crop in it) for an image of ``size``."""
        w, h = size
        scale = self.pre.resize / min(w, h)
        resized = (max(self.pre.crop, round(w * scale)), max(self.pre.crop, round(h * scale)))
        return resized, (resized[0] - self.pre.crop) // 2, (resized[1] - self.pre.crop) // 2

    def crop_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The part of an image of ``size`` that the network sees, as fractions of its width and
        height: (left, top, right, bottom)."""
        (w, h), left, top = self._resized(size)
        c = self.pre.crop
        return left / w, top / h, (left + c) / w, (top + c) / h

    def __call__(self, img: Image.Image) -> np.ndarray:
        size, left, top = self._resized(img.size)
        if size != img.size:
            img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        c = self.pre.crop
        img = img.crop((left, top, left + c, top + c))
        arr = np.subtract(np.asarray(img), self.mean, dtype=np.float32)
        arr *= self.inv_std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
