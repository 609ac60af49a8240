"""Oxford Flowers-102 in its official layout: jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat.

The dataset ships no class names, so labels are the class numbers: ``class_001`` ... ``class_102``.
``train`` is trnid + valid, ``test`` is tstid (setid.mat). The retrieval split (our convention) is
the first half of the class ids in sorted order (1-51) / the second half (52-102). There are no
bounding boxes.
"""

from __future__ import annotations

import re
from pathlib import Path

from retrieval.datasets.common import (
    Entry,
    Origin,
    first_half,
    load_mat,
    mat_var,
    records,
    require,
    select,
    to_int,
)
from retrieval.datasets.folders import Record
from retrieval.errors import GalleryError

NAME = "Oxford Flowers-102"
MARKERS = ("imagelabels.mat", "setid.mat", "jpg/image_00001.jpg")
PLACES = ("",)  # where the metadata may lie, relative to the folder given
SET_KEYS = {"trnid": True, "valid": True, "tstid": False}  # setid.mat variable -> official train
_IMAGE_NAME = re.compile(r"^image_(\d{5})\.jpg$")


def load(root: Path, split: str) -> list[Record]:
    labels_path = require(root, "imagelabels.mat", NAME)
    labels = mat_var(load_mat(labels_path), labels_path, "labels").ravel()
    train = _official_split(root, len(labels)) if split in ("train", "test") else {}
    entries = []
    for i, value in enumerate(labels):
        number = i + 1
        name = f"image_{number:05d}.jpg"
        origin = Origin(labels_path, f"labels[{i}]", f"{name}: {value}")
        class_id = to_int(origin, value, "class")
        if class_id < 1:
            raise origin.error(f"class {class_id} is below 1")
        path = root / "jpg" / name
        entries.append(Entry(path, f"class_{class_id:03d}", class_id, train.get(number), origin))
    _check_no_extra_images(root, labels_path, len(labels))
    retrieval_train = first_half(e.class_key for e in entries)
    return records(select(entries, split, retrieval_train, NAME, root), "none")


def _official_split(root: Path, count: int) -> dict[int, bool]:
    """Image number -> whether it is in the official train split (trnid or valid)."""
    path = require(root, "setid.mat", NAME)
    mat = load_mat(path)
    train: dict[int, bool] = {}
    where: dict[int, str] = {}
    for key, is_train in SET_KEYS.items():
        for i, value in enumerate(mat_var(mat, path, key).ravel()):
            origin = Origin(path, f"{key}[{i}]", str(value))
            number = to_int(origin, value, "image number")
            if not 1 <= number <= count:
                raise origin.error(
                    f"image number {number} is not among the {count} of imagelabels.mat"
                )
            if number in train:
                raise origin.error(f"image number {number} is also in {where[number]}")
            train[number] = is_train
            where[number] = f"{key}[{i}]"
    return train


def _check_no_extra_images(root: Path, labels_path: Path, count: int) -> None:
    """GalleryError when jpg/ holds an image_NNNNN.jpg beyond the labels' count."""
    folder = root / "jpg"
    if not folder.is_dir():
        raise GalleryError(f"{NAME} folder {root} lacks the image folder jpg/")
    beyond = sorted(
        int(m.group(1))
        for p in folder.iterdir()
        if (m := _IMAGE_NAME.match(p.name)) and int(m.group(1)) > count
    )
    if beyond:
        raise GalleryError(
            f"{labels_path} has {count} labels, but {folder} also holds "
            f"image_{beyond[0]:05d}.jpg ({len(beyond)} images without a label)"
        )
