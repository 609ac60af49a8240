"""build-index on a Ray cluster: images embedded by Ray Data ``map_batches`` on a pool of actors
that each load the exported ONNX network once, and IVF lists filled in parallel Ray tasks. The
rest (scan, dedupe, export, staging, resume, swap) is retrieval.indexing.build.build_index's.

Ray is an optional extra: it is imported only here, inside the functions that use it (and in
retrieval/shard_actors.py)."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index import Layout, add_part, build_faiss, build_in_parts
from retrieval.datasets.folders import Record
from retrieval.engine.embed import EmbedResult
from retrieval.engine.network import ModelEntry
from retrieval.engine.runtime import OnnxForward
from retrieval.errors import InputError, ModelError, RetrieveError, require_extra
from retrieval.indexing.build import BuildReport, Network, build_index
from retrieval.indexing.ingest import CHUNK

log = logging.getLogger(__name__)

_NO_BOX = -1  # box column value of a record without a box


def require_ray(flag: str = "--ray") -> None:
    """InputError unless Ray can be imported."""
    require_extra("ray", extra="ray", flag=flag, what="Ray")


def quiet_ray() -> None:
    """Ray's own log lines off stderr, but for errors: the command reports its progress."""
    import ray.data  # noqa: F401  (it sets up its loggers when imported)

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def connected(address: str | None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Ray connected for the block: to the cluster at ``address`` ("host:port", or "auto"), or
    to a new one on this machine (``address`` None or "", with ``num_cpus``). If this process
    is connected already, that connection is used and kept."""
    require_ray()
    import ray

    if address:
        _check_reachable(address)
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(
            address=address or "local",  # "local": a new instance, never one already running
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RetrieveError(f"--ray: cannot connect to {where}: {exc}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """RetrieveError at once if nothing listens at a "host:port" address (Ray itself would
    retry for minutes); other forms ("auto", "ray://...") are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise RetrieveError(
            f"--ray {address}: nothing answers there ({exc.strerror or exc}); start the head "
            "node with 'ray start --head' and give the address it prints"
        ) from exc


def is_ray_error(exc: BaseException) -> bool:
    import ray

    return isinstance(exc, ray.exceptions.RayError)


def ray_error_line(exc: BaseException) -> str:
    """The line of a Ray error that names its cause (Ray puts a traceback before it)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def cluster_cpus() -> int:
    """CPUs of the connected cluster."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class _EmbedBatches:
    """A Ray Data actor: loads the ONNX network once, then decodes and embeds batches of rows
    (path, box) into rows (vector, error); a row that cannot be decoded gets a zero vector and
    its error, never fails the batch."""

    def __init__(self, onnx: list[Any], entry: dict[str, Any], batch_size: int) -> None:
        import ray

        (model,) = ray.get(onnx)  # a reference the driver holds: a restarted actor reads it too
        self.embedder = ModelEntry.parse(entry, "the exported network's model entry").embedder(
            OnnxForward(model, threads=1, source="the exported network"),
            runtime="onnxruntime",
            batch_size=batch_size,
            num_workers=0,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        boxes = [None if b[0] == _NO_BOX else tuple(int(v) for v in b) for b in batch["box"]]
        result = self.embedder.embed_paths(paths, boxes=boxes)
        vectors = np.zeros((len(paths), self.embedder.dim), np.float32)
        vectors[result.ok] = result.vectors
        reasons = dict(result.failures)
        errors = np.array([reasons.get(p, "") for p in paths], dtype=object)
        return {"row": batch["row"], "vector": vectors, "error": errors}


@dataclass
class RayEmbedding:
    """build.Embedding on the connected Ray cluster: ``workers`` embedding actors (None: one
    per CPU of the cluster), each of one CPU; IVF lists filled by ``workers`` tasks."""

    workers: int | None = None

    def _pool(self) -> int:
        return self.workers or cluster_cpus()

    def parts(
        self, network: Network, records: Sequence[Record], progress: Callable[[int], None]
    ) -> Iterator[EmbedResult]:
        """``records`` embedded in order by the actor pool, a chunk of CHUNK at a time. A
        worker that dies is replaced and its batch retried (Ray Data's actor restarts)."""
        if network.onnx is None:
            raise ModelError(
                f"--ray runs the exported ONNX network, but {network.name} has none (onnxruntime "
                "is missing, or the export differs from torch); build without --ray"
            )
        if not records:
            return
        import ray

        rows = [
            {
                "row": i,
                "path": str(r.path),
                "box": list(r.box) if r.box is not None else [_NO_BOX] * 4,
            }
            for i, r in enumerate(records)
        ]
        pool = self._pool()
        batch = network.embedder.batch_size
        blocks = max(pool, min(len(rows) // batch + 1, 4 * pool))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        ds.context.execution_options.preserve_order = True  # ids as in a local build
        ds.context.enable_progress_bars = False  # the caller's progress reports it
        ds.context.print_on_execution_start = False
        ds = ds.map_batches(
            _EmbedBatches,
            fn_constructor_kwargs={
                "onnx": [ray.put(network.onnx)],
                "entry": network.entry,
                "batch_size": batch,
            },
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=1,
        )
        try:
            for out in ds.iter_batches(batch_size=CHUNK, batch_format="numpy"):
                ok = [int(i) for i, e in zip(out["row"], out["error"], strict=True) if not e]
                good = np.array([not e for e in out["error"]], dtype=bool)
                failures = [
                    (str(records[int(i)].path), str(e))
                    for i, e in zip(out["row"], out["error"], strict=True)
                    if e
                ]
                progress(len(out["row"]))
                yield EmbedResult(np.ascontiguousarray(out["vector"][good]), ok, failures)
        except ray.exceptions.RayError as exc:
            raise RetrieveError(f"the Ray build failed: {ray_error_line(exc)}") from exc

    def build(self, layout: Layout, ids: np.ndarray, vectors: np.ndarray) -> Any:
        """The FAISS index of ``layout``: an IVF one is trained here on the same sample as a
        single-machine build, then its lists are filled by parallel Ray tasks, one per slice
        of the vectors, and merged in order (so each list holds the same ids in the same
        order as when added in one go)."""
        pool = self._pool()
        if layout.type == "flat" or pool < 2:
            return build_faiss(layout, ids, vectors)
        import ray

        def run(blob: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            task = ray.remote(num_cpus=1)(add_part)
            shared = ray.put(blob)
            return ray.get([task.remote(shared, part_ids, rows) for part_ids, rows in parts])

        return build_in_parts(layout, ids, vectors, pool, run)


def build_index_on_ray(
    gallery: str | Path,
    index_dir: str | Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    **options: Any,
) -> BuildReport:
    """build.build_index with the embedding (and IVF lists) on Ray: joining the cluster at
    ``address``, or starting Ray on this machine (``address`` None or "") with ``workers``
    CPUs. ``options`` are build_index's."""
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    with connected(address, num_cpus=workers):
        return build_index(gallery, index_dir, embedding=RayEmbedding(workers), **options)
