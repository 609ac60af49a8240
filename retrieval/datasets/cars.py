"""Stanford Cars in its devkit layout: devkit/*.mat annotations, cars_train/, cars_test/.

Labels are the ``class_names`` of cars_meta.mat with '/' made '-' (``Ram C/V Cargo Van Minivan
2012`` -> ``Ram C-V Cargo Van Minivan 2012``). ``train`` is devkit/cars_train_annos.mat (images in
cars_train/), ``test`` is cars_test_annos_withlabels.mat (at the top or in devkit/; images in
cars_test/). The retrieval split is classes 1-98 / 99-196 over both. Boxes (``bbox_x1 .. bbox_y2``,
1-based inclusive pixels) become (x1 - 1, y1 - 1, x2, y2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.datasets.common import (
    Entry,
    Labels,
    Origin,
    box_1based,
    first_present,
    load_mat,
    mat_int,
    mat_text,
    mat_var,
    records,
    relative_path,
    require,
    select,
)
from retrieval.datasets.folders import Record
from retrieval.errors import GalleryError

NAME = "Stanford Cars"
META = "devkit/cars_meta.mat"
TRAIN_ANNOS = "devkit/cars_train_annos.mat"
TEST_ANNOS = ["cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat"]
MARKERS = (META, TRAIN_ANNOS, *TEST_ANNOS)
PLACES = ("",)  # where the metadata may lie, relative to the folder given
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
RETRIEVAL_TRAIN_CLASSES = range(1, 99)


def load(root: Path, split: str, crop: str) -> list[Record]:
    classes = _class_names(require(root, META, NAME))
    parts = []
    if split != "test":
        parts.append((require(root, TRAIN_ANNOS, NAME), "cars_train", True))
    if split != "train":
        parts.append((first_present(root, TEST_ANNOS, NAME), "cars_test", False))
    entries = []
    for path, folder, train in parts:
        entries.extend(_annotations(root, path, folder, train, classes))
    chosen = select(entries, split, RETRIEVAL_TRAIN_CLASSES.__contains__, NAME, root)
    return records(chosen, crop)


def _class_names(path: Path) -> list[str]:
    labels = Labels()
    names = []
    for i, value in enumerate(mat_var(load_mat(path), path, "class_names").ravel()):
        origin = Origin(path, f"class_names[{i}]", _show(value))
        names.append(labels(origin, mat_text(origin, value, "class name"), i))
    return names


def _annotations(
    root: Path, path: Path, folder: str, train: bool, classes: list[str]
) -> list[Entry]:
    annotations = mat_var(load_mat(path), path, "annotations")
    missing = [f for f in FIELDS if f not in (annotations.dtype.names or ())]
    if missing:
        raise GalleryError(
            f"{path}: 'annotations' is not a struct array with the fields {', '.join(FIELDS)} "
            f"(it lacks {', '.join(missing)})"
        )
    entries = []
    seen: dict[str, str] = {}
    for i, item in enumerate(annotations.ravel()):
        origin = Origin(
            path, f"annotations[{i}]", ", ".join(f"{f}={_show(item[f])}" for f in FIELDS)
        )
        fname = mat_text(origin, item["fname"], "fname")
        if fname in seen:
            raise origin.error(f"fname {fname!r} was already given in {seen[fname]}")
        seen[fname] = origin.place
        class_id = mat_int(origin, item["class"], "class")
        if not 1 <= class_id <= len(classes):
            raise origin.error(
                f"class {class_id} is not among the {len(classes)} class_names of {META}"
            )
        box = box_1based(origin, *(mat_int(origin, item[f], f) for f in FIELDS[:4]))
        image = root / folder / relative_path(origin, fname)
        entries.append(Entry(image, classes[class_id - 1], class_id, train, origin, box))
    return entries


def _show(value: object) -> str:
    """A MATLAB value as it reads: the lone element of loadmat's nested arrays, or the list."""
    flat = np.asarray(value).ravel().tolist()
    return str(flat[0]) if len(flat) == 1 else str(flat)
