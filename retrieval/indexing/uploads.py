"""The index's own copies of photos it was given in memory or over HTTP:
``INDEX/uploads/<sha256 prefix>/<name>``, the path their items record. A copy is kept only while
an item records it: written before its enrolment, deleted when that adds nothing and when the
item is removed."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from index import Item, atomic_write_bytes

UPLOADS = "uploads"
_UNSAFE = re.compile(r"[^\w.\- ]+")
_NAME_CHARS = 120


@dataclass(frozen=True)
class Stored:
    """A photo written under INDEX/uploads for enrolment."""

    name: str  # as the user named it
    path: Path
    created: bool  # by this call (False: the same content and name were there already)


def uploads_dir(index_dir: str | Path) -> Path:
    return Path(index_dir).resolve() / UPLOADS


def safe_name(filename: str | None) -> str:
    """The base name of ``filename`` with anything but letters, digits, ``.-_`` and spaces
    replaced, at most 120 characters."""
    name = _UNSAFE.sub("_", Path(filename or "").name).strip(" .")
    return name[:_NAME_CHARS] or "upload"


def store(index_dir: str | Path, name: str | None, data: bytes) -> Stored:
    """Write ``data`` under the index's uploads folder (atomically), in a folder named by its
    content, as ``safe_name(name)``."""
    shown = name or "upload"
    path = uploads_dir(index_dir) / hashlib.sha256(data).hexdigest()[:16] / safe_name(name)
    if path.is_file():
        return Stored(shown, path, created=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return Stored(shown, path, created=True)


def discard(stored: Iterable[Stored], kept: Iterable[str]) -> None:
    """Delete the copies this call created that are not among the ``kept`` paths."""
    keep = set(kept)
    for s in stored:
        if s.created and str(s.path) not in keep:
            s.path.unlink(missing_ok=True)
            _remove_empty(s.path.parent)


def delete_copies(index_dir: str | Path, items: Iterable[Item]) -> None:
    """Delete the uploads-folder copies of removed items (a photo elsewhere is never touched)."""
    uploads = uploads_dir(index_dir)
    for item in items:
        file = Path(item.path)
        if file.parent.parent == uploads:
            file.unlink(missing_ok=True)
            _remove_empty(file.parent)


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: a photo of the same content is kept there
        folder.rmdir()
