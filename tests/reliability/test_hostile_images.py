"""Hostile and odd image files: each is embedded correctly or skipped with a reason, never a crash."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.engine.images import MAX_PIXELS, load_rgb
from retrieval.errors import ImageError
from retrieval.nets.model import load_model


def photo(size=(96, 64), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 2] = (200, 40, 40)
    return Image.fromarray(arr)


def png_bomb(path: Path, side: int = 40000) -> Path:
    """A tiny PNG whose header claims side x side pixels (all zero rows, compressed to a few KB)."""
    raw = zlib.compress(b"\x00" * (side + 1) * 64, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_modes_decode_to_rgb(tmp_path: Path):
    base = photo()
    cases = {
        "cmyk.jpg": base.convert("CMYK"),
        "grey.png": base.convert("L"),
        "palette.png": base.convert("P"),
        "rgba.png": base.convert("RGBA"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = load_rgb(tmp_path / name)
        assert out.mode == "RGB" and out.size == base.size, name
    arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    deep = load_rgb(tmp_path / "deep.png")
    assert deep.mode == "RGB"
    np.testing.assert_allclose(np.asarray(deep)[..., 0], np.asarray(base.convert("L")), atol=1)


def test_palette_with_transparency_composited_on_white(tmp_path: Path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    img.save(tmp_path / "t.png", transparency=0)
    assert load_rgb(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_png_named_jpg_and_animated_gif(tmp_path: Path):
    photo().save(tmp_path / "actually_png.jpg", format="PNG")
    assert load_rgb(tmp_path / "actually_png.jpg").size == (96, 64)
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = load_rgb(tmp_path / "anim.gif")
    r, g, b = first.getpixel((8, 8))
    assert r > 200 and b < 50


def test_exif_rotation_is_respected(tmp_path: Path, tiny):
    upright = photo((64, 96))
    upright.save(tmp_path / "upright.jpg", quality=95)
    stored = upright.transpose(Image.Transpose.ROTATE_270)  # what a camera writes before tagging
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    stored.save(tmp_path / "tagged.jpg", quality=95, exif=exif)
    assert load_rgb(tmp_path / "tagged.jpg").size == (64, 96)
    emb = tiny.embedder(num_workers=0).embed_paths(
        [tmp_path / "upright.jpg", tmp_path / "tagged.jpg"]
    )
    assert float(emb.vectors[0] @ emb.vectors[1]) > 0.99


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("zero.jpg", b"", "not a readable image"),
        ("text.jpg", b"hello, I am not a picture\n", "not a readable image"),
    ],
)
def test_unreadable_files_raise_image_error(tmp_path: Path, name: str, content: bytes, reason: str):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=reason) as err:
        load_rgb(tmp_path / name)
    assert name in str(err.value)


def test_truncated_jpeg_is_refused(tmp_path: Path):
    buf = io.BytesIO()
    photo((256, 256)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_rgb(tmp_path / "cut.jpg")


def test_decompression_bomb_refused_before_decoding(tmp_path: Path):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageError, match="over the limit") as err:
        load_rgb(bomb)
    assert f"{MAX_PIXELS:,}" in str(err.value)


def test_large_photo_decoded_at_reduced_size(tmp_path: Path):
    big = Image.fromarray(np.full((6000, 8000, 3), 120, dtype=np.uint8))
    big.save(tmp_path / "50mp.jpg", quality=80)
    small = load_rgb(tmp_path / "50mp.jpg", min_side=224)
    assert min(small.size) >= 224 and small.size[0] <= 8000 // 8 * 2


def test_batch_survives_every_bad_file(tmp_path: Path, tiny):
    good = [tmp_path / f"g{i}.png" for i in range(3)]
    for i, p in enumerate(good):
        photo(seed=i).save(p)
    (tmp_path / "zero.jpg").write_bytes(b"")
    png_bomb(tmp_path / "bomb.png")
    paths = [good[0], tmp_path / "zero.jpg", good[1], tmp_path / "bomb.png", good[2]]
    res = tiny.embedder(batch_size=2, num_workers=0).embed_paths(paths)
    assert res.ok == [0, 2, 4]
    assert {Path(p).name for p, _ in res.failures} == {"zero.jpg", "bomb.png"}
