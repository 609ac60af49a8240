"""build-index --ray on a real two-node Ray cluster: the same answers as the single-machine
build (flat: identical; IVF: recall@10 >= 0.99), IVF lists filled in parallel, joining a
cluster by its address, a worker killed mid-build, and the install without Ray."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index import IndexStore, Layout, backend
from retrieval.cluster.distributed import RayEmbedding, build_index_on_ray
from retrieval.indexing.shards import shard_dirs

from ..helpers import (
    COMMAND_ENV,
    REPO,
    answers,
    gallery_queries,
    record,
    retrieve_exe,
    run,
    same_answers,
    write_gallery,
)
from .conftest import descendants_named

pytestmark = pytest.mark.slow


def items(index: Path) -> list[tuple[int, str, str, str]]:
    with IndexStore.open(index) as store:
        return [(i.id, i.label, i.path, i.sha256) for i in store.items()]


def test_flat_build_on_ray_gives_the_local_answers(
    cluster, ray_gallery: Path, local_index: Path, tmp_path: Path
):
    index = tmp_path / "ray"
    out = run(
        "build-index", ray_gallery, "--index", index, "--model", "tiny", "--ray", "--workers", 2
    ).stdout
    assert f"indexed 72 images of 6 labels into {index} (tiny, 64-d)" in out
    queries = gallery_queries(ray_gallery, 8)
    same_answers(answers(local_index, queries), answers(index, queries))
    # Committed in the gallery's order: the same ids, records and network as the local build.
    assert items(index) == items(local_index)
    assert (index / "model.onnx").read_bytes() == (local_index / "model.onnx").read_bytes()
    assert "index OK: 72 items, 6 labels" in run("check", "--index", index).stdout


def test_ivf_build_on_ray_keeps_recall_against_flat(cluster, tmp_path: Path):
    gallery = write_gallery(tmp_path / "gallery", 10, 30)
    flat, ivf = tmp_path / "flat", tmp_path / "ivf"
    run("build-index", gallery, "--index", flat, "--model", "tiny", "--index-type", "flat")
    run("build-index", gallery, "--index", ivf, "--model", "tiny", "--index-type", "ivf", "--ray")
    info = json.loads(run("info", "--index", ivf, "--json").stdout)
    assert info["count"] == 300 and info["faiss"]["type"] == "ivf"
    queries = gallery_queries(gallery, 30)
    exact, approx = answers(flat, queries), answers(ivf, queries)
    found = [
        len({n["path"] for n in a["neighbors"]} & {n["path"] for n in e["neighbors"]})
        for a, e in zip(approx, exact, strict=True)
    ]
    assert sum(found) / (10 * len(queries)) >= 0.99
    assert "index OK: 300 items" in run("check", "--index", ivf).stdout


def test_ivf_lists_filled_in_parallel_equal_one_add(cluster):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64) * 7 + 5
    layout = Layout("ivf", 32, 4)
    one = backend.build_index(layout, ids, vectors)
    parallel = RayEmbedding(workers=2).build(layout, ids, vectors)
    assert backend.layout(parallel) == layout
    for a, b in zip(backend.contents(one), backend.contents(parallel), strict=True):
        np.testing.assert_array_equal(a, b)
    queries = vectors[:50] + rng.normal(scale=0.1, size=(50, 32)).astype(np.float32)
    expected, got = backend.search(one, queries, 10), backend.search(parallel, queries, 10)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_joins_a_cluster_by_its_address(
    cluster, ray_gallery: Path, local_index: Path, tmp_path: Path
):
    index = tmp_path / "joined"
    done = subprocess.run(
        [retrieve_exe(), "build-index", ray_gallery, "--index", index, "--model", "tiny"]
        + ["--shards", "2", "--ray", cluster.address],
        capture_output=True,
        text=True,
        timeout=300,
        env=COMMAND_ENV,
    )
    assert done.returncode == 0, done.stderr
    assert "indexed 72 images of 6 labels" in done.stdout and "in 2 shards" in done.stdout
    assert [len(items(d)) for d in shard_dirs(index)] == [36, 36]
    queries = gallery_queries(ray_gallery, 6)
    same_answers(answers(local_index, queries), answers(index, queries))


def test_an_address_where_nothing_answers_is_one_line(ray_gallery: Path, tmp_path: Path):
    index = tmp_path / "index"
    args = ["build-index", ray_gallery, "--index", index, "--model", "tiny", "--ray"]
    r = run(*args, "127.0.0.1:1", ok=False)
    assert r.exit_code == 1
    (line,) = r.output.strip().splitlines()
    assert line.startswith("retrieve: error: --ray 127.0.0.1:1: nothing answers there")
    assert not index.exists()


def readers(path: Path) -> list[int]:
    """Pids of this build's embedding actors that hold ``path`` open."""
    found = []
    for pid in descendants_named("ray::MapWorker"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir()):
                found.append(pid)
    return found


