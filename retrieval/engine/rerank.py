"""Training-free re-ranking of a query's shortlist, in numpy: database-side augmentation (DBA),
alpha-weighted query expansion (alpha-QE) and k-reciprocal re-ranking (kr).

DBA: each gallery item is ranked by normalise(x + sum_i max(s_i, 0)^ALPHA x_i) over its ``M``
nearest other gallery items of its own label (the gallery's labels, never the query's), computed
from the raw vectors, which stay the truth. alpha-QE: the query is replaced by normalise(q + sum_i
max(s_i, 0)^ALPHA y_i) over the ``QE_N`` best of its shortlist and the shortlist scored again.
kr (Zhong et al. 2017, "Re-ranking person re-identification with k-reciprocal encoding"): over
the graph of the query and its shortlist alone (never the other queries, never the whole gallery),
each node is described by its k-reciprocal neighbours (expanded by theirs), weighted by
exp(-distance) and averaged over its ``KR_K2`` nearest; an item is ranked by the Jaccard distance
of its description to the query's, mixed with the original distance (``KR_LAMBDA``). The paper's
settings (k1 20, k2 6, lambda 0.3), not tuned here. Time and memory O(K^2 d) per query for a
shortlist of K items, whatever the gallery's size.
All act on the shortlist the index returns (``shortlist(k)`` items), never on the whole gallery.

The neighbour lists (``Lists``) keep one spare neighbour, so that an item can be left out of
every list exactly (``Lists.rows(ids, without=...)``): a query whose own photo is in the gallery
is then never a DBA neighbour of what it is compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.config import RERANK_METHODS
from retrieval.errors import InputError

M = 3  # DBA neighbours of an item
QE_N = 3  # shortlist items the query is expanded with
ALPHA = 3.0  # weight of a neighbour: its cosine score (clipped at 0) to this power
SHORTLIST = 200  # items the index returns for re-ranking (at least k)
KR_K1 = 20  # k-reciprocal neighbours of a node
KR_K2 = 6  # nodes a node's description is averaged over (local query expansion)
KR_LAMBDA = 0.3  # weight of the original distance against the Jaccard distance
BLOCK = 1024


def checked(method: str) -> str:
    """``method`` if it is one of RERANK_METHODS; else InputError naming them."""
    if method not in RERANK_METHODS:
        raise InputError(f"--rerank must be one of {', '.join(RERANK_METHODS)}, not {method!r}")
    return method


def shortlist(k: int, method: str) -> int:
    """How many nearest items a query of ``k`` neighbours asks the index for."""
    return k if method == "none" else max(k, SHORTLIST)


def uses_lists(method: str) -> bool:
    return method.startswith("dba")


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class Lists:
    """Each gallery item's ``M + 1`` nearest other items of its label by raw score, best first
    (ties: the lower id first): ``ids`` (n,) ascending, ``nbr`` (n, M + 1) their ids (-1 where
    the label has fewer), ``sim`` (n, M + 1) their scores (-inf there)."""

    ids: np.ndarray
    nbr: np.ndarray
    sim: np.ndarray

    @classmethod
    def empty(cls) -> Lists:
        return cls(
            np.zeros(0, np.int64), np.zeros((0, M + 1), np.int64), np.zeros((0, M + 1), np.float32)
        )

    @classmethod
    def of(cls, x: np.ndarray, labels: Sequence[str], ids: np.ndarray | None = None) -> Lists:
        """The lists of a gallery held in memory: rows ``x`` with ``labels``, ids ``ids``
        (default 0..n-1, ascending). Memory O(BLOCK * the largest label), never n * n."""
        ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        y = np.asarray(labels)
        parts = [
            cls.among(ids[y == lab], x[y == lab], ids[y == lab], x[y == lab])
            for lab in np.unique(y)
        ]
        return cls.union(parts)

    @classmethod
    def among(
        cls, ids: np.ndarray, x: np.ndarray, member_ids: np.ndarray, members: np.ndarray
    ) -> Lists:
        """The lists of items ``ids`` (rows ``x``) among the items ``member_ids`` (rows
        ``members``, one label's), each item left out of its own, compared in blocks."""
        parts = []
        for s in range(0, len(ids), BLOCK):
            sim = x[s : s + BLOCK] @ members.T
            sim[ids[s : s + BLOCK, None] == member_ids[None]] = -np.inf
            k = min(M + 1, sim.shape[1])
            cand = (
                np.argpartition(-sim, k - 1, axis=1)[:, :k]
                if 0 < k < sim.shape[1]
                else np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
            )
            score = np.take_along_axis(sim, cand, axis=1)
            parts.append(cls.sorted(ids[s : s + BLOCK], member_ids[cand], score))
        return cls.union(parts)

    @classmethod
    def union(cls, parts: Sequence[Lists]) -> Lists:
        """The lists of ``parts`` (of distinct items) as one, by id."""
        if not parts:
            return cls.empty()
        ids = np.concatenate([p.ids for p in parts])
        order = np.argsort(ids, kind="stable")
        return cls(
            ids[order],
            np.concatenate([p.nbr for p in parts])[order],
            np.concatenate([p.sim for p in parts])[order],
        )

    @classmethod
    def sorted(cls, ids: np.ndarray, nbr: np.ndarray, sim: np.ndarray) -> Lists:
        """Lists from unordered rows of up to M + 1 (or more) candidates each: each row sorted
        by (-score, id), cut or padded to M + 1; rows by id."""
        nbr = np.where(np.isfinite(sim), nbr, np.iinfo(np.int64).max)
        order = np.lexsort((nbr, -sim), axis=1)[:, : M + 1]
        nbr = np.take_along_axis(nbr, order, axis=1)
        sim = np.take_along_axis(sim, order, axis=1).astype(np.float32)
        pad = M + 1 - nbr.shape[1]
        if pad > 0:
            nbr = np.pad(nbr, ((0, 0), (0, pad)), constant_values=-1)
            sim = np.pad(sim, ((0, 0), (0, pad)), constant_values=-np.inf)
        nbr = np.where(np.isfinite(sim), nbr, -1)
        by_id = np.argsort(ids, kind="stable")
        return cls(np.asarray(ids, np.int64)[by_id], nbr[by_id], sim[by_id])

    def __len__(self) -> int:
        return len(self.ids)

    def rows(
        self, ids: Sequence[int] | np.ndarray, without: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour ids, scores), each (len(ids), M), of these items, the item ``without``
        left out of every list (exact: the lists hold a spare)."""
        at = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        if not len(self.ids) or not np.array_equal(self.ids[at], ids):
            raise LookupError("an item of the shortlist has no neighbour list")
        nbr, sim = self.nbr[at], self.sim[at]
        if without is not None:
            keep = np.argsort(nbr == without, axis=1, kind="stable")
            nbr = np.take_along_axis(nbr, keep, axis=1)
            sim = np.take_along_axis(sim, keep, axis=1)
        return nbr[:, :M], sim[:, :M]

    def equals(self, other: Lists, atol: float = 1e-5) -> bool:
        return (
            np.array_equal(self.ids, other.ids)
            and np.array_equal(self.nbr, other.nbr)
            and np.allclose(self.sim, other.sim, atol=atol)
        )


def _weights(sims: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(sims), np.maximum(sims, 0.0), 0.0) ** ALPHA


def augment(x: np.ndarray, nbr_x: np.ndarray, nbr_sim: np.ndarray) -> np.ndarray:
    """DBA vectors (K, d) of items ``x`` (K, d) from their neighbours' raw vectors ``nbr_x``
    (K, M, d) and scores ``nbr_sim`` (K, M) (-inf where a list is short)."""
    return normalise(x + np.einsum("km,kmd->kd", _weights(nbr_sim), nbr_x))


def expand(q: np.ndarray, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """alpha-QE of query ``q`` (d,) with the best ``QE_N`` of its shortlist ``y`` (K, d),
    ``scores`` (K,) their scores."""
    best = np.argsort(-scores, kind="stable")[:QE_N]
    return normalise(q + _weights(scores[best]) @ y[best])


def _reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """(m, m) bool: j is among i's k nearest and i among j's (each node its own neighbour)."""
    top = np.zeros(rank.shape, bool)
    np.put_along_axis(top, rank[:, : k + 1], True, axis=1)
    mutual = top & top.T
    np.fill_diagonal(mutual, True)
    return mutual


def k_reciprocal(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """kr scores (K,) of a shortlist ``x`` (K, d) for query ``q`` (d,): 1 minus the mix of
    Jaccard and original distance, higher is nearer; the graph is the query and ``x`` alone."""
    nodes = np.vstack([q[None, :], x]).astype(np.float32)
    dist = np.maximum(2.0 - 2.0 * (nodes @ nodes.T), 0.0)
    dist /= np.maximum(dist.max(axis=1, keepdims=True), 1e-12)
    rank = np.argsort(dist, axis=1, kind="stable")
    near = _reciprocal(rank, KR_K1).astype(np.float32)
    half = _reciprocal(rank, round(KR_K1 / 2)).astype(np.float32)
    # j's own half-size set joins i's when j is i's and shares more than 2/3 of it with i's.
    joins = (near > 0) & ((near @ half.T) > (2 / 3) * half.sum(axis=1)[None, :])
    members = (near > 0) | ((joins.astype(np.float32) @ half) > 0)
    weights = np.where(members, np.exp(-dist), 0.0).astype(np.float32)
    weights /= weights.sum(axis=1, keepdims=True)
    weights = weights[rank[:, :KR_K2]].mean(axis=1)
    shared = np.minimum(weights[0][None, :], weights[1:]).sum(axis=1)
    jaccard = 1.0 - shared / np.maximum(2.0 - shared, 1e-12)
    return (1.0 - ((1.0 - KR_LAMBDA) * jaccard + KR_LAMBDA * dist[0, 1:])).astype(np.float32)


def rescore(
    method: str,
    q: np.ndarray,
    x: np.ndarray,
    nbr_x: np.ndarray | None = None,
    nbr_sim: np.ndarray | None = None,
) -> np.ndarray:
    """The re-ranked scores (K,) of a shortlist of raw vectors ``x`` (K, d) for query ``q``
    (d,): cosine to each item's DBA vector (``dba``; its neighbours ``nbr_x``, ``nbr_sim``), to
    the expanded query (``qe``), or both; or the k-reciprocal score (``kr``)."""
    if method == "kr":
        return k_reciprocal(q, x)
    y = augment(x, nbr_x, nbr_sim) if uses_lists(method) else x  # type: ignore[arg-type]
    scores = y @ q
    if method.endswith("qe"):
        scores = y @ expand(q, y, scores)
    return scores


def rerank(
    method: str,
    q: np.ndarray,
    cand: np.ndarray,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    lists: Lists | None = None,
    without: int | None = None,
) -> np.ndarray:
    """The re-ranked scores (K,) of a query's shortlist ``cand`` (K ids): ``vectors_of(ids)``
    gives the raw vectors of ascending ids; ``lists`` the gallery's neighbour lists (for DBA),
    the item ``without`` left out of them."""
    nbr = sim = None
    wanted = np.unique(cand)
    if uses_lists(method):
        assert lists is not None
        nbr, sim = lists.rows(cand, without)
        wanted = np.union1d(wanted, nbr[nbr >= 0])
    rows = vectors_of(wanted)

    def at(ids: np.ndarray) -> np.ndarray:  # an id -1 (no neighbour, weight 0) gets any row
        return rows[np.minimum(np.searchsorted(wanted, ids), len(wanted) - 1)]

    return rescore(method, q, at(cand), None if nbr is None else at(nbr), sim)
