"""One Ray cluster for every Ray test: two simulated nodes of one CPU each on this machine
(ray.cluster_utils.Cluster), the test process connected to it as the driver."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..helpers import run, write_gallery

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