class _KillTheDecoder:
    """The build's progress factory. When the embedding begins (the driver has hashed every
    file and checked the export on the first ones; only actors read images now), a thread
    watches for the actor that opens ``path``, a large photo whose decoding takes seconds, and
    kills it while it decodes, mid-batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.began = threading.Event()
        self.killed: list[int] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._kill, daemon=True)

    @contextlib.contextmanager
    def __call__(self, total: int, desc: str) -> Iterator[object]:
        self.began.set()
        yield self

    def update(self, n: int) -> None:
        pass

    def _kill(self) -> None:
        try:
            if not self.began.wait(timeout=300):
                raise TimeoutError("the embedding never began")
            deadline = time.monotonic() + 120
            while not (found := readers(self.path)) and time.monotonic() < deadline:
                time.sleep(0.005)
            for pid in found[:1]:
                process = os.pidfd_open(pid)
                try:
                    signal.pidfd_send_signal(process, signal.SIGKILL)
                    self.killed.append(pid)
                    select.select([process], [], [], 60)  # gone when its pidfd turns readable
                finally:
                    os.close(process)
        except BaseException as exc:  # the test reports it
            self.errors.append(exc)

    def __enter__(self) -> _KillTheDecoder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.began.set()
        self.thread.join(timeout=180)


def big_photo(path: Path) -> Path:
    """A 36-megapixel PNG of noise stripes: seconds to decode on one core."""
    from PIL import Image

    rng = np.random.default_rng(5)
    row = rng.integers(0, 256, (1, 6000, 3), dtype=np.uint8)
    Image.fromarray(np.repeat(row, 6000, axis=0)).save(path, compress_level=1)
    return path


def test_a_worker_killed_mid_batch_is_replaced_and_its_batch_retried(cluster, tmp_path: Path):
    """An embedding actor is killed while it decodes a batch: Ray restarts it and retries the
    batch, and the build ends as a local build of the same gallery does."""
    gallery = write_gallery(tmp_path / "gallery", 6, 100)
    # The last image: past the first ones, which the export is checked on in the driver.
    held = big_photo(gallery / "label05" / "0099.png")
    local, target = tmp_path / "local", tmp_path / "index"
    run("build-index", gallery, "--index", local, "--model", "tiny")
    old = write_gallery(tmp_path / "old", 2, 3, seed=99)
    run("build-index", old, "--index", target, "--model", "tiny")
    with _KillTheDecoder(held) as killer:
        report = build_index_on_ray(
            gallery, target, workers=2, model="tiny", batch_size=4, force=True, progress=killer
        )
    assert killer.errors == []
    assert len(killer.killed) == 1, "no embedding actor was decoding the photo to be killed"
    assert (report.added, report.skipped) == (600, [])
    assert items(target) == items(local)
    with IndexStore.open(target) as ray_store, IndexStore.open(local) as local_store:
        (ray_ids, ray_vectors), (ids, vectors) = ray_store.vectors(), local_store.vectors()
    np.testing.assert_array_equal(ray_ids, ids)
    np.testing.assert_allclose(ray_vectors, vectors, atol=1e-5)
    assert "index OK: 600 items, 6 labels" in run("check", "--index", target).stdout
    record("SIGKILL of a Ray embedding actor during build-index --ray", outcome="completed")


NO_RAY = """
    import sys
    sys.modules["ray"] = None  # as if Ray were not installed
    from click.testing import CliRunner
    from retrieval.faces.cli import main
    gallery, index = sys.argv[1:3]
    for args in (
        ["build-index", gallery, "--index", index, "--model", "tiny", "--ray"],
        ["build-index", gallery, "--index", index, "--model", "tiny"],
        ["query", gallery + "/label00/0000.png", "--index", index, "--ray"],
        ["query", gallery + "/label00/0000.png", "--index", index],
    ):
        r = CliRunner().invoke(main, args)
        print(r.exit_code, r.output.strip().splitlines()[0])
"""


def test_without_the_extra_ray_is_never_imported(tmp_path: Path):
    gallery = write_gallery(tmp_path / "gallery", 2, 3)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_RAY), gallery, tmp_path / "index"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=COMMAND_ENV,
    )
    assert done.returncode == 0, done.stderr
    needs = "needs Ray, which is not installed: pip install 'retrieve[ray]'"
    lines = done.stdout.splitlines()
    assert lines[0] == f"1 retrieve: error: --ray {needs}"
    assert lines[1].startswith("0 indexed 6 images of 2 labels")
    assert lines[2] == f"1 retrieve: error: --ray {needs}"
    assert lines[3].startswith(f"0 {gallery}/label00/0000.png: label0")
