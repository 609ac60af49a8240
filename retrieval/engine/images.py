"""Safe image decoding: size limits, JPEG draft decoding, EXIF orientation, any mode to RGB."""

from __future__ import annotations

import ctypes
import hashlib
import io
import math
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from index import NotRegularFileError, open_regular
from retrieval.errors import ImageError, InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# A 50-megapixel photo is legitimate; a "decompression bomb" claims far more. A JPEG is decoded
# at a reduced scale (1/2 to 1/8, Pillow's draft mode), so it may claim up to MAX_PIXELS; an
# image decoded at full size (other formats, or a JPEG asked for at full size) holds up to 4
# bytes a pixel in memory while it is decoded, so it may claim up to MAX_FULL_PIXELS (200 MB).
MAX_PIXELS = 120_000_000
MAX_FULL_PIXELS = 50_000_000
# Decodes that hold more pixels than this at once (64 MB and up) take a place in BIG_DECODES:
# at most two run at a time in a process, however many requests or threads ask, so that
# concurrent uploads of big images cannot add up to gigabytes; the memory is given back after.
BIG_DECODE_PIXELS = 16_000_000
# Pillow keeps a pointer per row (8 bytes, two pixels' worth) besides the pixels themselves: an
# image of 1 x 33 million pixels held 256 MiB of them alone. Limits count them.
_ROW_PIXELS = 2


def _held(width: int, height: int) -> int:
    """What an image decoded at this size holds, in pixels (4 bytes each) with its rows'."""
    return width * height + _ROW_PIXELS * height


_DRAFTABLE = frozenset({"JPEG", "MPO"})
# EXIF orientations that turn the stored image by a quarter: width and height trade places.
_SWAPS_SIDES = frozenset({5, 6, 7, 8})
# How to make the stored image upright, by EXIF orientation (as ImageOps.exif_transpose does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Box = tuple[int, int, int, int]


def _quiet_libtiff() -> None:
    """libtiff writes its errors and warnings on stderr itself ("ZIPDecode: Decoding error at
    scanline 0, ..."), besides failing the decode that Pillow then reports: its handlers are
    turned off, in the copy of libtiff Pillow loaded (found in this process's memory map)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    found = {line.split()[-1] for line in maps.splitlines() if "/libtiff" in line}
    for path in found:
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.restype = lib.TIFFSetWarningHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler(None)
            lib.TIFFSetWarningHandler(None)
        except (OSError, AttributeError):
            continue


_quiet_libtiff()


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
    least ``min_side`` (far faster for big photos); other formats are decoded at full size, and
    one of more than BIG_DECODE_PIXELS is then reduced by the largest integer factor that keeps
    that side, before anything else is done with it. Raises ImageError naming the file.
    """
    p = Path(path)
    with _image_errors(p), open_regular(p) if data is None else io.BytesIO(data) as f:
        img = Image.open(f)
        if img.width * img.height > MAX_PIXELS:
            raise ImageError(
                f"{p}: {img.width}x{img.height} image is over the limit of {MAX_PIXELS:,} pixels"
            )
        drafted = min_side is not None and img.format in _DRAFTABLE
        if not drafted and _held(img.width, img.height) > MAX_FULL_PIXELS:
            raise ImageError(
                f"{p}: {img.width}x{img.height} {img.format or ''} image is over the limit of "
                f"{MAX_FULL_PIXELS:,} pixels for an image decoded at full size, each row "
                f"counting {_ROW_PIXELS} more (JPEGs are decoded reduced, up to {MAX_PIXELS:,})"
            )
        scale = 1.0
        orientation, region = 1, None
        if drafted:  # a JPEG's EXIF comes with its header: the box is placed before decoding
            orientation = _orientation(img)
            region = None if box is None else _clamp(p, box, _upright_size(img, orientation))
            scale = _draft(img, min_side, region)
        with _decode_slot(_held(img.width, img.height)):
            if not drafted:  # reading a PNG's EXIF may decode it: inside the slot
                orientation = _orientation(img)
            img.load()
            if _orientation(img) != orientation:
                orientation = 1  # Pillow turned it upright as it loaded it (TIFF) and said so
            if not drafted and box is not None:
                region = _clamp(p, box, _upright_size(img, orientation))
            if min_side is not None and img.width * img.height > BIG_DECODE_PIXELS:
                img, scale = _reduce(img, min_side, region)
            if orientation in _UPRIGHT:
                img = img.transpose(_UPRIGHT[orientation])
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
    with _image_errors(path), open_regular(path) as f:
        data = f.read()
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
    with _image_errors(p), open_regular(p) as f, Image.open(f) as img:
        return _upright_size(img)


