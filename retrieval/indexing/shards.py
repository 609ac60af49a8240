"""A sharded index: a folder holding ``shards.json`` and N ordinary index folders (each an
IndexStore of its own), searched by fanning each query out to every shard and merging the top k.
This module owns the layout, the per-shard search and the merge; no Ray (the actors that serve
shards on a cluster are in retrieval/shard_actors.py)."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from index import Hit, IndexFormatError, IndexStore, Item, atomic_write_bytes

SHARDS_FILE = "shards.json"
FORMAT_VERSION = 1


def shard_name(i: int) -> str:
    return f"shard-{i:03d}"


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a sharded index's ``shards.json``."""
    return (Path(path) / SHARDS_FILE).is_file()


def write_shards(root: Path, count: int) -> None:
    """Write ``root/shards.json`` naming ``count`` shard folders (atomically)."""
    doc = {"format_version": FORMAT_VERSION, "shards": [shard_name(i) for i in range(count)]}
    atomic_write_bytes(root / SHARDS_FILE, json.dumps(doc, indent=2).encode("utf-8"))


def shard_dirs(root: str | Path) -> list[Path]:
    """The shard folders that ``root/shards.json`` names, in order. IndexFormatError naming the
    file when it is unreadable or names anything but plain sub-folder names."""
    path = Path(root) / SHARDS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: not a shards file of format_version {FORMAT_VERSION}")
    names = doc.get("shards")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n and Path(n).name == n and n[0] != "." for n in names)
    ):
        raise IndexFormatError(f"{path}: 'shards' must be a non-empty list of folder names")
    return [Path(root) / n for n in names]


def smallest(stores: Sequence[IndexStore]) -> IndexStore:
    """The shard holding the fewest items (the first of those): enrolment goes there, so that
    the shards stay balanced."""
    sizes = [len(s) for s in stores]
    return stores[sizes.index(min(sizes))]


def find_content(stores: Sequence[IndexStore], sha256s: Sequence[str]) -> dict[str, Item]:
    """The item holding each of these content hashes in any of the shards (the first shard's
    if several)."""
    found: dict[str, Item] = {}
    for store in reversed(stores):
        found.update(store.find_sha256(sha256s))
    return found


def label_counts(stores: Sequence[IndexStore]) -> dict[str, int]:
    """Items per label over all the shards, sorted by label."""
    total: Counter[str] = Counter()
    for store in stores:
        total.update(store.label_counts())
    return dict(sorted(total.items()))


def deal(n: int, shards: int) -> list[list[int]]:
    """Item indices 0..n-1 dealt round-robin to ``shards`` shards (sizes differ by at most 1)."""
    return [list(range(i, n, shards)) for i in range(shards)]


def own_neighbors(store: IndexStore, vector: np.ndarray, sha: str | None, k: int) -> list[Hit]:
    """The ``k`` nearest items of one query row (1, d), the item with the query's own content
    (sha256 ``sha``; None for an image given in memory) left out: a photo does not vote for
    itself."""
    same = None if sha is None else store.find_sha256([sha]).get(sha)
    (row,) = store.search(vector, k + (same is not None))
    return [h for h in row if same is None or h.id != same.id][:k]


def merge_hits(rows: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """The best ``k`` of every shard's hits, by descending score (ties: earlier shard first).
    Exact over flat shards: the global top k is among the shards' top k."""
    every = [h for row in rows for h in row]
    order = sorted(range(len(every)), key=lambda i: -every[i].score)
    return [every[i] for i in order[:k]]


class ShardSearch(Protocol):
    """Searches every shard of an index for one query and merges the best k (see
    own_neighbors and merge_hits); a context manager that releases the shards."""

    def neighbors(self, vector: np.ndarray, sha: str | None, k: int) -> list[Hit]: ...

    def __enter__(self) -> ShardSearch: ...

    def __exit__(self, *exc: object) -> None: ...


class LocalShards(contextlib.AbstractContextManager):
    """Every shard of an index as an open store in this process; ``neighbors`` fans out in
    turn."""

    def __init__(self, stores: Sequence[IndexStore]) -> None:
        self.stores = list(stores)

    def neighbors(self, vector: np.ndarray, sha: str | None, k: int) -> list[Hit]:
        return merge_hits([own_neighbors(s, vector, sha, k) for s in self.stores], k)

    def __exit__(self, *exc: object) -> None:
        return None
