"""Safe image decoding: size limits, JPEG draft decoding, EXIF orientation, any mode to RGB."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from retrieval.errors import ImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# A 50-megapixel photo is legitimate; a "decompression bomb" claims far more.
MAX_PIXELS = 120_000_000


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode ``path`` to an upright RGB image.

    With ``min_side``, JPEGs are decoded at the smallest DCT scale whose shorter side is still at
    least ``min_side`` (far faster for big photos). Raises ImageError naming the file.
    """
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{p}: {img.width}x{img.height} image is over the limit of {MAX_PIXELS:,} pixels"
                )
            if min_side is not None and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{p}: image is over the limit of {MAX_PIXELS:,} pixels ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{p}: no such file") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"{p}: not a readable image ({reason})") from exc


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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
