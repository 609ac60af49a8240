"""CUB-200-2011: labels, splits, boxes and every metadata error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from retrieval.datasets import load_dataset
from retrieval.engine.images import load_rgb
from retrieval.errors import GalleryError

from .conftest import RED, edit_line, lines, mean_color

LABELS = ["Black_footed_Albatross", "Laysan_Albatross", "White_Pelican", "Western_Wood_Pewee"]


def labels_of(records) -> list[str]:
    return [r.label for r in records]


def test_all_records_in_file_order_with_labels_without_number(cub_root: Path):
    records = load_dataset(cub_root, format="cub")
    assert labels_of(records) == [label for label in LABELS for _ in range(2)]
    assert records[0].path == cub_root / "images" / "001.Black_footed_Albatross" / (
        "Black_footed_Albatross_0000_1.jpg"
    )
    assert all(r.path.is_file() and r.box is None for r in records)


def test_official_split(cub_root: Path):
    train = load_dataset(cub_root, format="cub", split="train")
    test = load_dataset(cub_root, format="cub", split="test")
    assert labels_of(train) == LABELS and labels_of(test) == LABELS
    assert all("_0000_" in r.path.name for r in train)
    assert all("_0001_" in r.path.name for r in test)


def test_retrieval_split_is_classes_1_to_100_and_101_to_200(cub_root: Path):
    train = load_dataset(cub_root, format="cub", split="retrieval-train")
    test = load_dataset(cub_root, format="cub", split="retrieval-test")
    assert sorted(set(labels_of(train))) == ["Black_footed_Albatross", "Laysan_Albatross"]
    assert sorted(set(labels_of(test))) == ["Western_Wood_Pewee", "White_Pelican"]
    assert len(train) == len(test) == 4


def test_bbox_crop(cub_root: Path):
    records = load_dataset(cub_root, format="cub", crop="bbox")
    # image 1: x 5.0, y 6.0, w 20.5, h 16.0 -> floor/ceil outwards
    assert records[0].box == (5, 6, 26, 22)
    assert records[7].box == (12, 6, 33, 22)
    crop = load_rgb(records[0].path, box=records[0].box)
    whole = load_rgb(records[0].path)
    assert crop.size == (21, 16)
    np.testing.assert_allclose(mean_color(crop), RED, atol=8)
    assert np.abs(mean_color(whole) - mean_color(crop)).max() > 30


def test_parent_folder_is_accepted(cub_root: Path):
    assert len(load_dataset(cub_root.parent, format="cub")) == 8
    assert len(load_dataset(cub_root.parent)) == 8


def test_split_and_box_files_only_needed_when_used(cub_root: Path):
    (cub_root / "train_test_split.txt").unlink()
    (cub_root / "bounding_boxes.txt").unlink()
    assert len(load_dataset(cub_root, format="cub", split="retrieval-test")) == 4


@pytest.mark.parametrize(
    "name,options",
    [
        ("images.txt", {}),
        ("classes.txt", {}),
        ("image_class_labels.txt", {}),
        ("train_test_split.txt", {"split": "train"}),
        ("bounding_boxes.txt", {"crop": "bbox"}),
    ],
)
def test_missing_metadata_file_is_named(cub_root: Path, name: str, options: dict):
    (cub_root / name).unlink()
    with pytest.raises(GalleryError, match=rf"CUB-200-2011 folder .* lacks {name}$"):
        load_dataset(cub_root, format="cub", **options)


@pytest.mark.parametrize(
    "name,number,text,options,problem",
    [
        ("image_class_labels.txt", 3, "99 2", {}, "image id 99 is not in images.txt"),
        ("train_test_split.txt", 2, "42 1", {"split": "test"}, "image id 42 is not in images.txt"),
        (
            "bounding_boxes.txt",
            8,
            "77 1 2 3 4",
            {"crop": "bbox"},
            "image id 77 is not in images.txt",
        ),
        ("image_class_labels.txt", 4, "4 3", {}, "class id 3 is not in classes.txt"),
        ("image_class_labels.txt", 4, "4 two", {}, "class id 'two' is not a number"),
        ("images.txt", 5, "5", {}, "expected 2 fields, found 1"),
        ("images.txt", 6, "5 x/y.jpg", {}, "image id 5 was already given on line 5"),
        ("images.txt", 6, "6 ../../secret.jpg", {}, "leads out of the dataset folder"),
        ("classes.txt", 2, "1 002.Laysan_Albatross", {}, "class id 1 is given twice"),
        ("classes.txt", 2, "2 003.Black_footed_Albatross", {}, "becomes label .* did already"),
        ("classes.txt", 3, "101 101." + "x" * 201, {}, "cannot be a label .* 201 characters"),
        ("train_test_split.txt", 3, "3 2", {"split": "train"}, "'2' is neither 1 nor 0"),
        (
            "bounding_boxes.txt",
            2,
            "2 5 6 0 16",
            {"crop": "bbox"},
            r"box \(5, 6, 5, 22\) .* is empty",
        ),
        ("bounding_boxes.txt", 2, "2 5 6 nan 16", {"crop": "bbox"}, "'nan' is not a finite number"),
    ],
)
def test_bad_line_is_quoted_with_its_number(
    cub_root: Path, name: str, number: int, text: str, options: dict, problem: str
):
    edit_line(cub_root / name, number, text)
    with pytest.raises(GalleryError) as err:
        load_dataset(cub_root, format="cub", **options)
    message = str(err.value)
    assert message.startswith(f"{cub_root / name} line {number}: ")
    assert message.endswith(f": {text!r}")
    assert re.search(problem, message), message


@pytest.mark.parametrize(
    "name,options",
    [
        ("image_class_labels.txt", {}),
        ("train_test_split.txt", {"split": "train"}),
        ("bounding_boxes.txt", {"crop": "bbox"}),
    ],
)
def test_fewer_lines_than_images_quotes_the_image_left_without(
    cub_root: Path, name: str, options: dict
):
    edit_line(cub_root / name, 6, None)
    with pytest.raises(GalleryError) as err:
        load_dataset(cub_root, format="cub", **options)
    assert str(err.value) == (
        f"{cub_root / 'images.txt'} line 6: image id 6 has no line in {name}: "
        f"'6 {(cub_root / 'images.txt').read_text().splitlines()[5].split()[1]}'"
    )


def test_image_missing_on_disk_quotes_images_txt(cub_root: Path):
    rel = (cub_root / "images.txt").read_text().splitlines()[2].split()[1]
    (cub_root / "images" / rel).unlink()
    with pytest.raises(GalleryError) as err:
        load_dataset(cub_root, format="cub")
    assert str(err.value) == (
        f"{cub_root / 'images.txt'} line 3: image {cub_root / 'images' / rel} is missing on disk: "
        f"'3 {rel}'"
    )
    # a split without that image is still usable
    assert len(load_dataset(cub_root, format="cub", split="retrieval-test")) == 4


def test_empty_split_is_refused(cub_root: Path):
    lines(cub_root / "classes.txt", ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross"])
    lines(cub_root / "images.txt", (cub_root / "images.txt").read_text().splitlines()[:4])
    lines(cub_root / "image_class_labels.txt", ["1 1", "2 1", "3 2", "4 2"])
    with pytest.raises(GalleryError, match="has no image in split 'retrieval-test'"):
        load_dataset(cub_root, format="cub", split="retrieval-test")


def test_not_utf8_names_the_file(cub_root: Path):
    (cub_root / "classes.txt").write_bytes(b"1 001.Caf\xe9\n")
    with pytest.raises(GalleryError, match=r"classes.txt is not UTF-8 text"):
        load_dataset(cub_root, format="cub")
