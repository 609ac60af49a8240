"""Which FAISS index a gallery of n vectors gets: exact (flat) or inverted lists (IVF), and how.

The IVF parameters follow the FAISS guidelines ("Guidelines to choose an index"): nlist near
4 sqrt(n), the low end of their 4..16 sqrt(n), trained on 40 sampled vectors per list (they ask
for 30..256; FAISS warns under 39). An index is retrained only when n has moved far from what it
was built for, so a gallery hovering at a boundary does not flip back and forth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INDEX_TYPES = ("auto", "flat", "ivf")
"""What ``IndexStore.create`` takes: "auto" is flat up to ``AUTO_IVF_ABOVE`` vectors, then IVF."""

AUTO_IVF_ABOVE = 250_000
"""Flat search of one 512-d query over 250k vectors takes ~30 ms on 2 cores (100k: 11 ms, 500k:
90 ms); past that, exact search stops being interactive and IVF pays for its training."""

TRAIN_PER_LIST = 40
LISTS_PER_ROOT = 4
MIN_NPROBE = 8
LISTS_PER_PROBE = 512


@dataclass(frozen=True)
class Layout:
    """A FAISS index's type ("flat" or "ivf") and, for IVF, its lists and lists searched."""

    type: str
    nlist: int = 0
    nprobe: int = 0

    def to_json(self) -> dict[str, object]:
        if self.type == "flat":
            return {"type": "flat"}
        return {"type": self.type, "nlist": self.nlist, "nprobe": self.nprobe}


FLAT = Layout("flat")


def check_type(index_type: str) -> str:
    """``index_type`` if it is one of ``INDEX_TYPES``, else ValueError."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
    return index_type


def _ideal_nlist(n: int) -> float:
    return min(LISTS_PER_ROOT * math.sqrt(n), n / TRAIN_PER_LIST)


def _wants_ivf(index_type: str, n: int, current: Layout | None) -> bool:
    if index_type == "flat" or n < 2 * TRAIN_PER_LIST:
        return False
    if index_type == "ivf":
        return True
    was_ivf = current is not None and current.type == "ivf"
    return n >= AUTO_IVF_ABOVE // 2 if was_ivf else n > AUTO_IVF_ABOVE


def default_nprobe(nlist: int) -> int:
    """Lists searched per query: nlist / 512, at least 8 (all of them when fewer). At 1M
    clustered 512-d vectors (nlist 4096, scripts/bench_ann.py) 8 probes gave recall@10 1.000
    and 4 gave 0.9995, while 16 cost 1.6x the time."""
    return min(nlist, max(MIN_NPROBE, nlist // LISTS_PER_PROBE))


def choose(index_type: str, n: int, current: Layout | None = None) -> Layout:
    """The layout for ``n`` vectors under ``index_type``: ``current`` while it still fits,
    else a new one. An IVF index needs at least 2 lists of ``TRAIN_PER_LIST`` training vectors,
    so "ivf" holds a flat index until there are that many."""
    check_type(index_type)
    if not _wants_ivf(index_type, n, current):
        return FLAT
    ideal = _ideal_nlist(n)
    if current is not None and current.type == "ivf" and ideal / 2 <= current.nlist <= ideal * 2:
        return current
    nlist = 2 ** round(math.log2(ideal))
    if nlist * TRAIN_PER_LIST > n:
        nlist = 2 ** math.floor(math.log2(ideal))
    return Layout("ivf", nlist, default_nprobe(nlist))


def train_size(layout: Layout, n: int) -> int:
    """How many of the ``n`` vectors train an IVF layout's lists."""
    return min(n, TRAIN_PER_LIST * layout.nlist)
