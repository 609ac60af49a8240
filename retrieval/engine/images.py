"""Safe image decoding: size limits, JPEG draft decoding, EXIF orientation, any mode to RGB."""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image, ImageOps

from retrieval.errors import ImageError, InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# A 50-megapixel photo is legitimate; a "decompression bomb" claims far more.
MAX_PIXELS = 120_000_000
# EXIF orientations that turn the stored image by a quarter: width and height trade places.
_SWAPS_SIDES = frozenset({5, 6, 7, 8})

Box = tuple[int, int, int, int]


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_rgb(
    path: str | Path,
    min_side: int | None = None,
    box: Box | None = None,
    *,
    data: bytes | None = None,
) -> Image.Image:
    """Decode ``path`` (or ``data``, the bytes of an image file that errors call ``path``) to an
    upright RGB image, or to the region ``box`` of it.

    ``box`` is (left, top, right, bottom) in pixels of the full-size upright image (after EXIF
    orientation), right and bottom exclusive; it is clamped to the image. With ``min_side``, JPEGs
    are decoded at the smallest DCT scale whose shorter side (of the box, when given) is still at
    least ``min_side`` (far faster for big photos). Raises ImageError naming the file.
    """
    p = Path(path)
    with _image_errors(p):
        img = Image.open(p if data is None else io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ImageError(
                f"{p}: {img.width}x{img.height} image is over the limit of {MAX_PIXELS:,} pixels"
            )
        region = None if box is None else _clamp(p, box, _upright_size(img))
        scale = 1.0
        if min_side is not None and img.format == "JPEG":
            scale = _draft(img, min_side, region)
        img.load()
        img = ImageOps.exif_transpose(img)
        if region is not None:
            img = img.crop(_scaled(region, scale, img.size))
        return _to_rgb(img)


ImageInput = Union[str, "os.PathLike[str]", bytes, Image.Image, np.ndarray]
"""An image as a user gives it: a file path, the bytes of an image file, a PIL image, or an
array of uint8 pixels (h, w), (h, w, 1), (h, w, 3) RGB or (h, w, 4) RGBA."""


def decode_input(
    image: ImageInput, name: str, min_side: int | None = None
) -> tuple[Image.Image, str | None]:
    """(the upright RGB image, the sha256 of its file's content, or None for an image given in
    memory). A file is read once: its bytes give both. InputError naming ``name`` for a path
    that is not a file or an array of another shape or type; ImageError for bytes or a file
    that do not decode."""
    if isinstance(image, Image.Image):
        with _image_errors(Path(name)):
            return _to_rgb(image), None
    if isinstance(image, np.ndarray):
        return _from_array(image, name), None
    if isinstance(image, bytes):
        return load_rgb(name, min_side, data=image), hashlib.sha256(image).hexdigest()
    path = Path(image)
    if not path.is_file():
        why = "is not a regular file" if path.exists() else "does not exist"
        raise InputError(f"query image {name} {why}")
    with _image_errors(path):
        data = path.read_bytes()
    return load_rgb(name, min_side, data=data), hashlib.sha256(data).hexdigest()


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise InputError(f"{name}: an image array must be of uint8 pixels, not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(
            f"{name}: an image array must be (h, w), (h, w, 1), (h, w, 3) or (h, w, 4), "
            f"not {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"{name}: an image array must hold at least one pixel")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise InputError(
            f"{name}: {array.shape[1]}x{array.shape[0]} image is over the limit of {MAX_PIXELS:,} pixels"
        )
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the upright image (after EXIF orientation), read from the header only."""
    p = Path(path)
    with _image_errors(p), Image.open(p) as img:
        return _upright_size(img)


@contextmanager
def _image_errors(p: Path) -> Iterator[None]:
    """Turn whatever decoding raises into an ImageError naming ``p``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{p}: image is over the limit of {MAX_PIXELS:,} pixels ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{p}: no such file") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"{p}: not a readable image ({reason})") from exc


def _upright_size(img: Image.Image) -> tuple[int, int]:
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return (img.height, img.width) if orientation in _SWAPS_SIDES else img.size


def _clamp(p: Path, box: Box, size: tuple[int, int]) -> Box:
    left, top, right, bottom = box
    clamped = (max(left, 0), max(top, 0), min(right, size[0]), min(bottom, size[1]))
    if clamped[0] >= clamped[2] or clamped[1] >= clamped[3]:
        raise ImageError(f"{p}: box {box} holds no pixel of the {size[0]}x{size[1]} image")
    return clamped


def _draft(img: Image.Image, min_side: int, region: Box | None) -> float:
    """Ask for the coarsest DCT scale that keeps the shorter side (of ``region`` when given) at
    least ``min_side``; the factor that divides the full-size coordinates."""
    if region is None:
        request = (min_side, min_side)
    else:
        short = min(region[2] - region[0], region[3] - region[1])
        request = (
            math.ceil(img.width * min_side / short),
            math.ceil(img.height * min_side / short),
        )
    original_width = img.width
    chosen = img.draft("RGB", request)
    # draft() answers with where the full-size image lies in the reduced one: (0, 0, w/s, h/s).
    return 1.0 if chosen is None else original_width / chosen[1][2]


def _scaled(region: Box, scale: float, size: tuple[int, int]) -> Box:
    """``region`` in the coordinates of an image decoded at 1/``scale``, rounded outwards."""
    left, top, right, bottom = region
    return (
        math.floor(left / scale),
        math.floor(top / scale),
        min(math.ceil(right / scale), size[0]),
        min(math.ceil(bottom / scale), size[1]),
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def thumbnail_jpeg(path: str | Path, side: int = 160, quality: int = 85) -> bytes:
    """A JPEG of the upright image at ``path`` scaled to fit a ``side`` x ``side`` square (never
    enlarged). Raises ImageError naming the file."""
    img = load_rgb(path, min_side=side)
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()
