"""One Ray cluster for every Ray test: two simulated nodes of one CPU each on this machine
(ray.cluster_utils.Cluster), the test process connected to it as the driver."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from index import IndexStore
from retrieval.indexing.shards import shard_dirs

from ..conftest import run
from ..reliability.conftest import write_gallery

_STORE = 100 * 1024 * 1024  # object store bytes per node


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """A head node and a worker node, one CPU each; shut down after the last Ray test."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'retrieve[ray]'")
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": _STORE, "include_dashboard": False},
    )
    nodes.add_node(num_cpus=1, object_store_memory=_STORE)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, log_to_driver=False, configure_logging=False)
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def answers(index: Path, queries: list[Path], *extra: object) -> list[dict]:
    """``retrieve query --json -k 10`` of each query, parsed."""
    out = run("query", *queries, "--index", index, "-k", 10, "--json", *extra).stdout
    return [json.loads(line) for line in out.splitlines()]


def same_answers(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    """The same labels and neighbours with the same scores, up to float noise (the network
    runs with one thread in a Ray actor, two in a local build) and to the order of neighbours
    with equal scores (the tiny test network gives exact ties; which of two tied items a
    search lists first, or keeps at the k-th place, is arbitrary)."""
    assert [x["label"] for x in a] == [y["label"] for y in b]
    for x, y in zip(a, b, strict=True):
        ours, theirs = x["neighbors"], y["neighbors"]
        assert len(ours) == len(theirs)
        for n, m in zip(ours, theirs, strict=True):
            assert abs(n["score"] - m["score"]) < tol
        found = {(m["path"], m["label"]): m["score"] for m in theirs}
        for n in ours:
            key = (n["path"], n["label"])
            if key in found:
                assert abs(found[key] - n["score"]) < tol
            else:  # cut at the k-th place among equals
                assert abs(n["score"] - theirs[-1]["score"]) < tol


def shard_sizes(index: Path) -> list[int]:
    """Items in each shard of a sharded index."""
    out = []
    for d in shard_dirs(index):
        with IndexStore.open(d) as store:
            out.append(len(store))
    return out


@pytest.fixture(scope="session")
def ray_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 labels x 12 small PNGs."""
    return write_gallery(tmp_path_factory.mktemp("ray") / "gallery", 6, 12)


@pytest.fixture(scope="session")
def local_index(ray_gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-machine build of ray_gallery (flat)."""
    index = tmp_path_factory.mktemp("local") / "index"
    run("build-index", ray_gallery, "--index", index, "--model", "tiny")
    return index


def gallery_queries(gallery: Path, n: int) -> list[Path]:
    """Every few images of the gallery, ``n`` in all."""
    images = sorted(gallery.rglob("*.png"))
    return images[:: max(1, len(images) // n)][:n]


def descendants_named(prefix: str) -> list[int]:
    """Pids of this process's descendants (the Ray nodes it started and their workers) whose
    command line starts with ``prefix``."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            names[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    me = os.getpid()

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return [pid for pid, cmd in names.items() if cmd.startswith(prefix) and ours(pid)]
