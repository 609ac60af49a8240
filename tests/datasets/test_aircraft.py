"""FGVC-Aircraft: levels, splits, the banner removed from every image, boxes and list errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.datasets import load_dataset
from retrieval.engine.images import load_rgb
from retrieval.errors import GalleryError, InputError

from .conftest import AIRCRAFT_SIZE, BANNER, BLUE, RED, aircraft_box, edit_line, mean_color

VARIANTS = ["707-320", "A340-300", "F-A-18", "Cessna 172"]
WIDTH, HEIGHT = AIRCRAFT_SIZE


def test_variants_with_slash_made_dash_train_then_test(aircraft_root: Path):
    records = load_dataset(aircraft_root, format="aircraft")
    assert [r.label for r in records] == VARIANTS * 2
    data = aircraft_root / "data"
    assert records[0].path == data / "images" / "1025791.jpg"
    train = load_dataset(aircraft_root, format="aircraft", split="train")
    test = load_dataset(aircraft_root, format="aircraft", split="test")
    assert train == records[:4] and test == records[4:]


@pytest.mark.parametrize(
    "level,labels",
    [
        ("family", ["Boeing 707", "A340", "F-A-18", "Cessna 172"]),
        ("manufacturer", ["Boeing", "Airbus", "McDonnell Douglas", "Cessna"]),
    ],
)
def test_levels(aircraft_root: Path, level: str, labels: list[str]):
    records = load_dataset(aircraft_root, format="aircraft", level=level)
    assert [r.label for r in records] == labels * 2


@pytest.mark.parametrize(
    "level,first,second",
    [
        ("variant", {"707-320", "A340-300"}, {"Cessna 172", "F-A-18"}),
        ("family", {"A340", "Boeing 707"}, {"Cessna 172", "F-A-18"}),
        ("manufacturer", {"Airbus", "Boeing"}, {"Cessna", "McDonnell Douglas"}),
    ],
)
def test_retrieval_split_is_halves_of_sorted_names(
    aircraft_root: Path, level: str, first: set, second: set
):
    train = load_dataset(aircraft_root, split="retrieval-train", level=level)
    test = load_dataset(aircraft_root, split="retrieval-test", level=level)
    assert {r.label for r in train} == first and len(train) == 4
    assert {r.label for r in test} == second and len(test) == 4


def test_odd_number_of_classes_gives_the_first_half_the_extra_one(aircraft_root: Path):
    data = aircraft_root / "data"
    edit_line(data / "images_variant_test.txt", 4, "1025798 Tu-154")
    train = load_dataset(aircraft_root, split="retrieval-train")
    assert {r.label for r in train} == {"707-320", "A340-300", "Cessna 172"}


def test_banner_removed_from_every_image(aircraft_root: Path):
    for record in load_dataset(aircraft_root):
        assert record.box == (0, 0, WIDTH, HEIGHT - BANNER)
    record = load_dataset(aircraft_root)[0]
    whole = np.asarray(load_rgb(record.path), dtype=np.float32)
    kept = np.asarray(load_rgb(record.path, box=record.box), dtype=np.float32)
    assert np.abs(whole[-BANNER:].reshape(-1, 3).mean(0) - BLUE).max() < 8
    assert kept.shape == (HEIGHT - BANNER, WIDTH, 3)
    assert (np.abs(kept - BLUE).max(axis=2) > 60).all()  # no banner pixel left


def test_bbox_crop_also_loses_the_banner(aircraft_root: Path):
    records = load_dataset(aircraft_root, crop="bbox")
    xmin, ymin, xmax, ymax = aircraft_box(1)
    assert ymax > HEIGHT - BANNER
    assert records[0].box == (xmin - 1, ymin - 1, xmax, HEIGHT - BANNER)
    crop = load_rgb(records[0].path, box=records[0].box)
    np.testing.assert_allclose(mean_color(crop), RED, atol=8)
    assert np.abs(mean_color(load_rgb(records[0].path)) - mean_color(crop)).max() > 30


def test_box_above_the_banner_is_kept_whole(aircraft_root: Path):
    edit_line(aircraft_root / "data" / "images_box.txt", 2, "1025792 3 4 30 20")
    assert load_dataset(aircraft_root, crop="bbox")[1].box == (2, 3, 30, 20)


def test_box_inside_the_banner_is_quoted(aircraft_root: Path):
    box_file = aircraft_root / "data" / "images_box.txt"
    edit_line(box_file, 3, "1025793 3 35 30 48")
    with pytest.raises(GalleryError) as err:
        load_dataset(aircraft_root, crop="bbox")
    assert str(err.value) == (
        f"{box_file} line 3: bounding box lies in the bottom 20-pixel banner: '1025793 3 35 30 48'"
    )


def test_data_folder_itself_is_accepted(aircraft_root: Path):
    assert len(load_dataset(aircraft_root / "data", format="aircraft")) == 8


def test_level_values(aircraft_root: Path):
    with pytest.raises(InputError, match="unknown level 'model'; choose one of variant"):
        load_dataset(aircraft_root, level="model")


@pytest.mark.parametrize(
    "name,options",
    [
        ("images_variant_trainval.txt", {}),
        ("images_variant_test.txt", {"split": "test"}),
        ("images_family_test.txt", {"level": "family"}),
        ("images_box.txt", {"crop": "bbox"}),
    ],
)
def test_missing_list_is_named(aircraft_root: Path, name: str, options: dict):
    (aircraft_root / "data" / name).unlink()
    with pytest.raises(GalleryError, match=rf"FGVC-Aircraft folder .*data lacks {name}$"):
        load_dataset(aircraft_root, format="aircraft", **options)


def test_only_the_lists_of_the_split_are_needed(aircraft_root: Path):
    (aircraft_root / "data" / "images_variant_test.txt").unlink()
    (aircraft_root / "data" / "images_box.txt").unlink()
    assert len(load_dataset(aircraft_root, split="train")) == 4


@pytest.mark.parametrize(
    "name,number,text,options,problem",
    [
        (
            "images_variant_test.txt",
            2,
            "1025791 707-320",
            {},
            "image id 1025791 was already given in images_variant_trainval.txt line 1",
        ),
        ("images_variant_trainval.txt", 3, "1025793", {}, "expected 2 fields, found 1"),
        (
            "images_variant_trainval.txt",
            1,
            "1025799 707-320",
            {"crop": "bbox"},
            "image id 1025799 has no line in images_box.txt",
        ),
        ("images_variant_trainval.txt", 2, "../x A340-300", {}, "leads out of the dataset folder"),
        (
            "images_variant_trainval.txt",
            2,
            "sub/x A340-300",
            {},
            "image id 'sub/x' is not a file name",
        ),
        (
            "images_variant_test.txt",
            3,
            "1025797 F-A-18",
            {},
            "'F-A-18' becomes label 'F-A-18', as 'F/A-18' did already",
        ),
        ("images_box.txt", 4, "1025794 3 5 x 45", {"crop": "bbox"}, "xmax 'x' is not a number"),
        (
            "images_box.txt",
            4,
            "1025794 3 5 2 45",
            {"crop": "bbox"},
            "bounding box (2, 4, 2, 45) (left, top, right, bottom) is empty",
        ),
        (
            "images_box.txt",
            5,
            "1025794 3 5 20 45",
            {"crop": "bbox"},
            "image id 1025794 was already given on line 4",
        ),
    ],
)
def test_bad_line_is_quoted_with_its_number(
    aircraft_root: Path, name: str, number: int, text: str, options: dict, problem: str
):
    edit_line(aircraft_root / "data" / name, number, text)
    with pytest.raises(GalleryError) as err:
        load_dataset(aircraft_root, **options)
    message = str(err.value)
    assert message.startswith(f"{aircraft_root / 'data' / name} line {number}: ")
    assert message.endswith(f": {text!r}")
    assert problem in message, message


def test_image_missing_or_unreadable(aircraft_root: Path):
    images = aircraft_root / "data" / "images"
    (images / "1025796.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(GalleryError) as err:
        load_dataset(aircraft_root)
    assert str(err.value).startswith(
        f"{aircraft_root / 'data' / 'images_variant_test.txt'} line 2: image cannot be read "
        f"({images / '1025796.jpg'}: not a readable image"
    )
    (images / "1025796.jpg").unlink()
    with pytest.raises(
        GalleryError,
        match=r"test.txt line 2: image .*1025796.jpg is missing on disk: '1025796 A340-300'$",
    ):
        load_dataset(aircraft_root)


def test_image_no_higher_than_the_banner(aircraft_root: Path):
    Image.new("RGB", (60, 20)).save(aircraft_root / "data" / "images" / "1025791.jpg")
    with pytest.raises(
        GalleryError,
        match=r"trainval.txt line 1: image is 20 pixels high, no more than the banner: '1025791 707-320'$",
    ):
        load_dataset(aircraft_root)
