"""Crash-safe file writes (a temp file beside the target, fsync, rename), folder swaps, hashing."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """How the temp files written on the way to file ``name`` begin."""
    return f".{name}."


def is_temp_of(entry: str, name: str) -> bool:
    """Whether ``entry`` is a (possibly left-over) temp file of file ``name``."""
    return entry.startswith(temp_prefix(name)) and entry.endswith(TEMP_SUFFIX)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A new empty temp file beside ``target``; once the block has filled it without error it
    is fsynced and renamed onto ``target``, otherwise removed. ``target`` is never half-written."""
    target = Path(target)
    tmp = target.parent / f"{temp_prefix(target.name)}{secrets.token_hex(8)}{TEMP_SUFFIX}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``target`` with ``data`` so that a crash leaves either the old or the new file."""
    with replacing(target) as tmp:
        tmp.write_bytes(data)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2() -> Any:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


_renameat2 = _load_renameat2()


def aside_name(path: Path) -> Path:
    """Where ``exchange`` parks ``path`` when it has to swap by renames."""
    return path.parent / f".{path.name}.replaced"


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``): a
    reader of either path sees the old or the new entry, never none. Where the system cannot,
    by three renames, during which ``b`` is briefly missing (parked at ``aside_name(b)``)."""
    a, b = Path(a), Path(b)
    if _renameat2 is not None:
        done = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if done == 0:
            _fsync_dir(b.parent)
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(a), None, str(b))
    aside = aside_name(b)
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)
    _fsync_dir(b.parent)


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular(mode: int) -> str | None:
    """None for the ``st_mode`` of a regular file, else why the file is not one (the words
    ``not a regular file`` and what it is)."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "of another kind")
    return f"not a regular file ({kind})"


class NotRegularFileError(OSError):
    """A path that names a FIFO, a device, a socket or a folder where a file was expected;
    ``why`` says which."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.why = why


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (after symbolic links), else
    NotRegularFileError, at once: a FIFO is opened without waiting for a writer, and a device
    is never read (``/dev/zero`` would never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        why = not_regular(os.fstat(fd).st_mode)
        if why is not None:
            raise NotRegularFileError(os.fsdecode(path), why)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content; NotRegularFileError for anything but a regular file."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
