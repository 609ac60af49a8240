"""Odd inputs found by the attack of issue 15: each is read correctly, or skipped or refused with
one line naming it."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index import sha256_file
from retrieval.api import Retriever
from retrieval.engine.images import decode_input, image_size, load_rgb
from retrieval.errors import ImageError, InputError

from ..helpers import COLORS, COMMAND_ENV, retrieve_exe, write_image


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I;16"])
def test_16_bit_images_of_either_byte_order_decode_alike(tmp_path: Path, mode: str):
    values = (np.arange(48 * 32, dtype=np.uint32).reshape(32, 48) * 40).astype(np.uint16)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    Image.frombytes(mode, (48, 32), values.astype(dtype).tobytes()).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == ("I;16" if mode == "I;16L" else mode)
    rgb = np.asarray(load_rgb(tmp_path / "deep.tif"))
    assert rgb.shape == (32, 48, 3)
    np.testing.assert_array_equal(rgb[..., 0], values >> 8)


def retrieve(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command, given 60 s (an input that blocks it fails the test instead of
    hanging it)."""
    return subprocess.run(
        [retrieve_exe(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=COMMAND_ENV,
        cwd=cwd,
    )


def returns_within(seconds: float, call: Callable[[], object]) -> object:
    """What ``call`` returns or raises, or a failed test if it is still blocked after
    ``seconds`` (it is left blocked in a daemon thread)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still blocked after {seconds} s"
    return outcome[0]


@pytest.fixture
def specials(tmp_path: Path) -> Path:
    """A folder holding a good image, a FIFO named like a photo, a dangling symbolic link named
    like a photo, and a symbolic link to a folder."""
    folder = tmp_path / "in"
    write_image(folder / "good.png", COLORS["blue"], seed=41)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "elsewhere").mkdir()
    (folder / "linked").symlink_to(tmp_path / "elsewhere")
    return folder


def test_reading_a_fifo_or_a_device_fails_at_once(specials: Path):
    for path in (specials / "fifo.jpg", Path("/dev/zero")):
        for read in (load_rgb, image_size, sha256_file):
            outcome = returns_within(10, lambda read=read, path=path: read(path))
            assert isinstance(outcome, (ImageError, OSError)), (read, outcome)
            assert "not a regular file" in str(outcome), outcome
    with pytest.raises(InputError, match="not a regular file"):
        decode_input(str(specials / "fifo.jpg"), "fifo.jpg")


def test_enroll_skips_what_is_not_a_regular_file(index: Path, specials: Path):
    done = retrieve("enroll", "X", "/dev/zero", specials / "fifo.jpg", specials, "--index", index)
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.strip().splitlines()
    assert warnings == [
        "warning: skipped /dev/zero: not a regular file (a character device)",
        f"warning: skipped {specials / 'fifo.jpg'}: not a regular file (a FIFO)",
        f"warning: skipped {specials / 'fifo.jpg'}: not a regular file (a FIFO)",
        f"warning: skipped {specials / 'gone.png'}: a broken symbolic link",
        f"warning: skipped {specials / 'linked'}: a symbolic link to a folder (not followed)",
        "warning: 5 unreadable or non-image files skipped",
    ], done.stderr
    assert "enrolled 1 images as 'X'" in done.stdout
    nothing = retrieve("enroll", "Y", "/dev/zero", "--index", index)
    assert nothing.returncode == 1
    assert nothing.stderr.strip().splitlines()[-1] == (
        "retrieve: error: none of the images for 'Y' could be read; nothing enrolled"
    )


def test_build_index_counts_what_it_skips(specials: Path, tmp_path: Path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    specials.rename(gallery / "x")
    write_image(gallery / "red" / "0.png", COLORS["red"], seed=1)
    os.mkfifo(gallery / "top.fifo")
    done = retrieve("build-index", gallery, "--index", tmp_path / "idx", "--model", "tiny")
    assert done.returncode == 0, done.stderr
    assert f"skipped {gallery / 'x' / 'fifo.jpg'}: not a regular file (a FIFO)" in done.stderr
    assert f"skipped {gallery / 'x' / 'gone.png'}: a broken symbolic link" in done.stderr
    assert f"skipped {gallery / 'top.fifo'}: not a regular file (a FIFO)" in done.stderr
    assert "warning: 4 unreadable or non-image files skipped" in done.stderr
    assert "indexed 2 images of 2 labels" in done.stdout


def test_a_name_with_a_newline_stays_on_one_line(index: Path, tmp_path: Path):
    folder = tmp_path / "in"
    write_image(folder / "good\nphoto.png", COLORS["blue"], seed=42)
    (folder / "notes\nmore.txt").write_text("not a photo")
    (folder / "broken\rphoto.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    done = retrieve("enroll", "X", folder, "--index", index)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: skipped {folder}/notes\\nmore.txt: not an image file type",
        f"warning: skipped {folder}/broken\\rphoto.jpg: not a readable image (unknown format)",
        "warning: 2 unreadable or non-image files skipped",
    ], done.stderr
    failed = retrieve("query", folder / "broken\rphoto.jpg", "--index", index)
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [
        f"retrieve: error: {folder}/broken\\rphoto.jpg: not a readable image (unknown format)"
    ]
    answered = retrieve("query", folder / "good\nphoto.png", "--index", index)
    assert answered.stdout.splitlines()[0].startswith(f"{folder}/good\\nphoto.png: ")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_min_score_must_be_a_finite_number(index: Path, tmp_path: Path, bad: str):
    photo = write_image(tmp_path / "q.png", COLORS["red"], seed=7)
    done = retrieve("query", photo, "--index", index, "--min-score", bad)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        f"retrieve: error: --min-score must be a finite number, not {float(bad)}"
    )
    with Retriever(index) as r, pytest.raises(InputError, match="finite"):
        r.query(photo, min_score=float(bad))


@pytest.mark.parametrize("label", [" lead", "lead ", "\u3000lead", "lead\u00a0"])
def test_a_label_does_not_begin_or_end_with_white_space(index: Path, tmp_path: Path, label: str):
    photo = write_image(tmp_path / "p.png", COLORS["blue"], seed=8)
    done = retrieve("enroll", label, photo, "--index", index)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"retrieve: error: label {label!r} begins or ends with white space"
    )
    with Retriever(index) as r, pytest.raises(InputError, match="white space"):
        r.enroll(label, [photo])
    gallery = tmp_path / "gallery"
    write_image(gallery / label / "0.png", COLORS["blue"], seed=9)
    built = retrieve("build-index", gallery, "--index", tmp_path / "new", "--model", "tiny")
    assert built.returncode == 1 and "white space" in built.stderr


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG", "PNG", "WEBP"])
def test_an_exif_orientation_turns_the_image_and_its_box_alike(tmp_path: Path, fmt: str):
    """Found by the image fuzzing: Pillow drops a TIFF's orientation when it loads one, so a
    TIFF tagged to be turned was not turned, and a box in upright coordinates cut nothing."""
    stored = Image.new("RGB", (40, 20), (250, 250, 250))
    stored.paste((200, 0, 0), (0, 0, 10, 20))  # a red band on the left of what is stored
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to display: the band goes to the top
    stored.save(tmp_path / "turned.img", format=fmt, exif=exif.tobytes(), quality=95)
    upright = load_rgb(tmp_path / "turned.img")
    assert upright.size == (20, 40)
    red, _, blue = upright.getpixel((10, 5))
    assert red > 150 and blue < 100, upright.getpixel((10, 5))
    top = load_rgb(tmp_path / "turned.img", box=(0, 0, 20, 10))
    assert top.size == (20, 10) and top.getpixel((10, 5))[2] < 100
    bottom = load_rgb(tmp_path / "turned.img", box=(0, 39, 20, 40))
    assert bottom.size == (20, 1) and bottom.getpixel((10, 0))[2] > 200


def test_pillows_warnings_on_a_damaged_file_are_not_printed(index: Path, tmp_path: Path):
    """Found by the image fuzzing: a photo with corrupt EXIF (or a TIFF tag larger than the
    file) still decodes, but Pillow's warning reached stderr as two lines of Python."""
    photo = tmp_path / "damaged exif.jpg"
    Image.new("RGB", (20, 10), (30, 40, 220)).save(
        photo,
        exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00",  # 5 entries, none there
    )
    done = retrieve("query", photo, "--index", index)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(f"{photo}: blue")


def test_libtiffs_own_messages_are_not_printed(index: Path, tmp_path: Path):
    """Found by the image fuzzing: libtiff writes its errors on stderr itself ("ZIPDecode:
    Decoding error at scanline 0, ..."), a line before ours."""
    pixels = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "z.tif", compression="tiff_deflate")
    data = bytearray((tmp_path / "z.tif").read_bytes())
    for i in range(20, 60):  # the compressed pixels
        data[i] ^= 0x55
    (tmp_path / "damaged.tif").write_bytes(bytes(data))
    done = retrieve("query", tmp_path / "damaged.tif", "--index", index)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"retrieve: error: {tmp_path / 'damaged.tif'}: not a readable image (decoder error -2)"
    ], done.stderr
