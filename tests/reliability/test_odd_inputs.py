"""Odd inputs found by the attack of issue 15: each is read correctly, or skipped or refused with
one line naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.engine.images import load_rgb


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I;16"])
def test_16_bit_images_of_either_byte_order_decode_alike(tmp_path: Path, mode: str):
    values = (np.arange(48 * 32, dtype=np.uint32).reshape(32, 48) * 40).astype(np.uint16)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    Image.frombytes(mode, (48, 32), values.astype(dtype).tobytes()).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == ("I;16" if mode == "I;16L" else mode)
    rgb = np.asarray(load_rgb(tmp_path / "deep.tif"))
    assert rgb.shape == (32, 48, 3)
    np.testing.assert_array_equal(rgb[..., 0], values >> 8)
