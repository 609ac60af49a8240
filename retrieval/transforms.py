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

    def __call__(self, img: Image.Image) -> np.ndarray:
        w, h = img.size
        scale = self.pre.resize / min(w, h)
        size = (max(self.pre.crop, round(w * scale)), max(self.pre.crop, round(h * scale)))
        if size != (w, h):
            img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        c = self.pre.crop
        left = (size[0] - c) // 2
        top = (size[1] - c) // 2
        img = img.crop((left, top, left + c, top + c))
        arr = np.subtract(np.asarray(img), self.mean, dtype=np.float32)
        arr *= self.inv_std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
