"""Big images in bounded memory (issue 15, defect 2): a PNG of few bytes claiming 120
megapixels is refused before it is decoded; one under the limit for full-size decoding costs
little more than its own pixels and gives them back; big decodes run two at a time."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from retrieval.engine import images
from retrieval.engine.images import MAX_FULL_PIXELS, decode_input, load_rgb
from retrieval.errors import ImageError

from ..helpers import REPO, flat_png, peak_growth

MB = 1 << 20


def test_a_small_png_claiming_120_megapixels_is_refused_before_decoding():
    data = flat_png(10_950, 10_950)  # the file: 120 MP of RGBA
    assert len(data) < 3 * MB

    def decode() -> None:
        with pytest.raises(ImageError, match=f"over the limit of {MAX_FULL_PIXELS:,} pixels"):
            decode_input(data, "big.png", min_side=224)

    peak, _ = peak_growth(decode)
    assert peak < 20 * MB, f"peak RSS rose by {peak / MB:.0f} MB"


def test_a_big_png_under_the_limit_costs_its_pixels_once_and_gives_them_back():
    side = 7000  # 49 MP of RGBA: 196 MB decoded
    data = flat_png(side, side)
    out: list[Image.Image] = []
    peak, kept = peak_growth(lambda: out.append(load_rgb("big.png", min_side=224, data=data)))
    assert out[0].mode == "RGB" and 224 <= min(out[0].size) < 2 * 224
    assert out[0].getpixel((5, 5)) == (90, 160, 40)
    assert peak < 1.25 * side * side * 4, f"peak RSS rose by {peak / MB:.0f} MB"
    assert kept < 30 * MB, f"{kept / MB:.0f} MB still held after the decode"


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L", "P"])
def test_the_reduction_in_strips_gives_the_pixels_of_one_reduce(mode: str):
    rng = np.random.default_rng(0)
    bands = {"RGBA": 4, "RGB": 3, "L": 1, "P": 1}[mode]
    pixels = rng.integers(0, 255, (1003, 2011, bands), dtype=np.uint8).squeeze()
    img = Image.fromarray(pixels, "L" if mode == "P" else mode)
    if mode == "P":
        img = img.convert("P")
    for factor in (2, 3, 7):
        reduced, scale = images._reduce(img, 1003 // factor, None)
        expected = (img.convert("RGB") if mode == "P" else img).reduce(factor)
        assert scale == factor and reduced.size == expected.size
        assert np.array_equal(np.asarray(reduced), np.asarray(expected)), (mode, factor)


def test_big_decodes_run_two_at_a_time():
    data = flat_png(4200, 4200, (10, 200, 30))  # 17.6 MP each: over BIG_DECODE_PIXELS
    assert images.BIG_DECODE_PIXELS < 4200 * 4200
    images.BIG_DECODES.most_held = 0
    sizes: list[tuple[int, int]] = []
    threads = [
        threading.Thread(target=lambda: sizes.append(load_rgb("b.png", 100, data=data).size))
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sizes == [(100, 100)] * 5
    assert images.BIG_DECODES.most_held == 2


def test_a_tall_thin_image_counts_its_rows():
    """Found by the image fuzzing: a BMP of 1 x 33,554,433 pixels (33.5 MP, under the limit)
    made Pillow hold 256 MiB of row pointers before it found the file truncated."""
    header = struct.pack("<2sIHHI", b"BM", 58, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, 1, 33_554_433, 1, 24, 0, 4, 3780, 3780, 0, 0
    )
    data = header + b"\xc1\x81^\x00"

    def decode() -> None:
        with pytest.raises(ImageError, match="each row counting 2 more"):
            decode_input(data, "tall.bmp", min_side=224)

    peak, _ = peak_growth(decode)
    assert peak < 20 * MB, f"peak RSS rose by {peak / MB:.0f} MB"


RECURRING = """
import sys, threading
from tests.helpers import flat_png
from retrieval.engine import images
if sys.argv[1] == "give back":
    assert images.give_back_big_blocks()
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) << 10
pngs = [flat_png(5000, 5000, (i, 100, 50, 255)) for i in range(4)]
small = flat_png(3000, 1000, (1, 2, 3, 255))
images.load_rgb("warm-up", 224, data=small)
base = rss()
for _ in range(4):  # rounds of 4 concurrent big decodes, with smaller ones between
    threads = [
        threading.Thread(target=lambda d=d: [images.load_rgb("a", 224, data=d), images.load_rgb("b", 224, data=small)])
        for d in pngs
    ]
    [t.start() for t in threads]
    [t.join() for t in threads]
print(rss() - base)
"""


def test_a_server_gives_back_what_rounds_of_big_decodes_took():
    """After rounds of concurrent 25 MP decodes a process held 28 MB more each time it was
    measured (glibc's heap keeps freed blocks once its mmap threshold has risen); `retrieve
    serve` asks for big blocks of their own, returned when freed."""
    done = subprocess.run(
        [sys.executable, "-c", RECURRING, "give back"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 8 * MB, f"{int(done.stdout) / MB:.0f} MB more held"
