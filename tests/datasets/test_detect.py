"""Format detection and the options every format accepts or refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.datasets import FORMATS, detect_format, load_dataset
from retrieval.datasets.folders import validate_label
from retrieval.errors import GalleryError, InputError

from ..helpers import need_shared
from .conftest import lines

FIXTURES = {
    "cub": "cub_root",
    "flowers102": "flowers_root",
    "cars": "cars_root",
    "aircraft": "aircraft_root",
    "folder": "gallery",
}


@pytest.mark.parametrize("format", FORMATS)
def test_each_layout_is_detected_and_loads(format: str, request: pytest.FixtureRequest):
    root = request.getfixturevalue(FIXTURES[format])
    assert detect_format(root) == format
    records = load_dataset(root)
    assert records == load_dataset(root, format=format)
    assert len(records) >= 8 and all(validate_label(r.label) for r in records)


def test_folder_gallery_has_only_all_no_boxes_no_levels(gallery: Path):
    assert len(load_dataset(gallery, format="folder")) == 12
    with pytest.raises(InputError, match="split 'train' needs a dataset with official splits"):
        load_dataset(gallery, split="train")
    with pytest.raises(InputError, match="split 'retrieval-test' needs"):
        load_dataset(gallery, split="retrieval-test")
    with pytest.raises(InputError, match="crop 'bbox' needs bounding boxes, and a folder gallery"):
        load_dataset(gallery, crop="bbox")
    with pytest.raises(InputError, match="level 'family' exists only for aircraft"):
        load_dataset(gallery, level="family")


def test_two_layouts_at_once_are_ambiguous(cub_root: Path):
    (cub_root / "setid.mat").write_bytes(b"")
    with pytest.raises(GalleryError, match=r"looks like more than one dataset \(cub, flowers102\)"):
        detect_format(cub_root)
    assert len(load_dataset(cub_root, format="cub")) == 8


def test_unknown_layout_says_what_was_looked_for(tmp_path: Path):
    lines(tmp_path / "readme.txt", ["hello"])
    with pytest.raises(GalleryError) as err:
        load_dataset(tmp_path)
    message = str(err.value)
    assert message.startswith(f"cannot tell the format of {tmp_path}: it has no label sub-folders")
    for marker in ("images.txt", "imagelabels.mat", "devkit/cars_meta.mat", "images_box.txt"):
        assert marker in message
    assert f"{tmp_path / 'CUB_200_2011'}" in message and f"{tmp_path / 'data'}" in message


def test_named_format_that_does_not_match(flowers_root: Path):
    with pytest.raises(GalleryError) as err:
        load_dataset(flowers_root, format="aircraft")
    assert str(err.value) == (
        f"{flowers_root} is not a FGVC-Aircraft folder: none of images_box.txt, "
        "images_variant_trainval.txt, images_variant_test.txt in "
        f"{flowers_root / 'data'} or {flowers_root}"
    )


@pytest.mark.parametrize(
    "options,message",
    [
        ({"format": "inat"}, "unknown format 'inat'; choose auto or one of folder, cub"),
        ({"split": "val"}, "unknown split 'val'; choose one of all, train, test, retrieval-train"),
        ({"crop": "box"}, "unknown crop 'box'; choose one of none, bbox"),
    ],
)
def test_unknown_option_values(cub_root: Path, options: dict, message: str):
    with pytest.raises(InputError, match=message):
        load_dataset(cub_root, **options)


def test_missing_root_or_a_file(tmp_path: Path):
    with pytest.raises(GalleryError, match="dataset folder .*nope does not exist"):
        detect_format(tmp_path / "nope")
    lines(tmp_path / "f.txt", ["x"])
    with pytest.raises(GalleryError, match="dataset .*f.txt is not a folder"):
        load_dataset(tmp_path / "f.txt")


@pytest.mark.data
def test_real_folder_gallery_is_detected_as_folder():
    root = need_shared("cub50-dev")
    assert detect_format(root) == "folder"
    records = load_dataset(root)
    assert len({r.label for r in records}) == 50 and len(records) > 2000
