"""IndexStore: SQLite records plus a derived FAISS index in one folder; ids are never reused."""

from __future__ import annotations

import copy
import functools
import json
import logging
import operator
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from index import backend
from index.cache import FaissCache, Stale
from index.errors import (
    IndexExistsError,
    IndexStoreError,
    NotAnIndexError,
    VectorError,
)
from index.folder import MANIFEST, OWN_FILES, RECORDS, VECTORS, file_id, is_own, temp_files
from index.fsutil import atomic_write_bytes
from index.live import LiveIndex, merge_due
from index.lock import DEFAULT_TIMEOUT, LOCK_FILE, writer_lock
from index.manifest import Manifest, now_iso, read_manifest, write_manifest
from index.plan import Layout, check_type, choose
from index.records import RecordDB, Row

log = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-3
_OPEN_TRIES = 5
LOAD_AT_MOST = 40_000
"""A base further behind the records than this many changes is rebuilt from them rather than
caught up (a bulk build's end, an index written by something that did not merge)."""

_F = TypeVar("_F", bound=Callable[..., Any])


def _serialised(method: _F) -> _F:
    """Run ``method`` holding the store's mutex: one thread at a time uses its SQLite
    connection and in-memory FAISS index (see IndexStore)."""

    @functools.wraps(method)
    def wrapper(self: IndexStore, *args: Any, **kwargs: Any) -> Any:
        with self._mutex:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


Builder = Callable[[Layout, np.ndarray, np.ndarray], Any]
"""(layout, ids, vectors) -> a FAISS index of that layout holding them (see IndexStore.bulk)."""


@dataclass(frozen=True)
class Hit:
    """One neighbour of a query: score is the cosine similarity, higher is closer."""

    id: int
    score: float
    label: str
    path: str


@dataclass(frozen=True)
class Item:
    """One stored item, without its vector."""

    id: int
    label: str
    path: str
    sha256: str
    added_at: str


def _item(row: Row) -> Item:
    return Item(*row)


def _strings(values: Sequence[str], what: str, n: int) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise TypeError(
            f"{what} must be a sequence of strings, not a single {type(values).__name__}"
        )
    out = list(values)
    if len(out) != n:
        raise VectorError(f"{n} vectors but {len(out)} {what}: give one per vector")
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{what} must be strings, not {type(v).__name__} ({v!r})")
    return [str(v) for v in out]


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _as_ids(ids: Iterable[int]) -> np.ndarray:
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if arr.size == 0:
        return np.empty(0, np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"ids must be a flat sequence of integers, not {arr.dtype} of shape {arr.shape}"
        )
    return arr.astype(np.int64)


