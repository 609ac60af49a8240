"""SQLite records of an index, its source of truth: items with their vectors, a generation, and
the log of which ids each generation added or removed (kept in the same transaction)."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from index.errors import IndexFormatError, IndexLockedError, IndexStoreError

log = logging.getLogger(__name__)

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    added_at TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX items_label ON items(label);
CREATE INDEX items_sha256 ON items(sha256);
CREATE INDEX items_path ON items(path);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta(key, value) VALUES ('generation', '0');
COMMIT;
"""

# The change log: each write adds one row per id it added or removed, under the generation it
# commits, so that a FAISS index saved at generation G plus the rows after G is the index of
# now. Created by the first write of an index made before it existed.
_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    generation INTEGER NOT NULL,
    id INTEGER NOT NULL,
    op TEXT NOT NULL,
    PRIMARY KEY (generation, id)
) WITHOUT ROWID
"""
ADDED, REMOVED = "add", "remove"

# (name, declared type, NOT NULL, primary key) of each column, as PRAGMA table_info gives them.
_COLUMNS = {
    "items": [
        ("id", "INTEGER", 0, 1),
        ("label", "TEXT", 1, 0),
        ("path", "TEXT", 1, 0),
        ("sha256", "TEXT", 1, 0),
        ("added_at", "TEXT", 1, 0),
        ("vector", "BLOB", 1, 0),
    ],
    "meta": [("key", "TEXT", 0, 1), ("value", "TEXT", 0, 0)],
}
_LOG_COLUMNS = [
    ("generation", "INTEGER", 1, 1),
    ("id", "INTEGER", 1, 2),
    ("op", "TEXT", 1, 0),
]

# Stays below SQLITE_MAX_VARIABLE_NUMBER of every SQLite build (999 before 3.32).
_CHUNK = 500
_FETCH = 4096

_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """Turn SQLite's errors inside ``method`` into the index's typed errors, naming the file:
    a damaged or foreign database file must give a clear message, never a traceback."""

    @functools.wraps(method)
    def wrapper(self: RecordDB, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from exc

    return wrapper  # type: ignore[return-value]


class Audit(NamedTuple):
    """What ``RecordDB.audit`` found: SQLite's own verdict, and every item read in one snapshot.

    ``bad`` maps a kind of fault to the ids of the items that have it: ``type`` (a label, path,
    sha256 or time stored as other than text), ``length`` (a vector of the wrong byte length),
    ``finite`` (NaN or infinity), ``norm`` (not of norm 1 within the tolerance).
    """

    damage: list[str]
    generation: int
    ids: np.ndarray
    vectors: np.ndarray
    labels: int
    bad: dict[str, list[int]]


class Changes(NamedTuple):
    """What the writes after a generation did, from the change log: ``added`` the ids added
    since and still present, ``removed`` the ids present then and removed since (each sorted
    int64). ``complete`` is False when the log lacks a generation in between (pruned after the
    FAISS index was saved at a later generation, or written by a version that kept no log): the
    ids are then not to be relied on."""

    added: np.ndarray
    removed: np.ndarray
    complete: bool

    @property
    def total(self) -> int:
        """Ids added plus ids removed."""
        return int(self.added.size + self.removed.size)


class Row(NamedTuple):
    """One item as stored, without its vector."""

    id: int
    label: str
    path: str
    sha256: str
    added_at: str


# Cast, so that a value stored with another type in a tampered file still reads as text.
_ROW_COLUMNS = (
    "id, CAST(label AS TEXT), CAST(path AS TEXT), CAST(sha256 AS TEXT), CAST(added_at AS TEXT)"
)
_INSERT = "INSERT INTO items(label, path, sha256, added_at, vector) VALUES (?, ?, ?, ?, ?)"


def _as_text(value: object) -> str:
    """A value stored in a text column read as SQLite's CAST(value AS TEXT) reads it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return str(value)


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class RecordDB:
    """``records.sqlite``: every write is one transaction that also bumps ``generation``.

    Writers return the ids they touched with the generation their transaction committed, so a
    caller can tell whether another connection wrote in between.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> RecordDB:
        """A new database with the schema; the file must not exist."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} already exists")
        db = cls(cls._connect(str(path), uri=False), path)
        try:
            db._conn.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RecordDB:
        """An existing database, checked for the schema. IndexFormatError if it is not one."""
        path = Path(path)
        uri = path.resolve().as_uri() + "?mode=rw"
        try:
            db = cls(cls._connect(uri, uri=True), path)
        except sqlite3.Error as exc:
            raise IndexFormatError(f"{path} is not a readable index database: {exc}") from exc
        try:
            db._check_schema()
        except BaseException:
            db.close()
            raise
        return db

    def error(self, exc: sqlite3.Error) -> IndexStoreError:
        """The typed error for an SQLite error on this database."""
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in str(exc) or "busy" in str(exc):
                return IndexLockedError(f"{self.path} is busy: {exc}")
            return IndexStoreError(f"{self.path} cannot be read or written: {exc}")
        return IndexFormatError(f"{self.path} is damaged or is not an index database: {exc}")

    @staticmethod
    def _connect(target: str, *, uri: bool) -> sqlite3.Connection:
        # Any thread may use the connection; IndexStore lets one thread at a time do so.
        conn = sqlite3.connect(
            target, uri=uri, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: SQLite kept journal mode %s instead of WAL", target, mode)
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_schema(self) -> None:
        try:
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
            missing = sorted({"items", "meta"} - tables)
            if missing:
                raise IndexFormatError(f"{self.path} lacks the table(s) {', '.join(missing)}")
            for table, expected in _COLUMNS.items():
                found = [
                    (name, str(kind).upper(), notnull, pk)
                    for _, name, kind, notnull, _, pk in self._conn.execute(
                        f"PRAGMA table_info({table})"
                    )
                ]
                if found != expected:
                    names = ", ".join(f"{c[0]} {c[1]}" for c in found)
                    raise IndexFormatError(
                        f"{self.path}: table {table} has the columns ({names}), not those of an "
                        "index database"
                    )
            if "changes" in tables:
                found = [
                    (name, str(kind).upper(), notnull, pk)
                    for _, name, kind, notnull, _, pk in self._conn.execute(
                        "PRAGMA table_info(changes)"
                    )
                ]
                if found != _LOG_COLUMNS:
                    raise IndexFormatError(
                        f"{self.path}: table changes does not have the columns of a change log"
                    )
            if self.generation < 0:
                raise IndexFormatError(f"{self.path} has a negative generation")
        except sqlite3.Error as exc:
            raise IndexFormatError(f"{self.path} is not a readable index database: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("%s: rollback failed; SQLite discards the transaction", self.path)
            raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state, whatever other
        connections commit meanwhile (WAL). Inside another transaction it joins that one."""
        if self._conn.in_transaction:
            yield self._conn
            return
        try:
            self._conn.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from exc
        try:
            yield self._conn
        finally:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.DatabaseError as exc:
                    raise self.error(exc) from exc

    def _bump(self) -> int:
        self._conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
        )
        return self.generation

    def _log(self, generation: int, ids: Sequence[int], op: str) -> None:
        """Inside a write transaction: note that ``generation`` did ``op`` to ``ids``."""
        self._conn.execute(_LOG_SCHEMA)
        self._conn.executemany(
            "INSERT INTO changes(generation, id, op) VALUES (?, ?, ?)",
            [(generation, int(i), op) for i in ids],
        )

    def _has_log(self) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'changes'"
        ).fetchone()
        return row is not None

    @_guarded
    def logged_since(self, generation: int) -> tuple[int, bool]:
        """How many log rows the writes after ``generation`` left, and whether the log holds
        every one of those writes (see Changes.complete): cheap, without reading the rows."""
        with self.reading() as conn:
            now = self.generation
            if generation >= now:
                return 0, generation == now
            if not self._has_log():
                return 0, False
            rows, logged = conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT generation) FROM changes WHERE generation > ?",
                (generation,),
            ).fetchone()
        return int(rows), int(logged) == now - generation

    @_guarded
    def changes_since(self, generation: int) -> Changes:
        """What the writes after ``generation`` did (see Changes), read in one snapshot."""
        empty = np.empty(0, np.int64)
        with self.reading() as conn:
            now = self.generation
            if generation >= now:
                return Changes(empty, empty, generation == now)
            if not self._has_log():
                return Changes(empty, empty, False)
            logged = conn.execute(
                "SELECT COUNT(DISTINCT generation) FROM changes WHERE generation > ?",
                (generation,),
            ).fetchone()[0]
            added: set[int] = set()
            removed: set[int] = set()
            rows = conn.execute(
                "SELECT id, op FROM changes WHERE generation > ? ORDER BY generation, id",
                (generation,),
            )
            known = True
            for i, op in rows:
                if op == ADDED:
                    added.add(i)
                elif op != REMOVED:
                    known = False
                elif i in added:
                    added.discard(i)
                else:
                    removed.add(i)
        return Changes(
            np.array(sorted(added), np.int64),
            np.array(sorted(removed), np.int64),
            known and int(logged) == now - generation,
        )

    @_guarded
    def prune_log(self, generation: int) -> None:
        """Forget the changes up to ``generation`` (a FAISS index saved there holds them), in a
        transaction of its own; the items and the generation do not change."""
        if not self._has_log():
            return
        with self._write() as conn:
            conn.execute("DELETE FROM changes WHERE generation <= ?", (generation,))

    @_guarded
    def log_size(self) -> int:
        """Rows in the change log."""
        if not self._has_log():
            return 0
        return int(self._conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0])

    @property
    @_guarded
    def generation(self) -> int:
        """How many writes were committed; moves whenever the items change."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        try:
            return int(row[0])
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{self.path} has no valid generation in table meta") from exc

    @_guarded
    def note(self, key: str) -> str | None:
        """The text kept under ``key`` in table meta (not the generation), or None."""
        if key == "generation":
            raise ValueError("the generation is not a note")
        row = self._conn.execute("SELECT CAST(value AS TEXT) FROM meta WHERE key = ?", (key,))
        found = row.fetchone()
        return None if found is None else str(found[0])

    @_guarded
    def set_note(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` in table meta, in a transaction of its own; the items and
        the generation do not change."""
        if key == "generation":
            raise ValueError("the generation is not a note")
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @_guarded
    def insert(
        self,
        labels: Sequence[str],
        paths: Sequence[str],
        sha256s: Sequence[str],
        vectors: np.ndarray,
        added_at: str,
    ) -> tuple[np.ndarray, int]:
        """Insert items in one transaction; returns their new ids (int64) and the generation."""
        rows = np.ascontiguousarray(vectors, dtype="<f4")
        with self._write() as conn:
            ids = [
                conn.execute(_INSERT, (label, path, sha, added_at, vec.tobytes())).lastrowid
                for label, path, sha, vec in zip(labels, paths, sha256s, rows, strict=True)
            ]
            generation = self.generation
            if ids:
                generation = self._bump()
                self._log(generation, [int(i) for i in ids if i is not None], ADDED)
        return np.array(ids, dtype=np.int64), generation

    def _delete(self, ids: list[int]) -> tuple[np.ndarray, int]:
        """Inside a write transaction: delete ``ids`` (all known to exist)."""
        self._conn.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in ids])
        generation = self.generation
        if ids:
            generation = self._bump()
            self._log(generation, ids, REMOVED)
        return np.array(sorted(ids), dtype=np.int64), generation

    @_guarded
    def delete_ids(self, ids: Iterable[int]) -> tuple[np.ndarray, int]:
        """Delete the items with these ids; returns the ids that existed and the generation."""
        wanted = sorted({int(i) for i in ids})
        with self._write() as conn:
            found = [
                r[0]
                for chunk in _chunks(wanted)
                for r in conn.execute(
                    f"SELECT id FROM items WHERE id IN ({_marks(len(chunk))})", chunk
                )
            ]
            return self._delete(found)

    @_guarded
    def find(self, column: str, value: str) -> list[Row]:
        """The items whose ``column`` ("label" or "path") is ``value``, by id."""
        if column not in ("label", "path"):
            raise ValueError(f"items are found by label or path, not by {column!r}")
        sql = f"SELECT {_ROW_COLUMNS} FROM items WHERE {column} = ? ORDER BY id"
        return [Row(*r) for r in self._conn.execute(sql, (value,))]

    @_guarded
    def delete_where(self, column: str, value: str) -> tuple[list[Row], int]:
        """Delete every item whose ``column`` ("label" or "path") is ``value``; returns them, by
        id, and the generation."""
        if column not in ("label", "path"):
            raise ValueError(f"items are removed by label or path, not by {column!r}")
        with self._write() as conn:
            sql = f"SELECT {_ROW_COLUMNS} FROM items WHERE {column} = ? ORDER BY id"
            rows = [Row(*r) for r in conn.execute(sql, (value,))]
            _, generation = self._delete([r.id for r in rows])
        return rows, generation

    @_guarded
    def lookup(self, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """(label, path) of each id that exists."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, tuple[str, str]] = {}
        for chunk in _chunks(wanted):
            sql = (
                "SELECT id, CAST(label AS TEXT), CAST(path AS TEXT) FROM items "
                f"WHERE id IN ({_marks(len(chunk))})"
            )
            out.update((i, (label, path)) for i, label, path in self._conn.execute(sql, chunk))
        return out

    def _blob_rows(self, blobs: list[bytes], ids: list[int], dim: int) -> np.ndarray:
        for i, blob in zip(ids, blobs, strict=True):
            if len(blob) != 4 * dim:
                raise IndexFormatError(
                    f"{self.path}: item {i} holds a vector of {len(blob)} bytes, "
                    f"but the index holds {dim}-d float32 vectors ({4 * dim} bytes)"
                )
        if not blobs:
            return np.empty((0, dim), np.float32)
        vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)
        return vectors.astype(np.float32)

    @_guarded
    def vectors_of(self, ids: Iterable[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the items with these ids that exist, in id order."""
        found_ids: list[int] = []
        blobs: list[bytes] = []
        for chunk in _chunks(sorted({int(i) for i in ids})):
            sql = f"SELECT id, CAST(vector AS BLOB) FROM items WHERE id IN ({_marks(len(chunk))})"
            for i, blob in self._conn.execute(sql + " ORDER BY id", chunk):
                found_ids.append(i)
                blobs.append(blob)
        return np.array(found_ids, np.int64), self._blob_rows(blobs, found_ids, dim)

    @_guarded
    def hits(
        self, ids: Iterable[int], dim: int
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        """(ids, vectors, (label, path) of each) of the items with these ids that exist, in id
        order: what a search needs to score its candidates exactly and name them."""
        found_ids: list[int] = []
        blobs: list[bytes] = []
        names: list[tuple[str, str]] = []
        for chunk in _chunks(sorted({int(i) for i in ids})):
            sql = (
                "SELECT id, CAST(label AS TEXT), CAST(path AS TEXT), CAST(vector AS BLOB) "
                f"FROM items WHERE id IN ({_marks(len(chunk))}) ORDER BY id"
            )
            for i, label, path, blob in self._conn.execute(sql, chunk):
                found_ids.append(i)
                names.append((label, path))
                blobs.append(blob)
        return np.array(found_ids, np.int64), self._blob_rows(blobs, found_ids, dim), names

    @_guarded
    def ids(self) -> np.ndarray:
        """Every item's id (int64), in order."""
        cursor = self._conn.execute("SELECT id FROM items ORDER BY id")
        parts = [
            np.array([r[0] for r in batch], np.int64)
            for batch in iter(lambda: cursor.fetchmany(1 << 16), [])
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def iter_vectors(self, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches of (ids, vectors) of every item in id order (call inside ``reading`` for one
        snapshot); IndexFormatError for a vector of the wrong length or not finite."""
        for ids, _, vectors in self.iter_labelled(dim):
            yield ids, vectors

    def iter_labelled(self, dim: int) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """Batches of (ids, labels, vectors) of every item in id order, as ``iter_vectors``."""
        try:
            yield from self._iter_vectors(dim)
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from exc

    @_guarded
    def rows(self, ids: Iterable[int] | None = None) -> list[Row]:
        """Every item by id, or the items with ``ids`` in that order (unknown ids left out)."""
        if ids is None:
            sql = f"SELECT {_ROW_COLUMNS} FROM items ORDER BY id"
            return [Row(*r) for r in self._conn.execute(sql)]
        order = [int(i) for i in ids]
        wanted = sorted(set(order))
        found: dict[int, Row] = {}
        for chunk in _chunks(wanted):
            sql = f"SELECT {_ROW_COLUMNS} FROM items WHERE id IN ({_marks(len(chunk))})"
            found.update((r[0], Row(*r)) for r in self._conn.execute(sql, chunk))
        return [found[i] for i in order if i in found]

    @_guarded
    def find_sha256(self, sha256s: Iterable[str]) -> dict[str, Row]:
        """The item holding each content hash that is present (the oldest if several are)."""
        wanted = sorted(set(sha256s))
        out: dict[str, Row] = {}
        for chunk in _chunks(wanted):
            sql = (
                f"SELECT {_ROW_COLUMNS} FROM items WHERE sha256 IN ({_marks(len(chunk))}) "
                "ORDER BY id"
            )
            for r in self._conn.execute(sql, chunk):
                out.setdefault(r[3], Row(*r))
        return out

    @_guarded
    def label_counts(self) -> dict[str, int]:
        """Number of items per label, sorted by label. Grouped on the column as stored, which
        walks the label index in order (a million items: 0.1 s; grouping on CAST(label AS TEXT)
        sorts them first: 0.4 s), then a label stored as other than text is read as text."""
        counts: dict[str, int] = {}
        for label, n in self._conn.execute("SELECT label, COUNT(*) FROM items GROUP BY label"):
            text = label if isinstance(label, str) else _as_text(label)
            counts[text] = counts.get(text, 0) + int(n)
        return dict(sorted(counts.items()))

    @_guarded
    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    @_guarded
    def generation_and_count(self) -> tuple[int, int]:
        """Both read from the same committed state."""
        with self.reading():
            return self.generation, self.count()

    def _iter_vectors(
        self, dim: int, ids: Sequence[int] | None = None
    ) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """Batches of (ids int64, labels, vectors float32 (b, dim)) in id order (of every item,
        or of those of ``ids`` that exist); IndexFormatError for a vector of the wrong length
        or holding NaN or infinity."""
        batches: Iterable[list[Any]]
        columns = "id, CAST(label AS TEXT), CAST(vector AS BLOB)"
        if ids is None:
            cursor = self._conn.execute(f"SELECT {columns} FROM items ORDER BY id")
            batches = iter(lambda: cursor.fetchmany(_FETCH), [])
        else:
            wanted = sorted({int(i) for i in ids})
            batches = (
                self._conn.execute(
                    f"SELECT {columns} FROM items WHERE id IN ({_marks(len(chunk))}) ORDER BY id",
                    chunk,
                ).fetchall()
                for chunk in _chunks(wanted)
            )
        for batch in batches:
            if not batch:
                continue
            for i, _, blob in batch:
                if len(blob) != 4 * dim:
                    raise IndexFormatError(
                        f"{self.path}: item {i} holds a vector of {len(blob)} bytes, "
                        f"but the index holds {dim}-d float32 vectors ({4 * dim} bytes)"
                    )
            keys = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
            flat = np.frombuffer(b"".join(r[2] for r in batch), dtype="<f4")
            vectors = flat.reshape(len(batch), dim).astype(np.float32)
            finite = np.isfinite(vectors).all(axis=1)
            if not finite.all():
                raise IndexFormatError(
                    f"{self.path}: item {keys[~finite][0]} holds a vector with NaN or infinity"
                )
            yield keys, [r[1] for r in batch], vectors

    @_guarded
    def audit(self, dim: int, norm_tolerance: float) -> Audit:
        """Check the database file (SQLite's quick_check) and every item, in one snapshot; rows
        with a vector of the wrong length read as zeros in ``vectors``."""
        empty = Audit([], -1, np.empty(0, np.int64), np.empty((0, dim), np.float32), 0, {})
        with self.reading() as conn:
            damage = [str(r[0]) for r in conn.execute("PRAGMA quick_check(10)")]
            if damage != ["ok"]:
                return empty._replace(damage=damage)
            bad: dict[str, list[int]] = {"type": [], "length": [], "finite": [], "norm": []}
            id_parts, vector_parts = [], []
            cursor = conn.execute(
                "SELECT id, typeof(label), typeof(path), typeof(sha256), typeof(added_at), "
                "CAST(vector AS BLOB) FROM items ORDER BY id"
            )
            while batch := cursor.fetchmany(_FETCH):
                ids = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
                vectors = np.zeros((len(batch), dim), np.float32)
                whole = np.ones(len(batch), bool)
                for j, (i, *types, blob) in enumerate(batch):
                    if any(t != "text" for t in types):
                        bad["type"].append(i)
                    if len(blob) == 4 * dim:
                        vectors[j] = np.frombuffer(blob, dtype="<f4")
                    else:
                        bad["length"].append(i)
                        whole[j] = False
                finite = np.isfinite(vectors).all(axis=1)
                bad["finite"].extend(ids[~finite].tolist())
                with np.errstate(over="ignore", invalid="ignore"):
                    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
                off = whole & finite & ~(np.abs(norms - 1.0) <= norm_tolerance)
                bad["norm"].extend(ids[off].tolist())
                id_parts.append(ids)
                vector_parts.append(vectors)
            labels = int(conn.execute("SELECT COUNT(DISTINCT label) FROM items").fetchone()[0])
            return Audit(
                damage=[],
                generation=self.generation,
                ids=np.concatenate(id_parts) if id_parts else empty.ids,
                vectors=np.concatenate(vector_parts) if vector_parts else empty.vectors,
                labels=labels,
                bad={kind: ids for kind, ids in bad.items() if ids},
            )

    @_guarded
    def all_vectors(
        self, dim: int, ids: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, dim)) of every item (or of those of ``ids``
        that exist), in id order."""
        batches = list(self._iter_vectors(dim, ids))
        if not batches:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32)
        return (
            np.concatenate([ids for ids, _, _ in batches]),
            np.concatenate([vecs for _, _, vecs in batches]),
        )

    @_guarded
    def snapshot(self, dim: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(generation, ids, vectors) read from the same committed state."""
        with self.reading():
            return (self.generation, *self.all_vectors(dim))
