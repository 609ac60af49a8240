"""Fine-grained benchmarks in their official layouts as records: format detection and loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from retrieval.datasets import aircraft, cars, cub, flowers102
from retrieval.datasets.common import (
    CROPS,
    LEVELS,
    SPLITS,
    check_options,
    find_data_root,
    looked_for,
)
from retrieval.datasets.folders import Record, Scan, scan_gallery
from retrieval.errors import GalleryError, InputError

FORMATS = ("folder", "cub", "flowers102", "cars", "aircraft")
_READERS = {"cub": cub, "flowers102": flowers102, "cars": cars, "aircraft": aircraft}

__all__ = [
    "CROPS",
    "FORMATS",
    "DatasetOptions",
    "LEVELS",
    "SPLITS",
    "detect_format",
    "load_dataset",
    "scan_dataset",
]


@dataclass(frozen=True)
class DatasetOptions:
    """How to read a gallery or dataset folder (the options of scan_dataset)."""

    format: str = "auto"
    split: str = "all"
    crop: str = "none"
    level: str = "variant"

    def scan(self, root: str | Path) -> Scan:
        return scan_dataset(
            root, format=self.format, split=self.split, crop=self.crop, level=self.level
        )


def detect_format(root: str | Path) -> str:
    """The format of ``root`` from the files present: a benchmark whose metadata files are there,
    else "folder" when it has sub-folders (one per label). GalleryError when it is neither, or
    looks like more than one benchmark."""
    root = _existing_folder(root)
    found = [name for name, reader in _READERS.items() if _data_root(reader, root) is not None]
    if len(found) > 1:
        raise GalleryError(
            f"{root} looks like more than one dataset ({', '.join(found)}); "
            f"choose one with the format option"
        )
    if found:
        return found[0]
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return "folder"
    wanted = "; ".join(
        f"{name}: {looked_for(root, reader.MARKERS, reader.PLACES)}"
        for name, reader in _READERS.items()
    )
    raise GalleryError(
        f"cannot tell the format of {root}: it has no label sub-folders (folder) and {wanted}"
    )


def load_dataset(
    root: str | Path,
    *,
    format: str = "auto",
    split: str = "all",
    crop: str = "none",
    level: str = "variant",
) -> list[Record]:
    """The records of ``root`` read as ``format``; see scan_dataset."""
    return scan_dataset(root, format=format, split=split, crop=crop, level=level).records


def scan_dataset(
    root: str | Path,
    *,
    format: str = "auto",
    split: str = "all",
    crop: str = "none",
    level: str = "variant",
) -> Scan:
    """The records of ``root`` read as ``format`` ("auto": detected), restricted to ``split``,
    boxed to the annotated object with ``crop="bbox"``, labelled at ``level`` (aircraft), and
    the files a folder gallery passed over.

    Splits: "all"; "train"/"test", the official classification split; "retrieval-train" /
    "retrieval-test", the class-disjoint retrieval split (the reader modules say which classes).
    Bad option values raise InputError, a bad dataset folder GalleryError.
    """
    if format != "auto" and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; choose auto or one of {', '.join(FORMATS)}")
    root = _existing_folder(root)
    if format == "auto":
        format = detect_format(root)
    if format == "folder":
        check_options("a folder gallery", split, crop, level, boxes=False, levels=False)
        if split != "all":
            raise InputError(
                f"split {split!r} needs a dataset with official splits; a folder gallery has only 'all'"
            )
        return scan_gallery(root)
    reader = _READERS[format]
    check_options(
        reader.NAME, split, crop, level, boxes=reader is not flowers102, levels=reader is aircraft
    )
    data_root = _data_root(reader, root)
    if data_root is None:
        found = looked_for(root, reader.MARKERS, reader.PLACES)
        raise GalleryError(f"{root} is not a {reader.NAME} folder: {found}")
    if reader is flowers102:
        records = flowers102.load(data_root, split)
    elif reader is aircraft:
        records = aircraft.load(data_root, split, crop, level)
    else:
        records = reader.load(data_root, split, crop)
    if not records:
        raise GalleryError(f"{root} ({reader.NAME}) has no images in split {split!r}")
    return Scan(records)


def _data_root(reader: ModuleType, root: Path) -> Path | None:
    return find_data_root(root, reader.MARKERS, reader.PLACES)


def _existing_folder(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise GalleryError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise GalleryError(f"dataset {root} is not a folder")
    return root
