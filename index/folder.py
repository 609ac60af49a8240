"""An index folder's own files: their names, which entries belong to an index (and which are
temp files of an interrupted write), and the identity of a file across a swap."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from index.fsutil import TEMP_SUFFIX, is_temp_of

MANIFEST = "manifest.json"
RECORDS = "records.sqlite"
VECTORS = "vectors.faiss"
SIDECAR = "vectors.faiss.json"
OWN_FILES = frozenset(
    {MANIFEST, RECORDS, f"{RECORDS}-wal", f"{RECORDS}-shm", f"{RECORDS}-journal", VECTORS, SIDECAR}
)
ATOMIC_FILES = (MANIFEST, VECTORS, SIDECAR)


def is_own(entry: Path, extra: Collection[str] = ()) -> bool:
    """Whether ``entry`` is a file an index writes (its own files, the ``extra`` files created
    with it, or their temp files); the lock file is neither own nor foreign: it is never
    removed, since a writer may hold it."""
    if entry.is_dir():
        return False
    name = entry.name
    return name in OWN_FILES or name in extra or is_temp(name, extra)


def is_temp(name: str, extra: Collection[str] = ()) -> bool:
    """Whether ``name`` is a temp file of an atomic write into the folder: of the index's own
    files, of the ``extra`` files created with it, or of a file its users keep beside it (the
    ML side's derived state): every writer of them holds the writer lock, so one found by the
    next writer was left by a killed one."""
    return any(is_temp_of(name, n) for n in (*ATOMIC_FILES, *extra)) or (
        name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3
    )


def temp_files(root: str | os.PathLike[str]) -> list[Path]:
    """Temp files in an index folder: a writer's work in progress, or left by a killed one."""
    try:
        entries = sorted(Path(root).iterdir())
    except FileNotFoundError:
        return []
    return [e for e in entries if is_temp(e.name) and e.is_file()]


def file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
