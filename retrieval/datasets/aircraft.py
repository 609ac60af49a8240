"""FGVC-Aircraft in its official layout: data/images/<id>.jpg and the data/images_*.txt lists.

Labels are the names of the chosen level (variant, family or manufacturer) with '/' made '-'
(``F/A-18`` -> ``F-A-18``). ``train`` is images_<level>_trainval.txt, ``test`` is
images_<level>_test.txt. The retrieval split (our convention) is the first half of the label names
in sorted order / the second half (the first half is the larger one when their number is odd).
Every record's box drops the 20-pixel copyright banner at the bottom of the image, as the authors
advise; with ``crop="bbox"`` it is also cut to images_box.txt (1-based inclusive
``xmin ymin xmax ymax``, made (xmin - 1, ymin - 1, xmax, ymax)).
"""

from __future__ import annotations

from pathlib import Path

from retrieval.datasets.common import (
    Entry,
    Labels,
    Rows,
    box_1based,
    first_half,
    index_rows,
    lookup,
    read_table,
    relative_path,
    require,
    select,
)
from retrieval.datasets.folders import Record
from retrieval.engine.images import Box, image_size
from retrieval.errors import ImageError

NAME = "FGVC-Aircraft"
MARKERS = ("images_box.txt", "images_variant_trainval.txt", "images_variant_test.txt")
PLACES = ("data", "")  # where the metadata may lie, relative to the folder given
BANNER = 20  # pixel rows of copyright text at the bottom of every image


def load(root: Path, split: str, crop: str, level: str) -> list[Record]:
    boxes: Rows = {}
    if crop == "bbox":
        boxes = index_rows(read_table(require(root, "images_box.txt", NAME), 5))
    labels = Labels()
    entries = []
    seen: dict[str, str] = {}
    for part in {"train": ("trainval",), "test": ("test",)}.get(split, ("trainval", "test")):
        train = part == "trainval"
        path = require(root, f"images_{level}_{part}.txt", NAME)
        for origin, (image_id, name) in read_table(path, 2, rest=True):
            if image_id in seen:
                raise origin.error(f"image id {image_id} was already given in {seen[image_id]}")
            seen[image_id] = f"{path.name} {origin.place}"
            rel = relative_path(origin, f"{image_id}.jpg")
            if len(rel.parts) != 1:
                raise origin.error(f"image id {image_id!r} is not a file name")
            box = None
            if crop == "bbox":
                _, *corners = lookup(boxes, image_id, origin, "images_box.txt")
                box = box_1based(boxes[image_id][0], *corners)
            label = labels(origin, name)
            entries.append(Entry(root / "images" / rel, label, label, train, origin, box))
    retrieval_train = first_half(e.class_key for e in entries)
    chosen = select(entries, split, retrieval_train, NAME, root)
    return [Record(e.path, e.label, _without_banner(e, boxes)) for e in chosen]


def _without_banner(entry: Entry, boxes: Rows) -> Box:
    """The entry's box (or the whole image) less the banner rows; ``boxes`` holds the line of
    images_box.txt the entry's box came from."""
    try:
        width, height = image_size(entry.path)
    except ImageError as exc:
        raise entry.origin.error(f"image cannot be read ({exc})") from exc
    if height <= BANNER:
        raise entry.origin.error(f"image is {height} pixels high, no more than the banner")
    if entry.box is None:
        return (0, 0, width, height - BANNER)
    left, top, right, bottom = entry.box
    if top >= height - BANNER:
        raise boxes[entry.path.stem][0].error(
            f"bounding box lies in the bottom {BANNER}-pixel banner"
        )
    return (left, top, right, min(bottom, height - BANNER))
