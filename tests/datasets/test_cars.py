"""Stanford Cars (devkit .mat files): labels, splits, boxes and the struct-array errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from retrieval.datasets import load_dataset
from retrieval.engine.images import load_rgb
from retrieval.errors import GalleryError

from .conftest import CARS_NAMES, RED, cars_box, mean_color, save_cars_annotations, save_cars_meta

LABELS = [
    "AM General Hummer SUV 2000",
    "Ram C-V Cargo Van Minivan 2012",
    "Volvo 240 Sedan 1993",
    "Volvo XC90 SUV 2007",
]


def annotation_rows(root: Path, name: str) -> list[tuple]:
    """The rows the fixture wrote, read back the plain way."""
    annos = scipy.io.loadmat(root / name)["annotations"].ravel()
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    return [tuple(np.asarray(a[f]).ravel()[0] for f in fields) for a in annos]


def test_train_and_test_with_class_names_as_labels(cars_root: Path):
    train = load_dataset(cars_root, format="cars", split="train")
    test = load_dataset(cars_root, format="cars", split="test")
    assert [r.label for r in train] == LABELS and [r.label for r in test] == LABELS
    assert [r.path for r in train] == [
        cars_root / "cars_train" / f"{j:05d}.jpg" for j in range(1, 5)
    ]
    assert [r.path for r in test] == [cars_root / "cars_test" / f"{j:05d}.jpg" for j in range(1, 5)]
    assert load_dataset(cars_root, format="cars") == train + test


def test_retrieval_split_is_classes_1_to_98_and_99_to_196(cars_root: Path):
    train = load_dataset(cars_root, format="cars", split="retrieval-train")
    test = load_dataset(cars_root, format="cars", split="retrieval-test")
    assert {r.label for r in train} == set(LABELS[:2]) and len(train) == 4
    assert {r.label for r in test} == set(LABELS[2:]) and len(test) == 4


def test_bbox_crop_from_one_based_corners(cars_root: Path):
    records = load_dataset(cars_root, format="cars", crop="bbox")
    x1, y1, x2, y2 = cars_box(1)
    assert records[0].box == (x1 - 1, y1 - 1, x2, y2)
    assert records[5].box == (cars_box(6)[0] - 1, 6, cars_box(6)[2], 30)
    crop = load_rgb(records[0].path, box=records[0].box)
    assert crop.size == (x2 - x1 + 1, y2 - y1 + 1)
    np.testing.assert_allclose(mean_color(crop), RED, atol=8)
    assert np.abs(mean_color(load_rgb(records[0].path)) - mean_color(crop)).max() > 30


def test_detected_and_test_annotations_also_read_from_devkit(cars_root: Path):
    (cars_root / "cars_test_annos_withlabels.mat").rename(
        cars_root / "devkit" / "cars_test_annos_withlabels.mat"
    )
    assert len(load_dataset(cars_root, split="test")) == 4


@pytest.mark.parametrize(
    "name,split,message",
    [
        ("devkit/cars_meta.mat", "all", "lacks devkit/cars_meta.mat$"),
        ("devkit/cars_train_annos.mat", "train", "lacks devkit/cars_train_annos.mat$"),
        (
            "cars_test_annos_withlabels.mat",
            "test",
            "lacks cars_test_annos_withlabels.mat \\(looked for cars_test_annos_withlabels.mat "
            "and devkit/cars_test_annos_withlabels.mat\\)$",
        ),
    ],
)
def test_missing_metadata_file_is_named(cars_root: Path, name: str, split: str, message: str):
    (cars_root / name).unlink()
    with pytest.raises(GalleryError, match="Stanford Cars folder .* " + message):
        load_dataset(cars_root, format="cars", split=split)


def test_only_the_annotations_of_the_split_are_needed(cars_root: Path):
    (cars_root / "cars_test_annos_withlabels.mat").unlink()
    assert len(load_dataset(cars_root, split="train")) == 4


def test_test_annotations_without_labels_are_refused(cars_root: Path):
    rows = annotation_rows(cars_root, "cars_test_annos_withlabels.mat")
    annotations = np.zeros(
        (1, len(rows)),
        dtype=[(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname")],
    )
    for i, (x1, y1, x2, y2, _, fname) in enumerate(rows):
        for f, v in zip(
            ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"), (x1, y1, x2, y2), strict=True
        ):
            annotations[0, i][f] = np.array([[v]])
        annotations[0, i]["fname"] = np.array([fname])
    scipy.io.savemat(cars_root / "cars_test_annos_withlabels.mat", {"annotations": annotations})
    with pytest.raises(
        GalleryError,
        match=r"cars_test_annos_withlabels.mat: 'annotations' is not a struct array with the fields .* \(it lacks class\)$",
    ):
        load_dataset(cars_root)


@pytest.mark.parametrize(
    "index,change,problem",
    [
        (2, {4: 197}, "class 197 is not among the 100 class_names of devkit/cars_meta.mat"),
        (1, {4: 0}, "class 0 is not among the 100 class_names"),
        (3, {5: "00001.jpg"}, r"fname '00001.jpg' was already given in annotations\[0\]"),
        (0, {5: "../00001.jpg"}, "leads out of the dataset folder"),
        (1, {0: 30, 2: 20}, r"bounding box \(29, 6, 20, 30\) .* is empty"),
    ],
)
def test_bad_annotation_is_quoted(cars_root: Path, index: int, change: dict, problem: str):
    rows = [list(r) for r in annotation_rows(cars_root, "devkit/cars_train_annos.mat")]
    for field, value in change.items():
        rows[index][field] = value
    save_cars_annotations(cars_root / "devkit" / "cars_train_annos.mat", [tuple(r) for r in rows])
    with pytest.raises(GalleryError) as err:
        load_dataset(cars_root, crop="bbox")
    message = str(err.value)
    x1, y1, x2, y2, class_id, fname = rows[index]
    assert message.startswith(
        f"{cars_root / 'devkit' / 'cars_train_annos.mat'} annotations[{index}]: "
    )
    assert message.endswith(
        f": 'bbox_x1={x1}, bbox_y1={y1}, bbox_x2={x2}, bbox_y2={y2}, class={class_id}, fname={fname}'"
    )
    assert re.search(problem, message), message


def test_annotation_field_holding_two_values(cars_root: Path):
    mat = scipy.io.loadmat(cars_root / "devkit" / "cars_train_annos.mat")
    mat["annotations"][0, 1]["class"] = np.array([[1, 2]])
    scipy.io.savemat(
        cars_root / "devkit" / "cars_train_annos.mat", {"annotations": mat["annotations"]}
    )
    with pytest.raises(
        GalleryError,
        match=r"annotations\[1\]: class holds 2 values instead of one: .*class=\[1, 2\]",
    ):
        load_dataset(cars_root, split="train")


def test_image_missing_on_disk(cars_root: Path):
    (cars_root / "cars_test" / "00003.jpg").unlink()
    with pytest.raises(GalleryError) as err:
        load_dataset(cars_root)
    assert str(err.value).startswith(
        f"{cars_root / 'cars_test_annos_withlabels.mat'} annotations[2]: image "
        f"{cars_root / 'cars_test' / '00003.jpg'} is missing on disk: 'bbox_x1="
    )
    assert len(load_dataset(cars_root, split="train")) == 4


def test_class_names_that_collide_or_are_not_text(cars_root: Path):
    names = [CARS_NAMES.get(i, f"Make {i}") for i in range(1, 101)]
    names[5] = "Ram C-V Cargo Van Minivan 2012"
    save_cars_meta(cars_root / "devkit" / "cars_meta.mat", names)
    with pytest.raises(GalleryError) as err:
        load_dataset(cars_root)
    assert str(err.value) == (
        f"{cars_root / 'devkit' / 'cars_meta.mat'} class_names[5]: class name "
        "'Ram C-V Cargo Van Minivan 2012' becomes label 'Ram C-V Cargo Van Minivan 2012', "
        "as 'Ram C/V Cargo Van Minivan 2012' did already: 'Ram C-V Cargo Van Minivan 2012'"
    )
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = np.array(["Fine"]), np.array([[7]])
    scipy.io.savemat(cars_root / "devkit" / "cars_meta.mat", {"class_names": cell})
    with pytest.raises(GalleryError, match=r"class_names\[1\]: class name is not text: '7'$"):
        load_dataset(cars_root)


def test_annotation_number_that_is_text(cars_root: Path):
    mat = scipy.io.loadmat(cars_root / "devkit" / "cars_train_annos.mat")
    mat["annotations"][0, 2]["class"] = np.array(["three"])
    scipy.io.savemat(
        cars_root / "devkit" / "cars_train_annos.mat", {"annotations": mat["annotations"]}
    )
    with pytest.raises(
        GalleryError, match=r"annotations\[2\]: class is not a number: .*class=three, "
    ):
        load_dataset(cars_root, split="train")
