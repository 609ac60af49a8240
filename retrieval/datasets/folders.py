"""Image records from a folder-per-label gallery, input collection for enrolment, label rules."""

from __future__ import annotations

import functools
import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from index import not_regular
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


# Characters a label may not hold: control characters (Cc), invisible format characters (Cf:
# zero-width spaces, direction overrides) and surrogates (Cs). Unassigned code points are
# allowed (which are unassigned changes with each Unicode version), and private use ones.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def _ranges(codes: list[int]) -> str:
    """A regular-expression character class body of these code points (sorted), as ranges:
    \\uXXXX escapes in the Basic Multilingual Plane, the characters themselves beyond it
    (every engine reads those; not every one knows an escape for them)."""

    def char(c: int) -> str:
        return f"\\u{c:04x}" if c <= 0xFFFF else chr(c)

    out: list[str] = []
    start = prev = codes[0]
    for c in [*codes[1:], -1]:
        if c == prev + 1:
            prev = c
            continue
        out.append(char(start) if start == prev else f"{char(start)}-{char(prev)}")
        start = prev = c
    return "".join(out)


@functools.cache
def label_pattern() -> str:
    """validate_label's rule but for the length, as a regular expression (JSON Schema's,
    Python's, ECMAScript's, Rust's) that matches a whole label: the OpenAPI schema of
    ``retrieve serve`` states it. Surrogates are left out of it (no UTF-8 text holds one)."""
    refused = [
        c
        for c in range(0x110000)
        if unicodedata.category(chr(c)) in REFUSED_CATEGORIES and not 0xD800 <= c <= 0xDFFF
    ]
    refused = sorted({*refused, ord("/"), ord("\\")})
    spaces = sorted({*refused, *(c for c in range(0x110000) if chr(c).isspace())})
    return f"^[^{_ranges(spaces)}](?:[^{_ranges(refused)}]*[^{_ranges(spaces)}])?$"


def validate_label(label: str) -> str:
    """The label itself, or InputError saying why it cannot be one: empty, longer than 200
    characters, beginning or ending with white space, holding a path separator or a control or
    invisible character (REFUSED_CATEGORIES)."""
    if not label or not label.strip():
        raise InputError("label is empty")
    if label != label.strip():  # " lead" and "lead" would be two labels that look alike
        raise InputError(f"label {label!r} begins or ends with white space")
    if len(label) > MAX_LABEL_LENGTH:
        raise InputError(f"label is {len(label)} characters long; the limit is {MAX_LABEL_LENGTH}")
    if "/" in label or "\\" in label:
        raise InputError(f"label {label!r} contains a path separator")
    if any(unicodedata.category(ch) in REFUSED_CATEGORIES for ch in label):
        raise InputError(f"label {label!r} contains a control or invisible character")
    return label


def not_a_file(path: Path) -> str | None:
    """None for a regular file (or a symbolic link to one), else why ``path`` is passed over:
    a FIFO, device or socket (reading one could block or never end), a broken symbolic link,
    a symbolic link to a folder (not followed, so that a loop cannot hang a walk)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if path.is_symlink() else "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode) and path.is_symlink():
        return "a symbolic link to a folder (not followed)"
    return not_regular(mode)


def _walk_files(root: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Every non-hidden regular file below ``root``, sorted; anything else there that is not
    hidden (FIFOs, devices, sockets, broken links, links to folders, which are not followed)
    is added to ``skipped`` with the reason."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        linked = [d for d in dirnames if not d.startswith(".") and (here / d).is_symlink()]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in linked)
        for name in sorted([*(f for f in filenames if not f.startswith(".")), *linked]):
            p = here / name
            why = not_a_file(p)
            if why is None:
                found.append(p)
            else:
                skipped.append((str(p), why))
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
    skipped = [
        (str(p), "not inside a label folder" if why is None else why)
        for p in entries
        if not p.is_dir()
        for why in [not_a_file(p)]
    ]
    records: list[Record] = []
    for d in label_dirs:
        try:
            label = validate_label(d.name)
        except InputError as exc:
            raise GalleryError(f"label folder {d}: {exc}") from exc
        images = _split_images(_walk_files(d, skipped), skipped)
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
            images = _split_images(_walk_files(p, skipped), skipped)
            if not images:
                raise InputError(f"folder {p} holds no images")
            records.extend(Record(f, "") for f in images)
        elif (why := not_a_file(p)) is not None:
            skipped.append((str(p), why))
        else:
            records.append(Record(p, ""))
    return Scan(records, skipped)
