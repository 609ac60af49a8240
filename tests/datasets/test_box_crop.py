"""load_rgb with a box: the region of the upright image, at full size or drafted, clamped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.engine.images import image_size, load_rgb
from retrieval.errors import ImageError

GREY = (128, 128, 128)
RED = (220, 30, 30)
BOX = (400, 300, 720, 540)


def scene(size: tuple[int, int] = (800, 600), box=BOX) -> Image.Image:
    """A grey picture with a red rectangle exactly on ``box``."""
    arr = np.full((size[1], size[0], 3), GREY, dtype=np.uint8)
    left, top, right, bottom = box
    arr[top:bottom, left:right] = RED
    return Image.fromarray(arr)


def mean(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32).reshape(-1, 3).mean(axis=0)


@pytest.fixture
def jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "scene.jpg"
    scene().save(path, quality=95)
    return path


def test_box_at_full_size_is_the_region(jpeg: Path):
    whole = load_rgb(jpeg)
    crop = load_rgb(jpeg, box=BOX)
    assert crop.size == (320, 240)
    np.testing.assert_allclose(mean(crop), RED, atol=4)
    assert np.abs(mean(whole) - mean(crop)).max() > 30


def test_box_with_draft_is_scaled_and_keeps_min_side(jpeg: Path):
    crop = load_rgb(jpeg, min_side=64, box=BOX)
    # 240 / 64 allows a DCT scale of 1/2 (1/4 would leave 60 rows): drafted, yet >= 64.
    assert crop.size == (160, 120)
    np.testing.assert_allclose(mean(crop), RED, atol=4)
    whole = load_rgb(jpeg, min_side=64)
    assert whole.size == (100, 75)  # without a box the whole image decides: 1/8


@pytest.mark.parametrize("min_side", [16, 33, 61, 100, 119, 121, 239, 240])
def test_drafted_box_never_below_min_side(jpeg: Path, min_side: int):
    crop = load_rgb(jpeg, min_side=min_side, box=BOX)
    assert min(crop.size) >= min_side
    # the finest scale that keeps min_side: no coarser scale would also have done
    assert min(crop.size) // 2 < min_side


def test_box_smaller_than_min_side_is_decoded_at_full_size(tmp_path: Path):
    path = tmp_path / "small_box.jpg"
    scene(box=(10, 10, 40, 40)).save(path, quality=95)
    crop = load_rgb(path, min_side=64, box=(10, 10, 40, 40))
    assert crop.size == (30, 30)
    np.testing.assert_allclose(mean(crop), RED, atol=6)


def test_box_is_in_upright_coordinates(tmp_path: Path):
    upright = scene()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # shown upright after orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "tagged.jpg"
    stored.save(path, quality=95, exif=exif)
    assert image_size(path) == (800, 600)
    for min_side in (None, 64):
        crop = load_rgb(path, min_side=min_side, box=BOX)
        assert crop.size == ((320, 240) if min_side is None else (160, 120))
        np.testing.assert_allclose(mean(crop), RED, atol=4)


def test_box_is_clamped_to_the_image(jpeg: Path):
    crop = load_rgb(jpeg, box=(700, 500, 900, 700))
    assert crop.size == (100, 100)
    png = jpeg.with_suffix(".png")
    scene().save(png)
    assert load_rgb(png, min_side=64, box=(-5, -5, 10, 20)).size == (10, 20)


def test_box_outside_the_image_names_file_and_box(jpeg: Path):
    with pytest.raises(ImageError, match=r"scene.jpg: box \(800, 0, 900, 10\) holds no pixel"):
        load_rgb(jpeg, box=(800, 0, 900, 10))


def test_image_size_of_missing_file(tmp_path: Path):
    with pytest.raises(ImageError, match="nope.jpg: no such file"):
        image_size(tmp_path / "nope.jpg")
