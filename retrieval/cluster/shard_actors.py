"""Sharded search on Ray: one actor per shard holds that shard's index in its memory; a query
is fanned out to every actor and the best k merged (retrieval/shards.py owns the layout and
the merge). Ray is imported only inside these functions (an optional extra)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index import Hit, IndexStore
from retrieval.cluster.distributed import connected, is_ray_error, ray_error_line
from retrieval.errors import RetrieveError
from retrieval.indexing.shards import merge_hits, own_neighbors


class _ShardServer:
    """A Ray actor serving one shard: the index opened once; a search sees every write
    committed before it (the store follows the records' generation)."""

    def __init__(self, folder: str) -> None:
        self.store = IndexStore.open(folder)

    def neighbors(self, vector: np.ndarray, sha: str | None, k: int) -> list[Hit]:
        return own_neighbors(self.store, vector, sha, k)

    def count(self) -> int:
        return len(self.store)


class RayShards(contextlib.AbstractContextManager):
    """A shard server actor for each of ``dirs`` on the Ray cluster at ``address`` (""
    starts Ray on this machine; an existing connection of this process is used). The actors
    reserve no CPU: they serve while embedding actors work. ``neighbors`` asks every shard at
    once and merges their best k."""

    def __init__(self, dirs: Sequence[Path], address: str) -> None:
        self.actors: list[Any] = []
        self._connection = contextlib.ExitStack()
        self._connection.enter_context(connected(address))
        try:
            import ray

            server = ray.remote(num_cpus=0)(_ShardServer)
            self.actors = [server.remote(str(d)) for d in dirs]
            ray.get([a.count.remote() for a in self.actors])  # every shard opened, or its error
        except BaseException as exc:
            self.close()
            if not is_ray_error(exc):
                raise
            raise RetrieveError(f"a shard could not be served: {ray_error_line(exc)}") from exc

    def neighbors(self, vector: np.ndarray, sha: str | None, k: int) -> list[Hit]:
        import ray

        try:
            rows = ray.get([a.neighbors.remote(vector, sha, k) for a in self.actors])
        except ray.exceptions.RayError as exc:
            raise RetrieveError(f"a shard did not answer: {ray_error_line(exc)}") from exc
        return merge_hits(rows, k)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        self._connection.close()

    def __exit__(self, *exc: object) -> None:
        self.close()
