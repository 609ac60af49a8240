"""The index a store searches: a FAISS base saved at generation G (mapped from its file, never
changed), the ids removed since G left out of its answers, and the vectors added since G in a
small exact index in memory. Writes change the last two only; ``merge_due`` says when they have
grown enough that the base should be rewritten with them (``materialise``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from index import backend
from index.plan import Layout

MERGE_FRACTION = 0.05
MERGE_AT_LEAST = 1_000
MERGE_AT_MOST = 10_000
"""The base is rewritten when the changes since it (ids added plus ids removed) pass 5 % of it,
at least 1,000 and at most 10,000: every store opening the index reads the vectors added since
the base from the records (10,000 1280-d vectors are 51 MB, about 0.1 s) and searches them
exactly on top of the base (about 1 ms per query on one core), and a write pays for a rewrite
(a million-vector compact base: a few seconds) once in 10,000 changes."""


def merge_due(changes: int, base_count: int) -> bool:
    """Whether ``changes`` since a base of ``base_count`` vectors call for a new base."""
    limit = min(MERGE_AT_MOST, max(MERGE_AT_LEAST, int(MERGE_FRACTION * base_count)))
    return changes > limit


class LiveIndex:
    """A base index at ``generation`` plus the changes since (see the module's docstring)."""

    def __init__(self, base: Any, generation: int) -> None:
        self.base = base
        self.generation = generation
        self._gone = np.empty(0, np.int64)
        self._excluded: backend.Excluded | None = None
        self._delta = backend.new_flat_index(backend.dim(base))
        self._delta_ids: set[int] = set()

    @property
    def layout(self) -> Layout:
        return backend.layout(self.base)

    @property
    def dim(self) -> int:
        return backend.dim(self.base)

    @property
    def ntotal(self) -> int:
        return backend.ntotal(self.base) - self._gone.size + len(self._delta_ids)

    @property
    def changes(self) -> int:
        """Ids removed from the base plus ids added since it."""
        return self._gone.size + len(self._delta_ids)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Vectors added since the base (ids not in it)."""
        backend.add_with_ids(self._delta, vectors, ids)
        self._delta_ids.update(int(i) for i in ids)

    def remove(self, ids: np.ndarray) -> None:
        """Ids removed since the base: each is in the base or was added since."""
        keys = np.asarray(ids, dtype=np.int64)
        added = np.array([int(i) in self._delta_ids for i in keys], dtype=bool)
        if added.any():
            backend.remove_ids(self._delta, keys[added])
            self._delta_ids.difference_update(int(i) for i in keys[added])
        if (~added).any():
            self._gone = np.union1d(self._gone, keys[~added])
            self._excluded = backend.Excluded(self.base, self._gone)

    def candidates(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """For each query, the ids among which its best ``k`` are: the base's best
        (``layout.rerank`` of them for compact codes, else ``k``) and the delta's best ``k``,
        to be scored exactly by the caller."""
        wide = max(k, self.layout.rerank)
        _, base_ids = backend.search(self.base, queries, wide, self._excluded)
        _, delta_ids = backend.search(self._delta, queries, k)
        out = []
        for row in range(queries.shape[0]):
            found = np.concatenate([base_ids[row], delta_ids[row]])
            out.append(np.unique(found[found >= 0]))
        return out

    def materialise(self) -> Any:
        """A new index of the base's layout holding the vectors of now, in memory."""
        index = backend.copy(self.base)
        if self._gone.size:
            backend.remove_ids(index, self._gone)
        if self._delta_ids:
            ids, vectors = backend.contents(self._delta)
            backend.add_with_ids(index, vectors, ids)
        return index
