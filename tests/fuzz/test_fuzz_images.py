"""The image loader fuzzed (issue 15): real JPEG, PNG, TIFF, WebP, BMP and GIF files, valid and
mutated (header fields such as dimensions and modes overwritten, EXIF orientations of any value,
bytes flipped, cut or inserted), each decoded as a query or an enrolled photo is: it gives an
upright RGB picture, or our one-line ImageError naming the file; never another exception, never
a hang (the profile's deadline), and never more memory than the pixel limits allow."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrieval.datasets.folders import MAX_LABEL_LENGTH, label_pattern, validate_label
from retrieval.engine.images import MAX_FULL_PIXELS, decode_input, load_rgb
from retrieval.errors import ImageError, InputError

from ..helpers import peak_growth
from .images import image_files, mutated_image_files

# A warning a decode lets out is printed by the CLI as lines of Python: none may escape.
pytestmark = pytest.mark.filterwarnings("error")

NAME = "fuzzed.img"
MIN_SIDE = 224
# The most one decode may hold: the biggest image decoded at full size (4 bytes a pixel), its
# reduction in strips, and the interpreter's own noise.
PEAK_BYTES = MAX_FULL_PIXELS * 4 * 1.25
# Examples run, per property, and how the mutated files ended (scripts/fuzz.py reports them).
EXAMPLES: Counter[str] = Counter()


def decode(data: bytes) -> None:
    """decode_input as the service calls it: an RGB picture, or ImageError in one line."""
    try:
        picture, sha = decode_input(data, NAME, min_side=MIN_SIDE)
    except ImageError as exc:
        message = str(exc)
        assert message.startswith(f"{NAME}: ") and "\n" not in message, message
        EXAMPLES["mutated: refused"] += 1
        return
    assert picture.mode == "RGB" and picture.width >= 1 and picture.height >= 1
    assert len(sha) == 64
    EXAMPLES["mutated: decoded"] += 1


@given(image_files())
def test_every_valid_image_decodes(data: bytes):
    EXAMPLES["valid"] += 1
    picture, _ = decode_input(data, NAME, min_side=MIN_SIDE)
    assert picture.mode == "RGB" and picture.width >= 1 and picture.height >= 1


@given(mutated_image_files())
def test_a_mutated_image_decodes_or_is_refused_in_one_line_in_bounded_memory(data: bytes):
    EXAMPLES["mutated"] += 1
    peak, kept = peak_growth(lambda: decode(data))
    assert peak < PEAK_BYTES, f"a decode rose the peak RSS by {peak >> 20} MB"


@given(
    image_files(),
    st.tuples(*[st.integers(-(2**31), 2**31)] * 4),
)
def test_any_box_crops_or_is_refused_in_one_line(data: bytes, box: tuple[int, int, int, int]):
    EXAMPLES["box"] += 1
    try:
        picture = load_rgb(NAME, MIN_SIDE, box, data=data)
    except ImageError as exc:
        assert str(exc).startswith(f"{NAME}: ") and "\n" not in str(exc)
        return
    assert picture.mode == "RGB" and picture.width >= 1 and picture.height >= 1


@given(st.text(max_size=MAX_LABEL_LENGTH + 5) | st.from_regex(label_pattern(), fullmatch=True))
def test_the_label_rule_is_the_schema_pattern(label: str):
    """The regular expression `retrieve serve`'s schema states for labels accepts exactly what
    validate_label does (up to the length, which the schema states apart)."""
    EXAMPLES["label"] += 1
    try:
        validate_label(label)
        accepted = True
    except InputError:
        accepted = False
    matches = re.fullmatch(label_pattern(), label) is not None
    assert accepted == (matches and len(label) <= MAX_LABEL_LENGTH), repr(label)
