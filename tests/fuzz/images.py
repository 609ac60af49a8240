"""Hypothesis strategies of image files: real JPEG, PNG, TIFF, WebP, BMP and GIF bytes written
by Pillow (sizes, modes, EXIF orientation drawn), and the same bytes mutated (header fields such
as dimensions and modes overwritten, bytes flipped, cut or inserted). Used by the image fuzzing
(test_fuzz_images.py, scripts/fuzz.py) and by the Schemathesis run, which sends the valid ones
as the photos of /query and /enroll."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import strategies as st
from PIL import Image

# format -> (Pillow format, modes it writes, suffix)
FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "image/jpeg": ("JPEG", ("RGB", "L", "CMYK"), ".jpg"),
    "image/png": ("PNG", ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"), ".png"),
    "image/tiff": ("TIFF", ("RGB", "RGBA", "L", "CMYK", "I;16", "I;16B", "F", "1"), ".tif"),
    "image/webp": ("WEBP", ("RGB", "RGBA"), ".webp"),
    "image/bmp": ("BMP", ("RGB", "L", "P", "1"), ".bmp"),
    "image/gif": ("GIF", ("P", "L"), ".gif"),
}
ORIENTATION = 0x0112


def _picture(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I;16B"):
        values = rng.integers(0, 65535, (height, width), dtype=np.uint16)
        dtype = ">u2" if mode == "I;16B" else "<u2"
        return Image.frombytes(mode, (width, height), values.astype(dtype).tobytes())
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32) * 255, "F")
    base = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        return base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return base.convert(mode)


@st.composite
def image_files(draw: st.DrawFn, media_type: str | None = None) -> bytes:
    """The bytes of a valid image file of ``media_type`` (drawn when None)."""
    kind = media_type or draw(st.sampled_from(sorted(FORMATS)))
    fmt, modes, _ = FORMATS[kind]
    mode = draw(st.sampled_from(modes))
    width = draw(st.integers(1, 32))
    height = draw(st.integers(1, 32))
    picture = _picture(mode, width, height, draw(st.integers(0, 2**32 - 1)))
    options: dict[str, object] = {}
    if fmt in ("JPEG", "TIFF", "WEBP", "PNG") and draw(st.booleans()):
        exif = Image.Exif()
        odd = [] if fmt == "TIFF" else [0, 9, 65535]  # libtiff will not write those
        exif[ORIENTATION] = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, *odd]))
        options["exif"] = exif.tobytes()
    if fmt == "JPEG":
        options["quality"] = draw(st.integers(5, 95))
        options["progressive"] = draw(st.booleans())
    if fmt == "TIFF":
        options["compression"] = draw(st.sampled_from([None, "tiff_deflate", "packbits"]))
    out = io.BytesIO()
    picture.save(out, format=fmt, **options)
    return out.getvalue()


_SPECIAL = [0, 1, 2, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def mutated_image_files(draw: st.DrawFn) -> bytes:
    """A valid image file (see image_files) with 1 to 4 mutations: an integer field of the
    header (the first 64 bytes: dimensions, bit depths, modes, offsets) overwritten with an
    extreme or random value, bytes flipped, the file cut short, or bytes inserted."""
    data = bytearray(draw(image_files()))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["field", "flip", "cut", "insert"]))
        if how == "field" and len(data) > 8:
            size = draw(st.sampled_from([1, 2, 4]))
            at = draw(st.integers(0, min(64, len(data) - size)))
            value = draw(st.sampled_from(_SPECIAL) | st.integers(0, 2 ** (8 * size) - 1))
            value %= 2 ** (8 * size)
            data[at : at + size] = value.to_bytes(size, draw(st.sampled_from(["big", "little"])))
        elif how == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif how == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)
