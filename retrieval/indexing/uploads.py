"""The index's own copies of photos it was given in memory or over HTTP:
``INDEX/uploads/<sha256 prefix>/<name>``, the path their items record. A copy is kept only while
an item records it: written before its enrolment, deleted when that adds nothing and when the
item is removed.

Nothing here trusts a path read from the records or the folder as it is found: a copy is
written or deleted only two levels below the index's own ``uploads`` folder, through folder
descriptors opened without following symbolic links, so that neither a record path such as
``uploads/../x`` nor ``uploads`` (or a prefix folder) replaced by a link can lead elsewhere."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from index import IndexFormatError, Item

UPLOADS = "uploads"
_UNSAFE = re.compile(r"[^\w.\- ]+")
_NAME_CHARS = 120
_PREFIX = re.compile(r"[0-9a-f]{16}")
_TEMP = re.compile(r"\.[\w.\- ]+\.[0-9a-f]{16}\.tmp")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


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


def own_copy(index_dir: str | Path, path: str, *, temp_ok: bool = False) -> tuple[str, str] | None:
    """(prefix folder, file name) when ``path`` names a copy in the index's uploads folder
    exactly as ``store`` writes them (``uploads/<16 hex digits>/<name>``, no ``..``; with
    ``temp_ok``, or a temp file of one), else None."""
    parts = Path(path).parts
    if len(parts) < 3 or Path(*parts[:-2]) != uploads_dir(index_dir):
        return None
    prefix, name = parts[-2], parts[-1]
    if not _PREFIX.fullmatch(prefix) or name in (".", ".."):
        return None
    if safe_name(name) != name and not (temp_ok and _TEMP.fullmatch(name)):
        return None
    return prefix, name


@contextlib.contextmanager
def _folder(path: str | Path, *, at: int | None = None, create: bool = False) -> Iterator[int]:
    """A descriptor of the folder ``path`` (relative to the folder ``at``), made if missing with
    ``create``; IndexFormatError if it is a symbolic link or not a folder."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755, dir_fd=at)
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=at)
    except OSError as exc:
        raise IndexFormatError(
            f"{path} is a symbolic link or not a folder; the index's uploads are written only "
            "into its own folders"
        ) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _holds(name: str, folder: int, digest: str) -> bool:
    """Whether ``name`` in ``folder`` is a regular file (not a link) with content ``digest``."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        content = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            content.update(block)
        return content.hexdigest() == digest


def _write(name: str, folder: int, data: bytes) -> None:
    """``data`` as ``name`` in ``folder``: a temp file beside it, fsynced and renamed over it (a
    link or other file there is replaced, never followed)."""
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
    os.fsync(folder)


def store(index_dir: str | Path, name: str | None, data: bytes) -> Stored:
    """Write ``data`` under the index's uploads folder (atomically), in a folder named by its
    content, as ``safe_name(name)``; a file already there is kept only if it holds ``data``."""
    shown = name or "upload"
    digest = hashlib.sha256(data).hexdigest()
    root = uploads_dir(index_dir)
    path = root / digest[:16] / safe_name(name)
    with (
        _folder(root, create=True) as top,
        _folder(path.parent.name, at=top, create=True) as folder,
    ):
        if _holds(path.name, folder, digest):
            return Stored(shown, path, created=False)
        _write(path.name, folder, data)
    return Stored(shown, path, created=True)


def _delete(index_dir: str | Path, path: str, *, temp_ok: bool = False) -> None:
    """Delete the copy at ``path`` if it is one of the index's own (see own_copy; with
    ``temp_ok``, a temp file of one too) and its folders are real ones, and its prefix folder
    when that is left empty."""
    where = own_copy(index_dir, path, temp_ok=temp_ok)
    if where is None:
        return
    prefix, name = where
    with contextlib.suppress(IndexFormatError), _folder(uploads_dir(index_dir)) as top:
        with _folder(prefix, at=top) as folder, contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)
        with contextlib.suppress(OSError):  # not empty: a photo of the same content is kept
            os.rmdir(prefix, dir_fd=top)


def discard(stored: Iterable[Stored], kept: Iterable[str]) -> None:
    """Delete the copies this call created that are not among the ``kept`` paths."""
    keep = set(kept)
    for s in stored:
        if s.created and str(s.path) not in keep:
            _delete(s.path.parents[2], str(s.path))  # INDEX/uploads/<prefix>/<name>


def delete_copies(index_dir: str | Path, items: Iterable[Item]) -> None:
    """Delete the uploads-folder copies of removed items (a photo elsewhere is never touched)."""
    for item in items:
        _delete(index_dir, item.path)


@contextlib.contextmanager
def _pending_lock(index_dir: str | Path, operation: int) -> Iterator[bool]:
    """flock ``operation`` on the uploads folder itself (made if missing); yields whether it
    was granted (a non-blocking request may not be)."""
    with _folder(uploads_dir(index_dir), create=True) as top:
        try:
            fcntl.flock(top, operation)
        except BlockingIOError:
            yield False
            return
        yield True  # released when the folder's descriptor is closed


@contextlib.contextmanager
def pending(index_dir: str | Path) -> Iterator[None]:
    """Held by an enrolment from before it writes its copies until its items are committed
    (or its copies discarded): ``remove_orphans`` leaves the uploads alone meanwhile. Shared:
    enrolments do not wait for each other; a killed one releases it."""
    with _pending_lock(index_dir, fcntl.LOCK_SH):
        yield


def _copies(index_dir: str | Path) -> list[Path]:
    """Every file ``store`` may have written (its temp files included): the regular files in
    the real prefix folders of the index's own uploads folder."""
    root = uploads_dir(index_dir)
    found: list[Path] = []
    with contextlib.suppress(IndexFormatError), _folder(root) as top:
        for prefix in sorted(os.listdir(top)):
            if not _PREFIX.fullmatch(prefix):
                continue
            with contextlib.suppress(IndexFormatError), _folder(prefix, at=top) as folder:
                for name in sorted(os.listdir(folder)):
                    mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
                    if stat.S_ISREG(mode):
                        found.append(root / prefix / name)
    return found


def orphans(index_dir: str | Path, recorded: Iterable[str]) -> list[Path]:
    """The copies in the uploads folder that no item records (``recorded``: the paths the
    records hold), left by an enrolment that was killed or by one still running."""
    if not uploads_dir(index_dir).is_dir():
        return []
    named = set(recorded)
    return [p for p in _copies(index_dir) if str(p) not in named]


def remove_orphans(
    index_dir: str | Path, recorded: Callable[[], Iterable[str]]
) -> list[Path] | None:
    """Delete the copies no item records, read with ``recorded()`` once no enrolment is
    running; None, nothing deleted, while one is (it holds ``pending``)."""
    if not uploads_dir(index_dir).is_dir():
        return []
    with _pending_lock(index_dir, fcntl.LOCK_EX | fcntl.LOCK_NB) as granted:
        if not granted:
            return None
        gone = orphans(index_dir, recorded())
        for path in gone:
            _delete(index_dir, str(path), temp_ok=True)
        return gone
