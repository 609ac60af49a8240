"""CUB-200-2011 in its official layout: images.txt, classes.txt, image_class_labels.txt, ...

Labels are the class names without their number prefix (``001.Black_footed_Albatross`` ->
``Black_footed_Albatross``). ``train``/``test`` follow train_test_split.txt (1 = train); the
retrieval split is classes 1-100 / 101-200. Bounding boxes (``<x> <y> <w> <h>``, pixels from the top
left corner) become (floor x, floor y, ceil x+w, ceil y+h).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from retrieval.datasets.common import (
    Entry,
    Labels,
    Origin,
    Rows,
    checked_box,
    index_rows,
    lookup,
    read_table,
    records,
    relative_path,
    require,
    select,
    to_float,
    to_int,
)
from retrieval.datasets.folders import Record
from retrieval.engine.images import Box

NAME = "CUB-200-2011"
MARKERS = (
    "images.txt",
    "classes.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
)
PLACES = ("", "CUB_200_2011")  # where the metadata may lie, relative to the folder given
RETRIEVAL_TRAIN_CLASSES = range(1, 101)
_NUMBER_PREFIX = re.compile(r"^\d+\.")


def load(root: Path, split: str, crop: str) -> list[Record]:
    images = index_rows(read_table(require(root, "images.txt", NAME), 2))
    classes = _classes(require(root, "classes.txt", NAME))
    labels = _table(root, "image_class_labels.txt", images, 2)
    splits = _table(root, "train_test_split.txt", images, 2) if split in ("train", "test") else None
    boxes = _table(root, "bounding_boxes.txt", images, 5) if crop == "bbox" else None
    entries = []
    for image_id, (origin, (_, rel)) in images.items():
        class_field = lookup(labels, image_id, origin, "image_class_labels.txt")[1]
        label_origin = labels[image_id][0]
        class_id = to_int(label_origin, class_field, "class id")
        if class_id not in classes:
            raise label_origin.error(f"class id {class_id} is not in classes.txt")
        train = None
        if splits is not None:
            flag = lookup(splits, image_id, origin, "train_test_split.txt")[1]
            if flag not in ("0", "1"):
                raise splits[image_id][0].error(f"is_training_image {flag!r} is neither 1 nor 0")
            train = flag == "1"
        box = None
        if boxes is not None:
            lookup(boxes, image_id, origin, "bounding_boxes.txt")
            box = _box(*boxes[image_id])
        path = root / "images" / relative_path(origin, rel)
        entries.append(Entry(path, classes[class_id], class_id, train, origin, box))
    chosen = select(entries, split, RETRIEVAL_TRAIN_CLASSES.__contains__, NAME, root)
    return records(chosen, crop)


def _table(root: Path, name: str, images: Rows, fields: int) -> Rows:
    """The per-image file ``name`` by image id; GalleryError quoting its first line whose image id
    is not in images.txt."""
    table = index_rows(read_table(require(root, name, NAME), fields))
    for origin, parts in table.values():
        if parts[0] not in images:
            raise origin.error(f"image id {parts[0]} is not in images.txt")
    return table


def _classes(path: Path) -> dict[int, str]:
    labels = Labels()
    classes: dict[int, str] = {}
    for origin, (class_field, name) in read_table(path, 2, rest=True):
        class_id = to_int(origin, class_field, "class id")
        if class_id in classes:
            raise origin.error(f"class id {class_id} is given twice")
        classes[class_id] = labels(origin, _NUMBER_PREFIX.sub("", name), class_id)
    return classes


def _box(origin: Origin, parts: list[str]) -> Box:
    x, y, w, h = (to_float(origin, v, n) for v, n in zip(parts[1:], "xywh", strict=True))
    return checked_box(origin, (math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)))
