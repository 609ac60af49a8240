"""Image records from a folder-per-label gallery, input collection for enrolment, label rules."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.engine.images import Box, is_image_name
from retrieval.errors import GalleryError, InputError

MAX_LABEL_LENGTH = 200


@dataclass(frozen=True)
class Record:
    """One labelled image; ``box`` is the region to use (left, top, right, bottom, in pixels of the
    full-size upright image, right and bottom exclusive), None for the whole image."""

    path: Path
    label: str
    box: Box | None = None


@dataclass
class Scan:
    """Gallery images found, and files passed over with the reason (reported, never fatal)."""

    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records})


def validate_label(label: str) -> str:
    """The label itself, or InputError saying why it cannot be one."""
    if not label or not label.strip():
        raise InputError("label is empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise InputError(f"label is {len(label)} characters long; the limit is {MAX_LABEL_LENGTH}")
    if "/" in label or "\\" in label:
        raise InputError(f"label {label!r} contains a path separator")
    if any(unicodedata.category(ch).startswith("C") for ch in label):
        raise InputError(f"label {label!r} contains a control character")
    return label


def _walk_files(root: Path) -> list[Path]:
    """Every non-hidden regular file below ``root``, sorted; symlinked folders are not followed,
    so a symlink loop cannot hang the walk."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                p = Path(dirpath) / name
                if p.is_file():
                    found.append(p)
    return found


def _split_images(files: list[Path], skipped: list[tuple[str, str]]) -> list[Path]:
    images = []
    for f in files:
        if is_image_name(f):
            images.append(f)
        else:
            skipped.append((str(f), "not an image file type"))
    return images


def scan_gallery(root: str | Path) -> Scan:
    """Records of a gallery: one sub-folder per label, images at any depth below it."""
    root = Path(root)
    if not root.exists():
        raise GalleryError(f"gallery folder {root} does not exist")
    if not root.is_dir():
        raise GalleryError(f"gallery {root} is not a folder")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    label_dirs = [p for p in entries if p.is_dir()]
    if not label_dirs:
        raise GalleryError(
            f"gallery folder {root} has no label sub-folders (expected {root}/<label>/<image>)"
        )
    skipped = [(str(p), "not inside a label folder") for p in entries if p.is_file()]
    records: list[Record] = []
    for d in label_dirs:
        try:
            label = validate_label(d.name)
        except InputError as exc:
            raise GalleryError(f"label folder {d}: {exc}") from exc
        images = _split_images(_walk_files(d), skipped)
        if not images:
            raise GalleryError(f"label folder {d} holds no images")
        records.extend(Record(p, label) for p in images)
    return Scan(records, skipped)


def collect_images(inputs: list[str | Path]) -> Scan:
    """Image files named directly or found below folders, for enrolment (label left empty)."""
    if not inputs:
        raise InputError("no image or folder given")
    skipped: list[tuple[str, str]] = []
    records: list[Record] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise InputError(f"{p} does not exist")
        if p.is_dir():
            images = _split_images(_walk_files(p), skipped)
            if not images:
                raise InputError(f"folder {p} holds no images")
            records.extend(Record(f, "") for f in images)
        else:
            records.append(Record(p, ""))
    return Scan(records, skipped)
