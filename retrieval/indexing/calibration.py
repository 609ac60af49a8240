"""The open-set state of an index (retrieval/engine/openset.py): the gallery's statistics, their
covariance shape and the calibration (the "unknown" threshold and the confidence), kept in
``INDEX/openset.npz`` beside the records, like the FAISS cache: derived data, named by the
generation of every store it was made from, rebuilt from the records whenever it does not match
them. The settings it is calibrated for (``known_accept``, ``absent_share``) are a note kept with
the records of the (first) store, so that a rebuild keeps them.

Each enrolment or removal follows its commit (under the store's writer lock) with an O(d^2) update
of the statistics per item; the shape and the calibration are refitted when a twentieth of the
items or labels changed since they were (``refresh``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from index import IndexStore, IndexStoreError, replacing, writer_lock
from retrieval.engine.openset import (
    ABSENT_SHARE,
    KNOWN_ACCEPT,
    Calibration,
    Scorer,
    Shape,
    Stats,
    calibrate,
)
from retrieval.errors import InputError

log = logging.getLogger(__name__)

FILE = "openset.npz"
FOLLOWED = "openset.follow.npz"
NOTE = "open_set"
_FOLLOW_AT_MOST = 2_000  # items kept in FOLLOWED (10 MB at 1280-d) before the state is rewritten

Followed = tuple[tuple[int, ...], tuple[int, ...], list[str], int, np.ndarray]
"""A commit kept in FOLLOWED: (generations before, after, labels, sign, vectors)."""
_SCAN_ROWS = 32768  # gallery rows read from the records at a time while calibrating
_TRIES = 3  # fits started again when a store is written to meanwhile


@dataclass
class OpenSet:
    """The open-set state of an index at ``generations`` (one per store)."""

    stats: Stats
    shape: Shape
    calibration: Calibration
    generations: tuple[int, ...]

    @cached_property
    def scorer(self) -> Scorer:
        return Scorer(self.stats, self.shape)

    def save(self, out: BinaryIO) -> None:
        meta = {"generations": list(self.generations), "calibration": self.calibration.to_json()}
        np.savez(
            out,
            meta=np.array(json.dumps(meta)),
            **self.stats.to_arrays(),
            **self.shape.to_arrays(),
        )

    @classmethod
    def from_file(cls, path: Path) -> OpenSet:
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            return cls(
                Stats.from_arrays(arrays),
                Shape.from_arrays(arrays),
                Calibration.from_json(meta["calibration"]),
                tuple(int(g) for g in meta["generations"]),
            )


def settings(stores: Sequence[IndexStore]) -> tuple[float, float]:
    """(known_accept, absent_share) the index is calibrated for."""
    note = stores[0].note(NOTE)
    if isinstance(note, dict):
        known = note.get("known_accept", KNOWN_ACCEPT)
        absent = note.get("absent_share", ABSENT_SHARE)
        if isinstance(known, float) and isinstance(absent, float):
            return known, absent
    return KNOWN_ACCEPT, ABSENT_SHARE


def check_settings(known_accept: float | None, absent_share: float | None) -> None:
    if known_accept is not None and not 0.5 <= known_accept < 1:
        raise InputError(f"--known-accept must be at least 0.5 and below 1, not {known_accept}")
    if absent_share is not None and not 0 <= absent_share < 1:
        raise InputError(f"--absent-share must be at least 0 and below 1, not {absent_share}")


def _generations(stores: Sequence[IndexStore]) -> tuple[int, ...]:
    return tuple(s.generation for s in stores)


def _read(root: Path) -> OpenSet | None:
    """The kept state, with the commits followed since it was written applied to it."""
    path = root / FILE
    try:
        state = OpenSet.from_file(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged or foreign file: derived data, made anew
        log.warning("%s cannot be used (%s); making it anew from the records", path, exc)
        return None
    state.generations, live = _chain(state.generations, root)
    for _, _, labels, sign, vectors in live:
        try:
            state.stats.update(vectors, labels, sign)
        except ValueError as exc:
            log.warning("%s cannot be used (%s)", root / FOLLOWED, exc)
            return None
    return state


def _kept_generations(root: Path) -> tuple[tuple[int, ...] | None, list[Followed]]:
    """The generations the kept state is at, its followed commits included, read without its
    arrays; and those commits (see _chain)."""
    try:
        with np.load(root / FILE, allow_pickle=False) as arrays:
            generations = tuple(int(g) for g in json.loads(str(arrays["meta"]))["generations"])
    except Exception:  # missing or damaged: _read says so when it is next read
        return None, []
    return _chain(generations, root)


def _chain(generations: tuple[int, ...], root: Path) -> tuple[tuple[int, ...], list[Followed]]:
    """The commits of FOLLOWED that follow on from a state at ``generations``, and the
    generations after them; older ones (left by a writer killed before it dropped them) are
    not among them."""
    live = []
    for entry in _followed(root):
        if entry[0] == generations:
            generations = entry[1]
            live.append(entry)
    return generations, live


def _followed(root: Path) -> list[Followed]:
    """The commits kept in FOLLOWED, in order: (generations before, after, labels, sign,
    vectors); none when the file is missing or cannot be used."""
    path = root / FOLLOWED
    try:
        with np.load(path, allow_pickle=False) as a:
            then, now, ends, signs = a["then"], a["now"], a["ends"], a["signs"]
            labels, vectors = [str(x) for x in a["labels"]], np.asarray(a["vectors"], np.float32)
    except FileNotFoundError:
        return []
    except Exception as exc:  # derived data: the state is made anew if it then does not match
        log.warning("%s cannot be used (%s)", path, exc)
        return []
    starts = np.r_[0, ends[:-1]]
    return [
        (
            tuple(map(int, then[e])),
            tuple(map(int, now[e])),
            labels[a:b],
            int(signs[e]),
            vectors[a:b],
        )
        for e, (a, b) in enumerate(zip(starts, ends, strict=True))
    ]


def _write(root: Path, state: OpenSet) -> None:
    """Write the whole state, then drop the commits followed before it."""
    try:
        with replacing(root / FILE) as tmp, tmp.open("wb") as out:
            state.save(out)
        (root / FOLLOWED).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not write %s (%s); it is made anew when next needed", root / FILE, exc)


def _follow(
    root: Path,
    kept: list[Followed],
    then: tuple[int, ...],
    now: tuple[int, ...],
    vectors: np.ndarray,
    labels: Sequence[str],
    sign: int,
) -> None:
    """Keep one more commit in FOLLOWED: a write of the size of the commits since the whole
    state was written, not of the state (200 MB at 17,000 labels); past _FOLLOW_AT_MOST items
    the whole state is written instead."""
    kept = [*kept, (then, now, list(labels), sign, np.asarray(vectors, np.float32))]
    rows = np.cumsum([len(k[2]) for k in kept])
    if rows[-1] > _FOLLOW_AT_MOST:
        state = _read(root)
        if state is not None and state.generations == then:
            state.stats.update(vectors, labels, sign)
            state.generations = now
            _write(root, state)
        return
    dim = kept[-1][4].shape[-1]
    try:
        with replacing(root / FOLLOWED) as tmp, tmp.open("wb") as out:
            np.savez(
                out,
                then=np.array([k[0] for k in kept], np.int64),
                now=np.array([k[1] for k in kept], np.int64),
                ends=rows.astype(np.int64),
                signs=np.array([k[3] for k in kept], np.int64),
                labels=np.array([lab for k in kept for lab in k[2]], dtype=str),
                vectors=np.concatenate([k[4] for k in kept]).reshape(-1, dim),
            )
    except OSError as exc:
        log.warning(
            "could not write %s (%s); the state is made anew when next needed",
            root / FOLLOWED,
            exc,
        )


class _Changed(Exception):
    """A store was written to between two reads of one calibration."""


class _Stores:
    """The items of ``stores`` by row (each store's items in id order, one store after another),
    read from the records a batch at a time: the Gallery ``calibrate`` probes, so that a
    million-item gallery is never in memory whole. Reading it once gives the labels and the
    statistics; reading it again (``blocks``) must find the same items."""

    def __init__(self, stores: Sequence[IndexStore], stats: Stats | None) -> None:
        self.stores = stores
        self.stats = Stats(stores[0].dim) if stats is None else stats
        self.labels: list[str] = []
        keys: list[np.ndarray] = []
        generations = []

        def visit(ids: np.ndarray, labels: list[str], vectors: np.ndarray) -> None:
            keys.append(ids)
            self.labels += labels
            if stats is None:
                self.stats.update(vectors, labels, 1)

        self.starts = [0]
        for store in stores:
            generations.append(store.scan(visit))
            self.starts.append(sum(len(k) for k in keys))
        self.generations = tuple(generations)
        self.ids = np.concatenate(keys) if keys else np.zeros(0, np.int64)

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), self.stats.dim), np.float32)
        for s, store in enumerate(self.stores):
            mine = (rows >= self.starts[s]) & (rows < self.starts[s + 1])
            wanted = self.ids[rows[mine]]
            found, vectors = store.vectors(wanted)
            if len(found) != len(np.unique(wanted)):
                raise _Changed
            out[mine] = vectors[np.searchsorted(found, wanted)]
        return out

    def blocks(self) -> Iterator[np.ndarray]:
        for s, store in enumerate(self.stores):
            for at in range(self.starts[s], self.starts[s + 1], _SCAN_ROWS):
                wanted = self.ids[at : min(at + _SCAN_ROWS, self.starts[s + 1])]
                found, vectors = store.vectors(wanted)
                if not np.array_equal(found, wanted):
                    raise _Changed
                yield vectors


def _fit(stores: Sequence[IndexStore], stats: Stats | None = None) -> OpenSet:
    """The state made from every item of the stores, read a batch at a time. A store written to
    meanwhile (only a reader fits without the writer lock) makes it start again."""
    known_accept, absent_share = settings(stores)
    for _ in range(_TRIES):
        gallery = _Stores(stores, stats)
        shape = Shape.of(gallery.stats)
        try:
            calibration = calibrate(
                gallery,
                gallery.labels,
                gallery.stats,
                shape,
                known_accept=known_accept,
                absent_share=absent_share,
            )
        except _Changed:
            continue
        if _generations(stores) == gallery.generations:
            return OpenSet(gallery.stats, shape, calibration, gallery.generations)
    raise IndexStoreError(f"the index kept changing while {FILE} was fitted; try again")


def load(root: Path, stores: Sequence[IndexStore]) -> OpenSet:
    """The state of the stores now: from ``root/openset.npz`` if it was made at their
    generations, else made from the records (and kept, if no writer holds ``root``)."""
    state = _read(root)
    if state is not None and state.generations == _generations(stores):
        return state
    state = _fit(stores)
    with ExitStack() as held:  # the stores, then the root: as every writer takes them
        free = all(held.enter_context(s.if_no_writer()) for s in stores)
        free = free and held.enter_context(writer_lock(root).if_free())
        if free and state.generations == _generations(stores):
            _write(root, state)
    return state


def follow(
    root: Path,
    stores: Sequence[IndexStore],
    store: IndexStore,
    before: int,
    vectors: np.ndarray,
    labels: Sequence[str],
    sign: int,
) -> None:
    """After a commit to ``store`` (its generation was ``before``; its writer lock is held):
    the statistics follow the items added (``sign`` 1) or removed (-1), if the kept state was
    that of the stores before the commit; else it is left to be made anew."""
    with writer_lock(root).held():
        now = _generations(stores)
        then = tuple(before if s is store else g for s, g in zip(stores, now, strict=True))
        generations, kept = _kept_generations(root)
        if generations == then:
            _follow(root, kept, then, now, vectors, labels, sign)


def refresh(root: Path, stores: Sequence[IndexStore]) -> OpenSet:
    """After writes (a writer lock held): the kept state brought up to date — the shape and the
    calibration refitted if the items or labels changed by more than a twentieth since they
    were (REFIT_FRACTION), or all of it made anew if it does not match the records."""
    with writer_lock(root).held():
        state = _read(root)
        if state is None or state.generations != _generations(stores):
            state = _fit(stores)
        elif state.calibration.stale(state.stats) or state.shape.stale(state.stats):
            state = _fit(stores, state.stats)
        else:
            return state
        _write(root, state)
        return state


def recalibrate(
    root: Path,
    stores: Sequence[IndexStore],
    *,
    known_accept: float | None = None,
    absent_share: float | None = None,
) -> OpenSet:
    """Calibrate anew, for new settings if given (kept with the records)."""
    check_settings(known_accept, absent_share)
    with stores[0].writing(), writer_lock(root).held():  # store, then root: as every writer
        known, absent = settings(stores)
        stores[0].set_note(
            NOTE,
            {
                "known_accept": float(known if known_accept is None else known_accept),
                "absent_share": float(absent if absent_share is None else absent_share),
            },
        )
        state = _fit(stores)
        _write(root, state)
        return state


def describe(state: OpenSet) -> dict[str, Any]:
    """What ``info`` shows of it."""
    c = state.calibration
    return {
        "method": "relative-mahalanobis",
        "threshold": c.threshold,
        "known_accept": c.known_accept,
        "absent_share": c.absent_share,
        "calibrated_on": {"items": c.n, "labels": c.classes},
        "probes": c.probes,
    }