@contextmanager
def _image_errors(p: Path) -> Iterator[None]:
    """Turn whatever decoding raises into an ImageError naming ``p``; what Pillow warns of on
    the way (corrupt EXIF, a tag larger than the file) is not let out: the image decodes or is
    refused, and a warning would reach the CLI's output as lines of Python."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{p}: image is over the limit of {MAX_PIXELS:,} pixels ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{p}: no such file") from exc
    except NotRegularFileError as exc:
        raise ImageError(f"{p}: {exc.why}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{p}: not a readable image (unknown format)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"{p}: not a readable image ({reason})") from exc


def _orientation(img: Image.Image) -> int:
    value = img.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) else 1


def _upright_size(img: Image.Image, orientation: int | None = None) -> tuple[int, int]:
    turn = _orientation(img) if orientation is None else orientation
    return (img.height, img.width) if turn in _SWAPS_SIDES else img.size


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


class _Slots:
    """A counting semaphore that remembers the most places ever held at once."""

    def __init__(self, places: int) -> None:
        self.places = places
        self._free = threading.BoundedSemaphore(places)
        self._lock = threading.Lock()
        self.held = 0
        self.most_held = 0

    def __enter__(self) -> None:
        self._free.acquire()
        with self._lock:
            self.held += 1
            self.most_held = max(self.most_held, self.held)

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self.held -= 1
        self._free.release()


BIG_DECODES = _Slots(2)


def _libc(name: str) -> object:
    try:
        return getattr(ctypes.CDLL(None), name, None)
    except OSError:
        return None


_trim = _libc("malloc_trim")
_M_MMAP_THRESHOLD = -3


def give_back_big_blocks(threshold: int = 4 << 20) -> bool:
    """For a long-running process (``retrieve serve``): allocations of ``threshold`` bytes and
    more (a decoded image's blocks, big arrays) get pages of their own, returned to the system
    when freed, instead of glibc's heap, whose threshold otherwise rises to 32 MB after the first
    big free and which keeps what it holds (idle RSS crept up by 200 MB over 6 rounds of 8
    concurrent 50 MP uploads). Whether the C library took it (glibc only)."""
    mallopt = _libc("mallopt")
    return callable(mallopt) and bool(mallopt(_M_MMAP_THRESHOLD, threshold))


@contextmanager
def _decode_slot(pixels: int) -> Iterator[None]:
    """A place in BIG_DECODES for a decode of more than BIG_DECODE_PIXELS pixels; afterwards the
    C heap's free memory is given back to the system (glibc keeps big freed blocks otherwise)."""
    if pixels <= BIG_DECODE_PIXELS:
        yield
        return
    try:
        with BIG_DECODES:
            yield
    finally:
        if callable(_trim):
            _trim(0)


def _reduce(img: Image.Image, min_side: int, region: Box | None) -> tuple[Image.Image, float]:
    """``img`` reduced by the largest integer factor that keeps its shorter side (that of
    ``region`` when given) at least ``min_side``, and the factor (1: unchanged)."""
    short = min(img.size) if region is None else min(region[2] - region[0], region[3] - region[1])
    factor = max(1, short // max(min_side, 1))
    if factor < 2:
        return img, 1.0
    if img.mode not in _REDUCIBLE:
        img = _to_rgb(img)
    # A strip of rows at a time: reducing an image with alpha copies it whole (premultiplied)
    # first; strips of whole blocks give the same pixels as one reduce of the image.
    rows = max(1, _STRIP_PIXELS // (img.width * factor)) * factor
    out = Image.new(img.mode, (-(-img.width // factor), -(-img.height // factor)))
    for top in range(0, img.height, rows):
        strip = img.crop((0, top, img.width, min(top + rows, img.height)))
        out.paste(strip.reduce(factor), (0, top // factor))
    return out, float(factor)


_STRIP_PIXELS = 2_000_000
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"})


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


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
    if _has_alpha(img):
        if img.mode != "RGBA":
            img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img)  # composited on white by its own alpha, no copy
        return background
    if img.mode.startswith("I;16"):  # either byte order: its high byte
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8), "L")
    elif img.mode == "I":
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
