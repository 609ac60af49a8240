"""Which FAISS index a gallery of n vectors gets: exact (flat), inverted lists of whole vectors
(ivf), or inverted lists of compact codes re-scored exactly (compact), and how.

The IVF parameters follow the FAISS guidelines ("Guidelines to choose an index"): nlist near
4 sqrt(n), the low end of their 4..16 sqrt(n), trained on 40 sampled vectors per list (they ask
for 30..256; FAISS warns under 39). An index is retrained only when n has moved far from what it
was built for, so a gallery hovering at a boundary does not flip back and forth.

compact: vectors of more than ``PCA_DIMS`` dimensions are first projected on their
``PCA_DIMS`` principal axes, then coded on 8 bits per dimension (SQ8) in nlist inverted lists
compared by L2 distance (the same order as cosine for unit vectors); a search scans
``nlist / COMPACT_PROBE_DIVISOR`` lists and the store re-scores the best ``RERANK`` codes with
the records' float vectors, so every score it returns is exact. Measured on a million realistic
1280-d vectors (scripts/bench_ann.py, README): 264 bytes per vector instead of 5,128
for ivf, recall@10 against exact search 0.98, the k-NN vote the exact one for 99 % of queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INDEX_TYPES = ("auto", "flat", "ivf", "compact")
"""What ``IndexStore.create`` takes: "auto" is flat up to ``AUTO_COMPACT_ABOVE`` vectors, then
compact; "ivf" (inverted lists of whole float vectors) is chosen only by name."""

AUTO_COMPACT_ABOVE = 50_000
"""Past 50,000 1280-d vectors a flat index holds more than 256 MB and one query's exact search
takes ~9 ms on the benchmark machine, growing with n, while compact answers a million in 5 ms
from a tenth of the memory (README, "A million photos on one machine", has the measurements)."""

TRAIN_PER_LIST = 40
LISTS_PER_ROOT = 4
MIN_NPROBE = 8
LISTS_PER_PROBE = 512
PCA_DIMS = 256
COMPACT_PROBE_DIVISOR = 8
RERANK = 64
COMPACT_MIN = 1000
PCA_MIN_VARIANCE = 0.75
"""A compact index projects its vectors only when its PCA_DIMS principal axes keep this share of
the training sample's variance: 0.83 on the default network's embeddings of cub50-dev and 0.82 on
the realistic million, where recall@10 is 0.98; 0.59 on 512-d isotropic clusters (the old
benchmark set), where the projection cut recall@10 to 0.74. Otherwise it codes every dimension
(SQ8: a quarter of the float vector)."""
"""Below this many vectors "compact" keeps a flat index: too few to train its codes on."""


@dataclass(frozen=True)
class Layout:
    """A FAISS index's type ("flat", "ivf" or "compact") and, for the inverted-list types, its
    lists and lists searched; for compact, the dimensions kept by its projection (0: none) and
    how many of its best codes a search re-scores exactly."""

    type: str
    nlist: int = 0
    nprobe: int = 0
    pca: int = 0
    rerank: int = 0

    def to_json(self) -> dict[str, object]:
        if self.type == "flat":
            return {"type": "flat"}
        if self.type == "ivf":
            return {"type": self.type, "nlist": self.nlist, "nprobe": self.nprobe}
        return {
            "type": self.type,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "pca": self.pca,
            "codes": "SQ8",
            "rerank": self.rerank,
        }


FLAT = Layout("flat")


def check_type(index_type: str) -> str:
    """``index_type`` if it is one of ``INDEX_TYPES``, else ValueError."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
    return index_type


def _ideal_nlist(n: int) -> float:
    return min(LISTS_PER_ROOT * math.sqrt(n), n / TRAIN_PER_LIST)


def _wanted(index_type: str, n: int, current: Layout | None) -> str:
    """The type of index ``n`` vectors get under ``index_type``, given the ``current`` one."""
    if index_type == "ivf":
        return "ivf" if n >= 2 * TRAIN_PER_LIST else "flat"
    if index_type == "flat" or n < COMPACT_MIN:
        return "flat"
    if index_type == "compact":
        return "compact"
    was_compact = current is not None and current.type == "compact"
    threshold = AUTO_COMPACT_ABOVE // 2 if was_compact else AUTO_COMPACT_ABOVE
    return "compact" if n > threshold or (was_compact and n >= threshold) else "flat"


def default_nprobe(nlist: int) -> int:
    """Lists searched per query by an ivf index: nlist / 512, at least 8 (all of them when
    fewer). At 1M clustered 512-d vectors (nlist 4096) 8 probes gave recall@10 1.000 and 4 gave
    0.9995, while 16 cost 1.6x the time."""
    return min(nlist, max(MIN_NPROBE, nlist // LISTS_PER_PROBE))


def compact_nprobe(nlist: int) -> int:
    """Lists searched per query by a compact index: an eighth of them. Real embeddings are not
    clustered like the synthetic set above: at a million realistic 1280-d vectors and 4096 lists
    a query's 10 nearest neighbours fall in the 512 nearest lists 99 % of the time, in the 256
    nearest 96 %."""
    return min(nlist, max(MIN_NPROBE, nlist // COMPACT_PROBE_DIVISOR))


def _nlist(n: int) -> int:
    ideal = _ideal_nlist(n)
    nlist: int = 2 ** round(math.log2(ideal))
    if nlist * TRAIN_PER_LIST > n:
        nlist = 2 ** math.floor(math.log2(ideal))
    return nlist


def choose(index_type: str, n: int, current: Layout | None = None, dim: int = 0) -> Layout:
    """The layout for ``n`` vectors of ``dim`` dimensions under ``index_type``: ``current``
    while it still fits, else a new one. An IVF index needs at least 2 lists of
    ``TRAIN_PER_LIST`` training vectors, so "ivf" holds a flat index until there are that many;
    "compact" until ``COMPACT_MIN``."""
    check_type(index_type)
    kind = _wanted(index_type, n, current)
    if kind == "flat":
        return FLAT
    ideal = _ideal_nlist(n)
    if (
        current is not None
        and current.type == kind
        and ideal / 2 <= current.nlist <= ideal * 2
        and (kind == "ivf" or not dim or current.pca in (0, pca_dims(dim)))
    ):
        return current
    nlist = _nlist(n)
    if kind == "ivf":
        return Layout("ivf", nlist, default_nprobe(nlist))
    return Layout("compact", nlist, compact_nprobe(nlist), pca_dims(dim), RERANK)


def pca_dims(dim: int) -> int:
    """Dimensions a compact index of ``dim``-d vectors projects them to (0: all, without a
    projection); its training drops the projection when it keeps too little (PCA_MIN_VARIANCE)."""
    return PCA_DIMS if dim > PCA_DIMS else 0


def train_size(layout: Layout, n: int) -> int:
    """How many of the ``n`` vectors train an IVF layout's lists."""
    return min(n, TRAIN_PER_LIST * layout.nlist)
