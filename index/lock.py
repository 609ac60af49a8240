"""The writer lock of an index folder: an exclusive ``fcntl.flock`` on ``INDEX/.lock``."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from index.errors import IndexLockedError, IndexStoreError

LOCK_FILE = ".lock"
DEFAULT_TIMEOUT = 120.0
_POLL = 0.02


class WriterLock:
    """Exclusive between processes (flock) and between threads (an RLock); re-entrant in the
    thread that holds it. Get the one of a folder with ``writer_lock``: every user of a folder in
    a process shares it, so nested use through several IndexStore objects cannot deadlock.

    The lock is the open file description: it goes when the holder closes it or dies, so a
    killed writer never leaves a folder locked. Processes forked while it is held (DataLoader
    workers) close their copy at once (see ``_forget_in_child``).
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._thread_lock = threading.RLock()
        self._fd: int | None = None
        self._depth = 0

    def acquire(self, timeout: float | None = DEFAULT_TIMEOUT) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds (None: forever, 0: not at all).

        True when taken; False when another holder kept it. IndexStoreError when the lock
        file cannot be created or opened (a read-only folder, say).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            if self._depth == 0 and not self._lock_file(deadline):
                self._thread_lock.release()
                return False
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth += 1
        return True

    def release(self) -> None:
        if self._depth == 0:
            raise RuntimeError(f"{self.path} is not held")
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            _held.pop(id(self), None)
            os.close(self._fd)
            self._fd = None
        self._thread_lock.release()

    @contextmanager
    def held(self, timeout: float | None = DEFAULT_TIMEOUT) -> Iterator[None]:
        """Hold the lock for the block; IndexLockedError if another holder keeps it too long."""
        if not self.acquire(timeout):
            raise IndexLockedError(
                f"{self.path.parent} is being written by another process{self.holder()}; "
                f"gave up after waiting {timeout:g} s"
            )
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def if_free(self) -> Iterator[bool]:
        """Whether the lock could be taken without waiting; held for the block if so."""
        free = self.acquire(timeout=0)
        try:
            yield free
        finally:
            if free:
                self.release()

    def holder(self) -> str:
        """' (pid N)' of the last process that took the lock, or ''."""
        try:
            pid = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def _lock_file(self, deadline: float | None) -> bool:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise IndexStoreError(f"cannot open the lock file {self.path}: {exc}") from exc
            try:
                if not _flock(fd, deadline):
                    os.close(fd)
                    return False
                if _same_file(fd, self.path):
                    _note_pid(fd)
                    self._fd = fd
                    _held[id(self)] = self
                    return True
            except BaseException:
                os.close(fd)
                raise
            # The file was removed or replaced while we waited (its folder swapped by
            # build-index): lock the one that is there now.
            os.close(fd)

    def _forget(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._depth = 0
        self._thread_lock = threading.RLock()


def _flock(fd: int, deadline: float | None) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)


def _note_pid(fd: int) -> None:
    """Write our pid into the lock file, for messages; the lock does not depend on it."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


_registry: weakref.WeakValueDictionary[str, WriterLock] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()
_held: weakref.WeakValueDictionary[int, WriterLock] = weakref.WeakValueDictionary()


def writer_lock(folder: str | os.PathLike[str]) -> WriterLock:
    """The writer lock of ``folder`` (an existing folder), shared by its users in this process."""
    key = os.path.realpath(folder)
    with _registry_lock:
        lock = _registry.get(key)
        if lock is None:
            lock = _registry[key] = WriterLock(Path(key))
        return lock


def _forget_in_child() -> None:
    """In a process just forked from a holder: drop the inherited locks, so that they go when
    the parent releases them or dies, not when the last forked worker exits."""
    for lock in list(_held.values()):
        lock._forget()
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)
