"""The re-ranking state of an index (retrieval/engine/rerank.py): each item's nearest other
items by raw vector (label-blind), the lists DBA ranks with, kept in ``INDEX/dba.npz`` beside the
records and named by their generation, like the FAISS cache: derived data, made anew from the
records whenever it does not match them, by whoever reads it next.

A writer follows its commit (under the store's writer lock) when the kept lists were those of
the records just before it: an enrolment gives each new item its list (one search) and puts it
into the lists of the items it now beats; a removal searches again for the items whose list
held a removed one. Only lists that change are touched. Built from scratch, every item is
searched once on the index's own FAISS layout (exact while flat; past AUTO_COMPACT_ABOVE items
the compact layout's candidates, re-scored exactly: a list may miss a neighbour its search
missed).

Bounds, for a million items of 1280-d: the file, and a reader's copy, hold 56 bytes per item
(ids and scores of M + 1 = 4 neighbours: 56 MB); a build reads the vectors once (5 GB, read
whole) and runs one search of M + 2 per item: at the ~5 ms of a compact million's search, about
1.4 hours on one core, which build-index adds to the embedding; an enrolment runs two searches
per new item (M + 2 and CHECK) and compares it directly with the items whose last neighbour
scores under its CHECK-th (at worst every item, one pass; in a dense gallery a few); a removal
searches again for the items that listed a removed one (M + 1 on average); every write
rewrites the file and every reader reloads it once per generation. A query never touches the
whole gallery: engine/rerank.py re-ranks the SHORTLIST nearest items from the raw vectors of
those and of their neighbours (at most 4 x 200 rows, 4 MB), whatever the size of the index.
Sharded indexes (the route past one machine) are not re-ranked: their ids are per shard.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np

from index import IndexStore, atomic_write_bytes
from retrieval.engine.rerank import BLOCK, Lists, M

log = logging.getLogger(__name__)

FILE = "dba.npz"
CHECK = 64  # a new item's nearest items searched for the lists it enters
AT_MOST = 50_000
"""Lists are kept for galleries of at most this many items (those "auto" keeps flat, exact).
Past it, making them would run one search per item (about 1.4 hours at a million, against a
build-index target of 10 minutes) and every write would rewrite a file of 56 bytes per item: a
bigger index re-ranks by k-reciprocal neighbours, which need no lists (README, "Re-ranking")."""


def applies(store: IndexStore) -> bool:
    """Whether ``store`` is small enough to keep DBA lists (AT_MOST)."""
    return len(store) <= AT_MOST


def _searched(store: IndexStore, ids: np.ndarray, x: np.ndarray) -> Lists:
    """The lists of the items ``ids`` (vectors ``x``), searched in the store as it is now."""
    nbr = np.full((len(ids), M + 2), -1, np.int64)
    sim = np.full((len(ids), M + 2), -np.inf, np.float32)
    for s in range(0, len(ids), BLOCK):
        for row, hits in enumerate(store.search(x[s : s + BLOCK], M + 2), start=s):
            others = [h for h in hits if h.id != ids[row]][: M + 1]
            nbr[row, : len(others)] = [h.id for h in others]
            sim[row, : len(others)] = [h.score for h in others]
    return Lists.sorted(ids, nbr, sim)


def build(store: IndexStore) -> Lists:
    """The lists of every item of the store, made from its records."""
    ids, x = store.vectors()
    return _searched(store, ids, x) if len(ids) else Lists.empty()


def _read(store: IndexStore) -> tuple[int, Lists] | None:
    path = store.path / FILE
    try:
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            lists = Lists(arrays["ids"], arrays["nbr"], arrays["sim"])
            generation, m = int(meta["generation"]), int(meta["m"])
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged or foreign file: derived data, made anew
        log.warning("%s cannot be used (%s); making it anew from the records", path, exc)
        return None
    n = len(lists.ids)
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
    meta = {"generation": generation, "m": M}
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


def _added(store: IndexStore, lists: Lists, ids: np.ndarray, x: np.ndarray) -> Lists:
    """``lists`` after items ``ids`` (vectors ``x``) were added to the store: theirs searched,
    and the new ones put into the lists of the items they beat. Exact: an item outside a new
    one's CHECK nearest scores at most the last of those with it, so only the items whose last
    neighbour scores under that are compared with it directly (their vectors read once, in
    blocks)."""
    new = _searched(store, ids, x)
    if not len(lists):
        return new
    last = lists.sim[:, -1]
    rows, cols, scores = [], [], []
    floors = np.full(len(ids), -np.inf, np.float32)
    for col, hits in enumerate(store.search(x, CHECK)):
        found = np.array([h.id for h in hits], np.int64)
        at = np.minimum(np.searchsorted(lists.ids, found), len(lists) - 1)
        old = lists.ids[at] == found
        rows.append(at[old])
        cols.append(np.full(old.sum(), col))
        scores.append(np.array([h.score for h in hits], np.float32)[old])
        if len(hits) == CHECK:
            floors[col] = hits[-1].score
    risk = np.flatnonzero(last < floors.max())
    seen = np.concatenate(rows) * len(ids) + np.concatenate(cols)
    for s in range(0, len(risk), BLOCK):
        part = risk[s : s + BLOCK]
        _, xr = store.vectors(lists.ids[part])
        r, c = np.nonzero(last[part][:, None] < floors[None, :])
        unseen = ~np.isin(part[r] * len(ids) + c, seen)
        r, c = r[unseen], c[unseen]
        rows.append(part[r])
        cols.append(c)
        scores.append((xr @ x.T)[r, c])
    row, col, score = np.concatenate(rows), np.concatenate(cols), np.concatenate(scores)
    take = score > last[row]
    row, col, score = row[take], col[take], score[take]
    if len(row):
        changed, slot = np.unique(row, return_inverse=True)
        place = np.zeros(len(row), np.int64)  # each taken item's column among its row's
        order = np.argsort(slot, kind="stable")
        starts = np.searchsorted(slot[order], np.arange(len(changed)))
        place[order] = np.arange(len(row)) - starts[slot[order]]
        extra_nbr = np.full((len(changed), place.max() + 1), -1, np.int64)
        extra_sim = np.full((len(changed), place.max() + 1), -np.inf, np.float32)
        extra_nbr[slot, place] = ids[col]
        extra_sim[slot, place] = score
        merged = Lists.sorted(
            lists.ids[changed],
            np.concatenate([lists.nbr[changed], extra_nbr], axis=1),
            np.concatenate([lists.sim[changed], extra_sim], axis=1),
        )
        lists.nbr[changed], lists.sim[changed] = merged.nbr, merged.sim
    return _union(lists, new)


def _union(a: Lists, b: Lists) -> Lists:
    ids = np.concatenate([a.ids, b.ids])
    order = np.argsort(ids, kind="stable")
    return Lists(
        ids[order], np.concatenate([a.nbr, b.nbr])[order], np.concatenate([a.sim, b.sim])[order]
    )


def _removed(store: IndexStore, lists: Lists, ids: np.ndarray) -> Lists:
    """``lists`` after items ``ids`` were removed from the store: the items whose list held one
    searched again."""
    keep = ~np.isin(lists.ids, ids)
    kept = Lists(lists.ids[keep], lists.nbr[keep], lists.sim[keep])
    stale = np.isin(kept.nbr, ids).any(axis=1)
    if not stale.any():
        return kept
    again_ids, x = store.vectors(kept.ids[stale])
    again = _searched(store, again_ids, x)
    kept.nbr[stale], kept.sim[stale] = again.nbr, again.sim
    return kept


def follow(
    store: IndexStore, before: int, ids: np.ndarray, vectors: np.ndarray | None, sign: int
) -> None:
    """After a commit to ``store`` (its generation was ``before``; its writer lock is held)
    that added (``sign`` 1, with their ``vectors``) or removed (-1) the items ``ids``: the
    kept lists follow, if they were those of the records before the commit; else they are left
    to be made anew. An index grown past AT_MOST drops them."""
    if not applies(store):
        (store.path / FILE).unlink(missing_ok=True)
        return
    kept = _read(store)
    if kept is None or kept[0] != before:
        return
    ids = np.asarray(ids, np.int64)
    if sign > 0:
        lists = _added(store, kept[1], ids, np.asarray(vectors, np.float32))
    else:
        lists = _removed(store, kept[1], ids)
    _write(store, store.generation, lists)
