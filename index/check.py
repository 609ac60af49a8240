"""Verify an index folder (manifest, records, FAISS file, sidecar agree) and repair its cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index import backend
from index.cache import read_sidecar, token_of
from index.errors import IndexFormatError, IndexLockedError, IndexStoreError, NotAnIndexError
from index.folder import MANIFEST, RECORDS, SIDECAR, VECTORS, temp_files
from index.fsutil import sha256_file
from index.lock import DEFAULT_TIMEOUT, writer_lock
from index.manifest import Manifest, read_manifest
from index.plan import choose
from index.records import Audit, Changes, RecordDB
from index.store import NORM_TOLERANCE, IndexStore

_FAULTS = {
    "type": "hold a label, path, sha256 or time that is not text",
    "length": "hold a vector of the wrong length",
    "finite": "hold a vector with NaN or infinity",
    "norm": f"hold a vector whose norm is not 1 ± {NORM_TOLERANCE}",
}
_SHOWN_IDS = 5


@dataclass
class CheckReport:
    """What ``check_index`` found. ``problems`` make the index wrong or unusable; ``notes`` are
    states it heals from by itself (a cache older than the records, temp files of an
    interrupted write), which ``repair_index`` also clears at once."""

    index: Path
    items: int = 0
    labels: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    source_ok: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "index": str(self.index),
            "ok": self.ok,
            "items": self.items,
            "labels": self.labels,
            "problems": self.problems,
            "notes": self.notes,
            "repaired": self.repaired,
        }


def _ids(ids: list[int] | np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in list(ids)[:_SHOWN_IDS])
    return f"ids {shown}{', ...' if len(ids) > _SHOWN_IDS else ''}"


def check_index(
    path: str | os.PathLike[str], *, lock_timeout: float | None = DEFAULT_TIMEOUT
) -> CheckReport:
    """Check an index folder without changing it. It holds the writer lock meanwhile (so that
    no write is half-seen); NotAnIndexError if the folder is not an index at all."""
    root = Path(path)
    if not root.is_dir():
        raise NotAnIndexError(f"{root} is not an index: it is not a folder")
    if not IndexStore.is_index(root):
        raise NotAnIndexError(f"{root} is not an index: it lacks {MANIFEST} or {RECORDS}")
    report = CheckReport(root)
    lock = writer_lock(root)
    try:
        held = lock.acquire(lock_timeout)
    except IndexStoreError as exc:  # a read-only folder: check it as it is
        report.notes.append(f"checked without the writer lock: {exc}")
        held = None
    if held is False:
        raise IndexLockedError(
            f"{root} is being written by another process{lock.holder()}; try again later"
        )
    try:
        _check(root, report)
    finally:
        if held:
            lock.release()
    return report


def _check(root: Path, report: CheckReport) -> None:
    try:
        manifest: Manifest | None = read_manifest(root / MANIFEST)
    except IndexFormatError as exc:
        report.problems.append(str(exc))
        report.source_ok = False
        manifest = None
    try:
        db = RecordDB.open(root / RECORDS)
    except IndexStoreError as exc:
        report.problems.append(str(exc))
        report.source_ok = False
    else:
        try:
            _check_source(root, manifest, db, report)
        finally:
            db.close()
    for entry in temp_files(root):
        report.notes.append(
            f"{entry.name} is a temporary file left by an interrupted write; "
            "the next write (or --repair) removes it"
        )


def _check_source(root: Path, manifest: Manifest | None, db: RecordDB, report: CheckReport) -> None:
    """The records (and, when they are sound, the FAISS base against them)."""
    audit = None
    try:
        if manifest is not None:
            audit = db.audit(manifest.dim, NORM_TOLERANCE)
        else:
            report.items, report.labels = db.count(), len(db.label_counts())
    except IndexStoreError as exc:
        report.problems.append(str(exc))
        report.source_ok = False
    if manifest is not None and audit is not None:
        if audit.damage:
            report.problems.append(f"{RECORDS}: SQLite finds damage: {'; '.join(audit.damage)}")
            report.source_ok = False
        else:
            report.items, report.labels = len(audit.ids), audit.labels
            for kind, ids in audit.bad.items():
                report.problems.append(
                    f"{RECORDS}: {len(ids)} item(s) {_FAULTS[kind]} ({_ids(ids)})"
                )
                report.source_ok = False
            try:
                _check_cache(root, manifest.index_type, audit, db, report)
            except IndexStoreError as exc:
                report.problems.append(str(exc))


def _check_cache(
    root: Path, index_type: str, audit: Audit, db: RecordDB, report: CheckReport
) -> None:
    """The FAISS base against its sidecar, and against the records through the change log
    after its generation; a layout other than the one ``index_type`` wants for their number,
    like a base the log no longer reaches back to, is a note."""
    generation, ids, vectors = audit.generation, audit.ids, audit.vectors
    healed = "the next open rebuilds it from the records (--repair does it now)"
    try:
        meta = read_sidecar(root / SIDECAR)
    except FileNotFoundError:
        report.notes.append(f"{SIDECAR} is missing; {healed}")
        return
    except IndexFormatError as exc:
        report.problems.append(str(exc))
        return
    except (OSError, ValueError) as exc:
        report.problems.append(f"{SIDECAR} is unreadable: {exc}")
        return
    base_generation = meta["generation"]
    if base_generation > generation:
        report.problems.append(
            f"{SIDECAR} claims generation {base_generation}, but the records are only at "
            f"{generation}"
        )
        return
    try:
        f = (root / VECTORS).open("rb")
    except FileNotFoundError:
        report.notes.append(f"{VECTORS} is missing; {healed}")
        return
    with f:
        size = os.fstat(f.fileno()).st_size
        token = token_of(f, size)
        if "token" in meta and token and token != meta["token"]:
            report.notes.append(
                f"{VECTORS} is not the file {SIDECAR} describes, as after a write interrupted "
                f"between the two; {healed}"
            )
            return
        changes = db.changes_since(base_generation)
        if not changes.complete:
            report.notes.append(
                f"{VECTORS} is of generation {base_generation} and the records' change log does "
                f"not reach back to it (records at {generation}), as when a write interrupted "
                f"before the base was rewritten; {healed}"
            )
            return
        if sha256_file(root / VECTORS) != meta["sha256"]:
            report.problems.append(f"{VECTORS} does not have the sha256 recorded in {SIDECAR}")
            return
        try:
            index = backend.read_open(f, root / VECTORS, sha256=meta["sha256"])
        except (OSError, IndexFormatError) as exc:
            report.problems.append(str(exc))
            return
    if backend.dim(index) != vectors.shape[1]:
        report.problems.append(
            f"{VECTORS} holds {backend.dim(index)}-d vectors, the index {vectors.shape[1]}-d"
        )
        return
    _check_contents(index, ids, vectors, changes, base_generation < generation, report)
    layout = backend.layout(index)
    count = backend.ntotal(index) + changes.added.size - changes.removed.size
    due = choose(index_type, count, layout, vectors.shape[1])
    if due != layout:
        report.notes.append(
            f"{VECTORS} holds the layout {layout.to_json()}, but index type {index_type!r} "
            f"wants {due.to_json()} for {count} vectors; {healed}"
        )


_ENCODE_BATCH = 65_536


def _check_contents(
    index: Any,
    ids: np.ndarray,
    vectors: np.ndarray,
    changes: Changes,
    behind: bool,
    report: CheckReport,
) -> None:
    """The ids of the base are those of the records at its generation (those of now without
    the ones added since, with the ones removed since), and each item still present has its
    record's vector (flat, ivf) or the code and list that vector gets (compact)."""
    expected = np.union1d(np.setdiff1d(ids, changes.added), changes.removed)
    layout = backend.layout(index)
    if layout.type == "compact":
        base_ids, lists, codes = backend.codes(index)
    else:
        base_ids, base_vectors = backend.contents(index)
    at = " at its generation" if behind else ""
    if base_ids.size != expected.size:
        report.problems.append(
            f"{VECTORS} holds {base_ids.size} vectors, the records {expected.size} items{at}"
        )
        return
    if not np.array_equal(base_ids, expected):
        report.problems.append(
            f"{VECTORS} holds other ids than the records{at} "
            f"({_ids(np.setxor1d(base_ids, expected))} are in only one of them)"
        )
        return
    present = np.isin(base_ids, ids)
    rows = np.searchsorted(ids, base_ids[present])
    if layout.type != "compact":
        mine = base_vectors[present]
        theirs = vectors[rows]
        if not np.array_equal(mine, theirs):
            differ = base_ids[present][~(mine == theirs).all(axis=1)]
            report.problems.append(
                f"{VECTORS} holds other vectors than the records for {_ids(differ)}"
            )
        return
    differ_parts = []
    kept_ids, kept_lists, kept_codes = base_ids[present], lists[present], codes[present]
    for start in range(0, rows.size, _ENCODE_BATCH):
        part = slice(start, start + _ENCODE_BATCH)
        want_lists, want_codes = backend.encode(index, vectors[rows[part]])
        bad = (want_lists != kept_lists[part]) | ~(want_codes == kept_codes[part]).all(axis=1)
        differ_parts.append(kept_ids[part][bad])
    differ = np.concatenate(differ_parts) if differ_parts else np.empty(0, np.int64)
    if differ.size:
        report.problems.append(
            f"{VECTORS} holds other codes than the records' vectors give for {_ids(differ)}"
        )


def repair_index(path: str | os.PathLike[str]) -> list[str]:
    """Under the writer lock: remove temp files left by interrupted writes and rebuild the FAISS
    file and its sidecar from the records. The manifest and records are not changed (they are
    the truth); IndexStoreError if they cannot be read. Returns what was done."""
    root = Path(path)
    with writer_lock(root).held(DEFAULT_TIMEOUT):
        stray = [p.name for p in temp_files(root)]
        with IndexStore.open(root) as store, store.writing():
            n = store.rebuild_cache()
    return [f"removed {name}" for name in stray] + [
        f"rebuilt {VECTORS} and {SIDECAR} from the {n} records"
    ]
