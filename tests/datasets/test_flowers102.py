"""Oxford Flowers-102: numbered labels, splits from setid.mat, and the .mat errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from retrieval.datasets import load_dataset
from retrieval.errors import GalleryError, InputError

from .conftest import FLOWERS_LABELS, FLOWERS_SETS


def numbers(records) -> list[int]:
    return [int(r.path.stem.removeprefix("image_")) for r in records]


def test_all_images_with_numbered_labels(flowers_root: Path):
    records = load_dataset(flowers_root, format="flowers102")
    assert numbers(records) == list(range(1, 13))
    assert [r.label for r in records] == [f"class_{c:03d}" for c in FLOWERS_LABELS]
    assert all(r.path.parent == flowers_root / "jpg" and r.box is None for r in records)


def test_train_is_trnid_and_valid_test_is_tstid(flowers_root: Path):
    train = load_dataset(flowers_root, format="flowers102", split="train")
    test = load_dataset(flowers_root, format="flowers102", split="test")
    assert sorted(numbers(train)) == sorted(FLOWERS_SETS["trnid"] + FLOWERS_SETS["valid"])
    assert sorted(numbers(test)) == sorted(FLOWERS_SETS["tstid"])


def test_retrieval_split_is_first_and_second_half_of_class_ids(flowers_root: Path):
    train = load_dataset(flowers_root, format="flowers102", split="retrieval-train")
    test = load_dataset(flowers_root, format="flowers102", split="retrieval-test")
    assert {r.label for r in train} == {"class_001", "class_002"}
    assert {r.label for r in test} == {"class_003", "class_004"}
    assert len(train) + len(test) == 12


def test_detected_and_setid_only_needed_for_the_official_split(flowers_root: Path):
    (flowers_root / "setid.mat").unlink()
    assert len(load_dataset(flowers_root)) == 12
    with pytest.raises(GalleryError, match=r"Oxford Flowers-102 folder .* lacks setid.mat$"):
        load_dataset(flowers_root, split="test")


def test_no_boxes_and_no_levels(flowers_root: Path):
    with pytest.raises(InputError, match="crop 'bbox' needs bounding boxes"):
        load_dataset(flowers_root, crop="bbox")
    with pytest.raises(InputError, match="level 'family' exists only for aircraft"):
        load_dataset(flowers_root, level="family")


def test_missing_labels_file_is_named(flowers_root: Path):
    (flowers_root / "imagelabels.mat").unlink()
    with pytest.raises(GalleryError, match=r"folder .*flowers lacks imagelabels.mat$"):
        load_dataset(flowers_root, format="flowers102")


def test_missing_variable_names_what_the_file_holds(flowers_root: Path):
    scipy.io.savemat(flowers_root / "imagelabels.mat", {"classes": np.array([[1, 2]])})
    with pytest.raises(
        GalleryError, match=r"imagelabels.mat has no variable 'labels' \(it holds classes\)"
    ):
        load_dataset(flowers_root)


def test_damaged_mat_file(flowers_root: Path):
    (flowers_root / "setid.mat").write_bytes(b"MATLAB 5.0 but not really")
    with pytest.raises(GalleryError, match=r"setid.mat is not a readable MATLAB file"):
        load_dataset(flowers_root, split="train")


def test_image_missing_on_disk_quotes_its_label(flowers_root: Path):
    (flowers_root / "jpg" / "image_00005.jpg").unlink()
    with pytest.raises(GalleryError) as err:
        load_dataset(flowers_root)
    assert str(err.value) == (
        f"{flowers_root / 'imagelabels.mat'} labels[4]: image "
        f"{flowers_root / 'jpg' / 'image_00005.jpg'} is missing on disk: 'image_00005.jpg: 1.0'"
    )


def test_more_images_than_labels(flowers_root: Path):
    (flowers_root / "jpg" / "image_00001.jpg").rename(flowers_root / "jpg" / "image_00013.jpg")
    (flowers_root / "jpg" / "image_00002.jpg").rename(flowers_root / "jpg" / "image_00020.jpg")
    with pytest.raises(GalleryError) as err:
        load_dataset(flowers_root, split="retrieval-test")
    assert str(err.value) == (
        f"{flowers_root / 'imagelabels.mat'} has 12 labels, but {flowers_root / 'jpg'} also holds "
        "image_00013.jpg (2 images without a label)"
    )


def test_image_folder_missing(flowers_root: Path):
    for p in (flowers_root / "jpg").iterdir():
        p.unlink()
    (flowers_root / "jpg").rmdir()
    with pytest.raises(GalleryError, match=r"lacks the image folder jpg/$"):
        load_dataset(flowers_root)


def test_bad_label_value_is_quoted(flowers_root: Path):
    labels = np.array([FLOWERS_LABELS], np.float64)
    labels[0, 6] = 2.5
    scipy.io.savemat(flowers_root / "imagelabels.mat", {"labels": labels})
    with pytest.raises(
        GalleryError, match=r"labels\[6\]: class 2.5 is not a whole number: 'image_00007.jpg: 2.5'$"
    ):
        load_dataset(flowers_root)
    labels[0, 6] = 0
    scipy.io.savemat(flowers_root / "imagelabels.mat", {"labels": labels})
    with pytest.raises(GalleryError, match=r"labels\[6\]: class 0 is below 1"):
        load_dataset(flowers_root)


@pytest.mark.parametrize(
    "key,index,value,problem",
    [
        ("tstid", 2, 13, "image number 13 is not among the 12 of imagelabels.mat"),
        ("tstid", 1, 0, "image number 0 is not among the 12 of imagelabels.mat"),
        ("valid", 3, 2, r"image number 2 is also in trnid\[0\]"),
    ],
)
def test_bad_setid_entry_is_quoted(
    flowers_root: Path, key: str, index: int, value: int, problem: str
):
    sets = {k: np.array([v], np.float64) for k, v in FLOWERS_SETS.items()}
    sets[key][0, index] = value
    scipy.io.savemat(flowers_root / "setid.mat", sets)
    with pytest.raises(GalleryError) as err:
        load_dataset(flowers_root, split="train")
    message = str(err.value)
    assert message.startswith(f"{flowers_root / 'setid.mat'} {key}[{index}]: ")
    assert message.endswith(f": '{float(value)}'")
    assert re.search(problem, message)
