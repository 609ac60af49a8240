"""Crash-safe file writes (a temp file beside the target, fsync, rename), folder swaps, hashing."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