class IndexStore:
    """An index folder: ``manifest.json``, ``records.sqlite`` (the truth) and ``vectors.faiss``
    (a cache of it, rebuilt whenever it is missing, stale or altered).

    Get one with ``create`` or ``open``. Every mutating call is committed before it returns.
    Vectors are float32 L2-normalised rows; a search's score is the cosine similarity.

    One store may be shared by threads (a server's requests): a re-entrant mutex lets one thread
    at a time into it, for one call or for a whole ``writing()`` block (every write is one), so
    FAISS is never searched while it is being changed, and a look-up followed by an add inside
    ``writing()`` sees no other thread's write in between.
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        db: RecordDB,
        *,
        new: bool = False,
        lazy: bool = False,
        lock_timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self._mutex = threading.RLock()
        self._root = root
        self._manifest = manifest
        self._db: RecordDB | None = db
        self._records_id = file_id(root / RECORDS)
        self._lock = writer_lock(root)
        self._lock_timeout = lock_timeout
        self._write_depth = 0
        self._bulk_depth = 0
        self._cache_behind = False
        self._builder: Builder | None = None
        self._index: LiveIndex | None = None
        self._cache = FaissCache(root)
        self._rejected: str | None = None  # why the base read last could not be used (damaged)
        self._generation = -1
        if new:
            self._rebuild_memory()
            self._save_cache(self._live(), self._generation)
        elif not lazy:
            self._load()

    # --- life cycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        dim: int,
        model: dict[str, Any],
        *,
        overwrite: bool = False,
        lock_timeout: float | None = DEFAULT_TIMEOUT,
        index_type: str = "auto",
        files: Mapping[str, bytes] | None = None,
    ) -> IndexStore:
        """A new empty index at ``path`` (created with its parents), under the writer lock.

        Refused (IndexExistsError) where an index already is unless ``overwrite``, and always where
        the folder holds other files. ``overwrite`` removes only the files of the old index.
        ``index_type`` ("auto", "flat" or "ivf", see ``index.plan``) is kept in the manifest; the
        FAISS index follows it as the gallery grows or shrinks. ``files`` (name -> bytes) are
        written beside the index before its manifest (e.g. the network its model entry names),
        so that a folder holding the manifest holds them too; leftovers of an interrupted
        create count as the index's own files.
        """
        check_type(index_type)
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive integer, not {dim!r}")
        if not isinstance(model, dict):
            raise TypeError(f"model must be a dict, not {type(model).__name__}")
        try:
            json.dumps(model, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model must be JSON-serialisable: {exc}") from exc
        files = dict(files or {})
        for name in files:
            if name in OWN_FILES or name in ("", ".", "..", LOCK_FILE) or Path(name).name != name:
                raise ValueError(f"{name!r} cannot be a file beside an index")
        root = Path(path)
        cls._check_for_create(root, overwrite, files)
        root.mkdir(parents=True, exist_ok=True)
        with writer_lock(root).held(lock_timeout):
            own = cls._check_for_create(root, overwrite, files)
            for entry in own:
                entry.unlink(missing_ok=True)
            if own:
                log.info("removed the index files in %s to create a new index", root)
            manifest = Manifest.new(dim, copy.deepcopy(model), index_type)
            db = RecordDB.create(root / RECORDS)
            try:
                store = cls(root, manifest, db, new=True, lock_timeout=lock_timeout)
                for name, data in files.items():
                    atomic_write_bytes(root / name, data)
                write_manifest(root / MANIFEST, manifest)
            except BaseException:
                db.close()
                for entry in root.iterdir():
                    if is_own(entry, files):
                        entry.unlink(missing_ok=True)
                raise
        log.info("created index %s (dim %d)", root, dim)
        return store

    @staticmethod
    def _check_for_create(root: Path, overwrite: bool, extra: Collection[str] = ()) -> list[Path]:
        """The files of an old index (or of an interrupted create with ``extra`` files) to
        remove before creating one at ``root``, or IndexExistsError if none may be created
        there."""
        if not root.exists():
            return []
        if not root.is_dir():
            raise IndexExistsError(
                f"{root} exists and is not a folder; cannot create an index there"
            )
        entries = sorted(e for e in root.iterdir() if e.name != LOCK_FILE)
        own = [e for e in entries if is_own(e, extra)]
        foreign = [e.name for e in entries if not is_own(e, extra)]
        holds_index = (root / MANIFEST).is_file()
        if not holds_index and foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise IndexExistsError(
                f"{root} is not empty and is not an index (it holds {shown}); "
                "refusing to create an index there"
            )
        if own and not overwrite:
            what = "an index" if holds_index else "an incomplete index"
            raise IndexExistsError(
                f"{root} already holds {what}; pass overwrite=True to replace it"
            )
        return own

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float | None = DEFAULT_TIMEOUT,
        lazy: bool = False,
    ) -> IndexStore:
        """The index at ``path``. NotAnIndexError if there is none, IndexFormatError if it is
        unreadable or newer than this code. With ``lazy``, the FAISS index is read (or rebuilt)
        at the first search or write, not now: what reads only the records (counts, look-ups)
        never loads the vectors.

        Opening never waits for writers: the records are read in a snapshot (SQLite WAL). A
        write waits at most ``lock_timeout`` seconds (None: forever) for the writer lock.
        """
        root = Path(path)
        if not root.exists():
            raise NotAnIndexError(f"{root} is not an index: the folder does not exist")
        if not root.is_dir():
            raise NotAnIndexError(f"{root} is not an index: it is not a folder")
        missing = [name for name in (MANIFEST, RECORDS) if not (root / name).is_file()]
        if missing:
            raise NotAnIndexError(f"{root} is not an index: it lacks {' and '.join(missing)}")
        for _ in range(_OPEN_TRIES):
            before = (file_id(root / MANIFEST), file_id(root / RECORDS))
            manifest = read_manifest(root / MANIFEST)
            db = RecordDB.open(root / RECORDS)
            if (file_id(root / MANIFEST), file_id(root / RECORDS)) == before:
                break
            # build-index swapped a new index in between: read that one whole
            db.close()
        else:
            raise IndexStoreError(f"{root} kept being replaced while it was opened; try again")
        try:
            return cls(root, manifest, db, lazy=lazy, lock_timeout=lock_timeout)
        except BaseException:
            db.close()
            raise

    @staticmethod
    def is_index(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a folder holding an index's manifest and records."""
        root = Path(path)
        return (root / MANIFEST).is_file() and (root / RECORDS).is_file()

    @_serialised
    def close(self) -> None:
        """Release the database; safe to call twice. Nothing is lost without it."""
        if self._db is not None:
            self._db.close()
            self._db = None
            self._index = None

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IndexStore({str(self._root)!r}, dim={self.dim})"

    # --- properties -------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def model(self) -> dict[str, Any]:
        """A copy of the model entry the index was created with."""
        return copy.deepcopy(self._manifest.model)

    @property
    def path(self) -> Path:
        return self._root

    @property
    @_serialised
    def layout(self) -> Layout:
        """The FAISS index in use: its type and, for IVF, its lists and lists searched."""
        self._sync()
        return self._live().layout

    @_serialised
    def __len__(self) -> int:
        return self._records().count()

    # --- the FAISS cache --------------------------------------------------------------------

    def _records(self) -> RecordDB:
        if self._db is None:
            raise IndexStoreError(f"the index store at {self._root} is closed")
        return self._db

    def _load(self, *, persist: bool = True) -> bool:
        """Make the in-memory index match the records: the FAISS base plus the change log
        after it when they can be used, else rebuilt from SQLite (and, with ``persist``, the
        base rewritten if this process may). Returns whether it was rebuilt."""
        db = self._records()
        self._rejected = None
        with db.reading():
            generation = db.generation
            live = self._from_base(generation)
        if live is not None:
            self._index, self._generation = live, generation
            return False
        n = self._rebuild_memory()
        log.info("rebuilt %s from %d records", self._root / VECTORS, n)
        if self._rejected is not None:
            log.warning("%s; rebuilt it from the records", self._rejected)
        if persist:
            self._persist_cache()
        return True

    def _from_base(self, generation: int) -> LiveIndex | None:
        """Inside a read snapshot at ``generation``: the base plus the changes logged since, if
        the base is this store's, intact, not ahead of the records, followed by a whole log,
        and of the layout the count calls for; else None, the reason logged."""
        if self._replaced():
            log.info("%s now holds another index; rebuilding from the records opened", self._root)
            return None
        try:
            base = self._cache.read(self.dim)
        except Stale as exc:
            if exc.damaged:  # warned about once the rebuild has worked: the records may be at fault
                self._rejected = str(exc)
            else:
                log.info("%s; rebuilding it from the records", exc)
            return None
        if self._replaced():  # swapped in while the base was read: the base may be the new one's
            log.info("%s now holds another index; rebuilding from the records opened", self._root)
            return None
        db = self._records()
        if base.generation > generation:
            log.warning(
                "%s claims generation %d, the records are at %d; rebuilding it",
                self._cache.sidecar,
                base.generation,
                generation,
            )
            return None
        rows, complete = db.logged_since(base.generation)
        if not complete:
            log.info(
                "%s is of generation %d and the records' change log does not reach back to it; "
                "rebuilding it",
                self._cache.vectors,
                base.generation,
            )
            return None
        if rows > LOAD_AT_MOST:
            log.info(
                "%s is %d changes behind the records; rebuilding it", self._cache.vectors, rows
            )
            return None
        live = LiveIndex(base.index, base.generation)
        if not self._catch_up(live, base.generation):
            return None
        if not self._fits(live.layout, live.ntotal):
            log.info(
                "%s holds the layout %s, not the one index type %r wants for %d vectors; "
                "rebuilding it",
                self._cache.vectors,
                live.layout.to_json(),
                self._manifest.index_type,
                live.ntotal,
            )
            return None
        return live

    def _catch_up(self, live: LiveIndex, since: int) -> bool:
        """Inside a read snapshot: apply to ``live`` (the index of generation ``since``) what
        the log says was written after it. False, having changed nothing, if the log does not
        reach back to ``since`` or does not fit ``live``."""
        db = self._records()
        changes = db.changes_since(since)
        if not changes.complete:
            return False
        added_ids, added = db.vectors_of(changes.added, self.dim)
        if added_ids.size != changes.added.size:
            log.warning("%s: the change log names items that are gone", db.path)
            return False
        if changes.removed.size:
            live.remove(changes.removed)
        if added_ids.size:
            live.add(added_ids, added)
        return True

    def _rebuild_memory(self) -> int:
        """Build the in-memory FAISS index from one snapshot of the records, of the layout their
        number calls for (the current one while it fits); returns its size. The records are
        read a batch at a time, unless a bulk build passed a builder, which takes them all."""
        current = None if self._index is None else self._index.layout
        self._index, self._generation = None, -1
        db = self._records()
        if self._builder is not None:
            generation, ids, vectors = db.snapshot(self.dim)
            layout = choose(self._manifest.index_type, len(ids), current, self.dim)
            index = self._builder(layout, ids, vectors)
        else:
            with db.reading():
                generation = db.generation
                ids = db.ids()
                layout = choose(self._manifest.index_type, len(ids), current, self.dim)
                if layout.type == "flat":
                    index = backend.new_flat_index(self.dim)
                else:
                    _, sample = db.vectors_of(
                        ids[backend.training_rows(layout, len(ids))], self.dim
                    )
                    index = backend.trained_index(layout, sample)
                for batch_ids, vectors in db.iter_vectors(self.dim):
                    backend.add_with_ids(index, vectors, batch_ids)
        self._index = LiveIndex(index, generation)
        self._generation = generation
        return len(ids)

    def _fits(self, layout: Layout, count: int) -> bool:
        """Whether ``layout`` is the one the manifest's type wants for ``count`` vectors."""
        return choose(self._manifest.index_type, count, layout, self.dim) == layout

    def _maintain(self, *, save: bool = False) -> None:
        """With the writer lock held, after a write: rebuild the index from the records if their
        number now calls for another layout (flat to compact past the auto threshold, new
        lists), or rewrite the base with the changes since it once they are many; then save it.
        Otherwise nothing is written (unless ``save``): the records' change log carries the
        write."""
        live = self._live()
        if not self._fits(live.layout, live.ntotal):
            old = live.layout
            n = self._rebuild_memory()
            log.info(
                "rebuilt %s for %d vectors: %s, was %s",
                self._root / VECTORS,
                n,
                self._live().layout,
                old,
            )
        elif merge_due(live.changes, backend.ntotal(live.base)):
            self._index = LiveIndex(live.materialise(), self._generation)
            log.info("merged %d changes into %s", live.changes, self._root / VECTORS)
        elif not save:
            return
        self._save_cache(self._live(), self._generation)

    def _persist_cache(self) -> None:
        """Save the in-memory index as the base, if it is still current and the writer lock can
        be had without waiting. Readers never wait: when a writer holds the lock, the writer
        saves it itself. Base writes are thus never concurrent, so the FAISS file and its
        sidecar are always written as a pair."""
        try:
            if not self._lock.acquire(timeout=0):
                return
        except IndexStoreError as exc:
            log.info("not rewriting %s: %s", self._root / VECTORS, exc)
            return
        try:
            if self._replaced():
                return
            if self._write_depth == 0:
                self._remove_stale_temps()
            if self._index is not None and self._records().generation == self._generation:
                self._save_cache(self._index, self._generation)
        finally:
            self._lock.release()

    @property
    def replaced(self) -> bool:
        """Whether the folder now holds another index than the one opened (``build-index
        --force`` swapped one in): this store keeps reading the records it opened, and refuses
        to write."""
        return self._replaced()

    def _replaced(self) -> bool:
        """Whether the folder now holds another index than the one this store opened (swapped
        in by ``build-index --force``): its files are then not this store's to read or write."""
        return file_id(self._root / RECORDS) != self._records_id

    def _save_cache(self, live: LiveIndex, generation: int) -> None:
        """Save ``live`` as the base of ``generation`` (written from memory when it holds changes
        since its base) and drop the log it holds; a failure only costs a rebuild at the next
        open."""
        index = live.base if not live.changes else live.materialise()
        try:
            self._cache.write(index, generation)
            self._records().prune_log(generation)
        except (OSError, RuntimeError, IndexStoreError) as exc:
            log.warning(
                "could not write %s (%s); it will be rebuilt when next opened",
                self._cache.vectors,
                exc,
            )

    def _sync(self, *, persist: bool = True) -> bool:
        """Follow what other connections wrote since this one last looked: the changes logged
        since applied in memory, or (when the log no longer reaches back, or they have grown
        past a merge) the base read again. Returns whether the index was rebuilt from the
        records (see ``_load``)."""
        db = self._records()
        if self._index is None:
            return self._load(persist=persist)
        with db.reading():
            generation = db.generation
            if generation == self._generation:
                return False
            live = self._index
            if not self._replaced() and self._catch_up(live, self._generation):
                self._generation = generation
                if not merge_due(live.changes, backend.ntotal(live.base)):
                    return False
            return self._load(persist=persist)

    def _live(self) -> LiveIndex:
        if self._index is None:
            raise IndexStoreError(f"the index at {self._root} is not loaded")
        return self._index

    def _remove_stale_temps(self) -> None:
        """With the writer lock held: temp files are left by killed writers (every writer of
        temp files holds the lock), so they go."""
        for entry in temp_files(self._root):
            entry.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted write", entry)

    def rebuild_cache(self) -> int:
        """Rebuild the FAISS file and its sidecar from the records now, under the writer lock;
        returns the number of vectors. IndexStoreError if they cannot be written."""
        with self.writing():
            n = self._rebuild_memory()
            try:
                self._cache.write(self._live().base, self._generation)
                self._records().prune_log(self._generation)
            except (OSError, RuntimeError) as exc:
                raise IndexStoreError(f"could not write {self._root / VECTORS}: {exc}") from exc
        return n

    # --- the writer lock --------------------------------------------------------------------

    @contextmanager
    def writing(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the index's writer lock (``INDEX/.lock``) for the block: no other process or
        thread writes meanwhile. Every mutating method takes it itself; hold it around several
        calls that must see no other writer in between (a look-up, then an add).

        Waits at most ``timeout`` seconds (default: the store's ``lock_timeout``), else
        IndexLockedError. On entry, temp files left by killed writers are removed and the
        in-memory index catches up with the records. IndexStoreError if the folder now holds
        another index than the one opened (replaced by ``build-index --force``).
        """
        self._records()
        with self._mutex, self._lock.held(self._lock_timeout if timeout is None else timeout):
            if self._write_depth == 0:
                if self._replaced():
                    raise IndexStoreError(
                        f"the index at {self._root} was replaced by another process while this "
                        "one was using it; run the command again"
                    )
                self._remove_stale_temps()
                self._sync()
            self._write_depth += 1
            try:
                yield
            finally:
                self._write_depth -= 1

    @contextmanager
    def if_no_writer(self) -> Iterator[bool]:
        """For a reader that keeps a file derived from the records: True when this thread now
        holds the store as a writer does (its mutex, then its writer lock), so that no commit
        happens in the block; False at once when another thread or process holds either (the
        caller then skips keeping its file). It never waits: a reader that waited for the
        mutex while holding the writer lock would deadlock a writer that holds the mutex and
        waits for the lock."""
        if not self._mutex.acquire(blocking=False):
            yield False
            return
        try:
            with self._lock.if_free() as free:
                yield free
        finally:
            self._mutex.release()

    @contextmanager
    def bulk(self, build: Builder | None = None) -> Iterator[None]:
        """Hold the writer lock for many writes in a row and bring the FAISS base up to date
        once, when the block ends (build-index fills its index this way): the in-memory index
        is dropped meanwhile, and rebuilt from the records at the end when the writes were many.
        Every write is still committed when it returns; if the process dies inside the block,
        the base is merely behind and caught up or rebuilt on the next open. ``build``
        (layout, ids, vectors) -> FAISS index, if given, makes the index that the end of the
        block builds from the records (the Ray build adds to IVF lists in parallel this way)."""
        with self.writing():
            self._bulk_depth += 1
            try:
                yield
            finally:
                self._bulk_depth -= 1
            if not self._bulk_depth and self._cache_behind:
                self._builder = build
                try:
                    if self._index is None:
                        self._load(persist=False)
                    self._maintain(save=True)
                finally:
                    self._builder = None
                self._cache_behind = False

    def _apply(self, generation: int, change: Callable[[LiveIndex], object]) -> None:
        """Follow a committed write: apply it in memory when it is the only one since the last
        sync, else catch up with the records; then, unless in ``bulk``, rebuild or merge the
        base if it is due (``_maintain``). In ``bulk`` the in-memory index is dropped."""
        if self._bulk_depth:
            self._index, self._generation = None, -1
            self._cache_behind = True
            return
        if self._index is None or generation != self._generation + 1:
            self._sync()
        else:
            try:
                change(self._live())
            except BaseException:
                self._index, self._generation = None, -1
                raise
            self._generation = generation
        self._maintain()

    # --- writes -----------------------------------------------------------------------------

    def _check_vectors(self, vectors: ArrayLike, *, unit: bool) -> np.ndarray:
        rows = backend.as_float32_rows(vectors)
        if rows.shape[1] != self.dim:
            raise VectorError(
                f"vectors have {rows.shape[1]} dimensions, but the index at {self._root} holds "
                f"{self.dim}-d vectors"
            )
        if unit and rows.shape[0]:
            norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
            off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
            if off.size:
                raise VectorError(
                    f"vectors must be L2-normalised (norm 1 within {NORM_TOLERANCE}): {off.size} "
                    f"row(s) are not, e.g. row {off[0]} has norm {norms[off[0]]:.6g}"
                )
        return rows

    def add(
        self,
        vectors: ArrayLike,
        labels: Sequence[str],
        paths: Sequence[str],
        sha256s: Sequence[str],
    ) -> np.ndarray:
        """Add one item per row of ``vectors`` (n, dim), unit rows, in one transaction.

        Returns the new ids (int64, increasing, never used before). Nothing changes on error.
        """
        db = self._records()
        rows = self._check_vectors(vectors, unit=True)
        n = rows.shape[0]
        labels = _strings(labels, "labels", n)
        paths = _strings(paths, "paths", n)
        sha256s = _strings(sha256s, "sha256s", n)
        if n == 0:
            return np.empty(0, np.int64)
        with self.writing():
            ids, generation = db.insert(labels, paths, sha256s, rows, now_iso())
            self._apply(generation, lambda live: live.add(ids, rows))
        log.debug("added %d items to %s", n, self._root)
        return ids

    def remove_ids(self, ids: Iterable[int]) -> int:
        """Remove the items with these ids; returns how many existed."""
        db = self._records()
        wanted = _as_ids(ids)
        if not wanted.size:
            return 0
        with self.writing():
            gone, generation = db.delete_ids(wanted.tolist())
            if gone.size:
                self._apply(generation, lambda live: live.remove(gone))
                log.debug("removed %d items from %s", gone.size, self._root)
        return int(gone.size)

    def remove_label(self, label: str) -> list[Item]:
        """Remove every item of ``label``; returns them, by id."""
        if not isinstance(label, str):
            raise TypeError(f"label must be a string, not {type(label).__name__}")
        return self._remove_where("label", label)

    def remove_path(self, path: str) -> list[Item]:
        """Remove the item(s) recorded with exactly this path; returns them, by id."""
        if not isinstance(path, str):
            raise TypeError(f"path must be a string, not {type(path).__name__}")
        return self._remove_where("path", path)

    def _remove_where(self, column: str, value: str) -> list[Item]:
        db = self._records()
        with self.writing():
            rows, generation = db.delete_where(column, value)
            if rows:
                ids = np.array([r.id for r in rows], dtype=np.int64)
                self._apply(generation, lambda live: live.remove(ids))
                log.debug("removed %d items from %s", ids.size, self._root)
        return [_item(r) for r in rows]

    # --- reads ------------------------------------------------------------------------------

    @_serialised
    def search(self, vectors: ArrayLike, k: int) -> list[list[Hit]]:
        """The at most min(k, len) nearest items of each query row, best (highest score) first.

        Every score is the cosine of the query with the item's vector in the records: FAISS
        only proposes candidates (for a compact index, its ``rerank`` best codes), which are
        scored exactly here."""
        k = operator.index(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        db = self._records()
        queries = self._check_vectors(vectors, unit=False)
        if queries.shape[0] == 0:
            return []
        # One snapshot for the FAISS index and the items: an item removed meanwhile by another
        # process is either in both or in neither.
        with db.reading():
            rebuilt = self._sync(persist=False)
            candidates = self._live().candidates(queries, k)
            ids, found, names = db.hits(np.concatenate(candidates), self.dim)
        if rebuilt:
            self._persist_cache()
        return [
            self._best(q, c, ids, found, names, k) for q, c in zip(queries, candidates, strict=True)
        ]

    @staticmethod
    def _best(
        query: np.ndarray,
        candidates: np.ndarray,
        ids: np.ndarray,
        vectors: np.ndarray,
        names: list[tuple[str, str]],
        k: int,
    ) -> list[Hit]:
        """The best ``k`` of ``candidates`` for ``query``, scored with their vectors (``ids``,
        sorted, ``vectors`` and ``names`` as ``RecordDB.hits`` gives them); candidates the
        records no longer hold (removed, or a folder swapped under a reader) are left out."""
        if not ids.size:
            return []
        at = np.searchsorted(ids, candidates)
        at = at[(at < ids.size) & (ids[np.minimum(at, ids.size - 1)] == candidates)]
        scores = vectors[at] @ query
        order = np.lexsort((ids[at], -scores))[:k]
        return [Hit(int(ids[at[j]]), float(scores[j]), *names[at[j]]) for j in order]

    @_serialised
    def note(self, key: str) -> Any:
        """The JSON value kept with the records under ``key`` (see set_note), or None; None too
        when what is kept there is not JSON (a note is derived data: its writer makes it anew)."""
        text = self._records().note(key)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            log.warning("%s: the note %r is not JSON; ignoring it", self._root / RECORDS, key)
            return None

    def set_note(self, key: str, value: Any) -> None:
        """Keep a JSON-serialisable ``value`` with the records under ``key`` (e.g. what the ML
        side derived from the gallery), under the writer lock; committed before it returns."""
        text = json.dumps(value, allow_nan=False)
        with self.writing():
            self._records().set_note(key, text)

    @_serialised
    def find_sha256(self, sha256s: Iterable[str]) -> dict[str, Item]:
        """The item holding each of these content hashes that is present (the oldest if several)."""
        if isinstance(sha256s, (str, bytes)):
            raise TypeError("sha256s must be an iterable of strings, not a single string")
        return {sha: _item(row) for sha, row in self._records().find_sha256(sha256s).items()}

    @_serialised
    def label_counts(self) -> dict[str, int]:
        """Number of items per label, sorted by label."""
        return self._records().label_counts()

    @_serialised
    def items(self, ids: Iterable[int] | None = None) -> list[Item]:
        """Every item in id order, or the items with ``ids`` in that order (unknown ids skipped)."""
        db = self._records()
        if ids is None:
            return [_item(row) for row in db.rows()]
        if not isinstance(ids, np.ndarray):  # an int beyond int64 is no id: skipped, as unknown
            ids = [i for i in ids if not (isinstance(i, int) and not _INT64_MIN <= i <= _INT64_MAX)]
        return [_item(row) for row in db.rows(_as_ids(ids).tolist())]

    @_serialised
    def vectors(self, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, dim)) of every item, or of the items with
        ``ids`` that exist, in id order, from the records."""
        wanted = None if ids is None else _as_ids(ids).tolist()
        return self._records().all_vectors(self.dim, wanted)

    @_serialised
    def labelled_vectors(self) -> tuple[list[Item], np.ndarray]:
        """Every item and its vector (rows in the same order, by id), read in one snapshot."""
        db = self._records()
        with db.reading():
            items = [_item(row) for row in db.rows()]
            _, vectors = db.all_vectors(self.dim)
        return items, vectors

    @_serialised
    def scan(self, visit: Callable[[np.ndarray, list[str], np.ndarray], object]) -> int:
        """Hand every item's (ids, labels, vectors) to ``visit``, a batch of a few thousand at a
        time in id order, from one snapshot of the records; returns that snapshot's generation.
        Memory stays that of one batch, whatever the size of the gallery (a million 1280-d
        vectors are 5 GB). The store is busy meanwhile: other threads wait."""
        db = self._records()
        with db.reading():
            generation = db.generation
            for ids, labels, vectors in db.iter_labelled(self.dim):
                visit(ids, labels, vectors)
        return generation

    @_serialised
    def find(self, *, label: str | None = None, path: str | None = None) -> list[Item]:
        """The items of ``label``, or recorded with exactly ``path``, by id."""
        if (label is None) == (path is None):
            raise ValueError("give exactly one of label or path")
        column, value = ("label", label) if label is not None else ("path", path)
        return [_item(row) for row in self._records().find(column, str(value))]

    @property
    @_serialised
    def generation(self) -> int:
        """How many writes the records have committed (moves whenever the items change)."""
        return self._records().generation
