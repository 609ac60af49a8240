"""The re-ranking state of an index (retrieval/engine/rerank.py): each item's nearest other
items of its own label by raw vector, the lists DBA ranks with, kept in ``INDEX/dba.npz`` beside
the records and named by their generation, like the FAISS cache: derived data, made anew from
the records whenever it does not match them, by whoever reads it next.

A writer follows its commit (under the store's writer lock) when the kept lists were those of
the records just before it: an enrolment gives each new item its list (compared with every item
of its label) and puts it into the lists of the items of its label it now beats; a removal
makes again the lists of the items whose list held a removed one, within their label. Only lists
of the labels written to change. Built from scratch, each label's items are compared with each
other (exact).

Bounds, for a million items of 1280-d: the file, and a reader's copy, hold 56 bytes per item
(ids and scores of M + 1 = 4 neighbours: 56 MB); a build reads the vectors once (5 GB, read
whole) and compares each label's items with each other: sum over labels of n_label^2 d
multiply-adds (10,000 labels of 100 photos: 1.3e11, seconds; one label of a million: 1.3e15,
hours). An enrolment reads its label's vectors once and compares the new items with them
(n_label x new); a removal does the same for the items that listed a removed one. Every write
rewrites the file and every reader reloads it once per generation. A query never touches the
whole gallery: engine/rerank.py re-ranks the SHORTLIST nearest items from the raw vectors of
those and of their neighbours (at most 4 x 200 rows, 4 MB), whatever the size of the index.
Sharded indexes (the route past one machine) are not re-ranked: their ids are per shard.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence

import numpy as np

from index import IndexStore, atomic_write_bytes
from retrieval.engine.rerank import Lists, M

log = logging.getLogger(__name__)

FILE = "dba.npz"
WITHIN = "label"  # what a list's neighbours share with its item (lists before it: nothing)
AT_MOST = 50_000
"""Lists are kept for galleries of at most this many items (those "auto" keeps flat, exact).
Past it, every write would rewrite a file of 56 bytes per item, and a label of that many items
would cost n^2 d to make its lists: a bigger index re-ranks by k-reciprocal neighbours, which
need no lists (README, "Re-ranking")."""


def applies(store: IndexStore) -> bool:
    """Whether ``store`` is small enough to keep DBA lists (AT_MOST)."""
    return len(store) <= AT_MOST


def _members(store: IndexStore, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the items of ``label`` now, by id."""
    return store.vectors(np.array([i.id for i in store.find(label=label)], np.int64))


def build(store: IndexStore) -> Lists:
    """The lists of every item of the store, made from its records."""
    items, x = store.labelled_vectors()
    if not items:
        return Lists.empty()
    return Lists.of(x, [i.label for i in items], np.array([i.id for i in items], np.int64))


def _read(store: IndexStore) -> tuple[int, Lists] | None:
    path = store.path / FILE
    try:
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            lists = Lists(arrays["ids"], arrays["nbr"], arrays["sim"])
            generation, m, within = int(meta["generation"]), int(meta["m"]), meta.get("within")
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged or foreign file: derived data, made anew
        log.warning("%s cannot be used (%s); making it anew from the records", path, exc)
        return None
    n = len(lists.ids)
    if within != WITHIN:
        log.warning("%s holds lists that are not within each label; making it anew", path)
        return None
    if (
        m != M
        or lists.ids.dtype != np.int64
        or lists.nbr.shape != (n, M + 1)
        or lists.sim.shape != (n, M + 1)
        or np.any(np.diff(lists.ids) <= 0)
    ):
        log.warning("%s does not hold lists of %d neighbours; making it anew", path, M + 1)
        return None
    return generation, lists


def _write(store: IndexStore, generation: int, lists: Lists) -> None:
    out = io.BytesIO()
    meta = {"generation": generation, "m": M, "within": WITHIN}
    np.savez(out, meta=np.array(json.dumps(meta)), ids=lists.ids, nbr=lists.nbr, sim=lists.sim)
    try:
        atomic_write_bytes(store.path / FILE, out.getvalue())
    except OSError as exc:
        log.warning(
            "could not write %s (%s); it is made anew when next needed", store.path / FILE, exc
        )


def load(store: IndexStore) -> tuple[int, Lists]:
    """(generation, lists) of the store now: from ``dba.npz`` if it was made at the records'
    generation, else made from the records (and kept, if no writer holds the store)."""
    generation = store.generation
    kept = _read(store)
    if kept is not None and kept[0] == generation and len(kept[1]) == len(store):
        return kept
    lists = build(store)
    with store.if_no_writer() as free:
        if free and store.generation == generation:
            _write(store, generation, lists)
    return generation, lists


def _added(store: IndexStore, lists: Lists, ids: np.ndarray, labels: Sequence[str]) -> Lists:
    """``lists`` after items ``ids`` with ``labels`` were added to the store: theirs made among
    their label's items, and the new ones put into the lists of the label's other items they
    beat (exact: an old list held the best of the old items)."""
    parts = [lists]
    y = np.asarray(labels)
    for label in np.unique(y):
        member_ids, members = _members(store, label)
        new = np.isin(member_ids, ids)
        parts.append(Lists.among(member_ids[new], members[new], member_ids, members))
        old = member_ids[~new]
        if not len(old):
            continue
        at = np.searchsorted(lists.ids, old)  # the kept lists are those of the items before
        scores = members[~new] @ members[new].T
        merged = Lists.sorted(
            old,
            np.concatenate([lists.nbr[at], np.broadcast_to(member_ids[new], scores.shape)], 1),
            np.concatenate([lists.sim[at], scores], 1),
        )
        lists.nbr[at], lists.sim[at] = merged.nbr, merged.sim
    return Lists.union(parts)


def _removed(store: IndexStore, lists: Lists, ids: np.ndarray, labels: Sequence[str]) -> Lists:
    """``lists`` after items ``ids`` with ``labels`` were removed from the store: the lists of
    their labels' items that held one made again."""
    keep = ~np.isin(lists.ids, ids)
    kept = Lists(lists.ids[keep], lists.nbr[keep], lists.sim[keep])
    stale = np.isin(kept.nbr, ids).any(axis=1)
    for label in np.unique(np.asarray(labels)):
        member_ids, members = _members(store, label)
        again = np.isin(member_ids, kept.ids[stale])
        if not again.any():
            continue
        made = Lists.among(member_ids[again], members[again], member_ids, members)
        at = np.searchsorted(kept.ids, made.ids)
        kept.nbr[at], kept.sim[at] = made.nbr, made.sim
    return kept


def follow(
    store: IndexStore, before: int, ids: np.ndarray, labels: Sequence[str], sign: int
) -> None:
    """After a commit to ``store`` (its generation was ``before``; its writer lock is held)
    that added (``sign`` 1) or removed (-1) the items ``ids`` with ``labels``: the kept lists
    follow, if they were those of the records before the commit; else they are left to be made
    anew. An index grown past AT_MOST drops them."""
    if not applies(store):
        (store.path / FILE).unlink(missing_ok=True)
        return
    kept = _read(store)
    if kept is None or kept[0] != before:
        return
    ids = np.asarray(ids, np.int64)
    if sign > 0:
        lists = _added(store, kept[1], ids, labels)
    else:
        lists = _removed(store, kept[1], ids, labels)
    _write(store, store.generation, lists)
