"""build-index: a gallery embedded into a new index, built in a staging folder beside the target
under its writer lock, committed a chunk at a time, resumed after an interruption, and swapped
into place in one atomic step when complete. Where the images are embedded is an Embedding:
this process (LOCAL) or a Ray cluster (retrieval/distributed.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from index import (
    LOCK_FILE,
    Builder,
    IndexExistsError,
    IndexLockedError,
    IndexStore,
    IndexStoreError,
    aside_name,
    exchange,
    writer_lock,
)
from retrieval.config import PRECISIONS
from retrieval.datasets import DatasetOptions
from retrieval.datasets.folders import Record
from retrieval.engine.embed import Embedder, EmbedResult
from retrieval.engine.runtime import ONNX_FILE, OnnxForward, onnx_entry
from retrieval.errors import InputError, ModelError
from retrieval.indexing import dba
from retrieval.indexing.calibration import check_settings, recalibrate
from retrieval.indexing.ingest import Embedded, commit_parts, dedupe, hash_records, local_parts
from retrieval.indexing.shards import deal, is_sharded, shard_name, write_shards
from retrieval.progress import ProgressFactory, no_progress

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    index: Path
    model: str
    dim: int
    added: int
    labels: dict[str, int]
    skipped: list[tuple[str, str]]
    duplicates: list[tuple[str, str]]
    seconds: float
    resumed: int = 0
    shards: int = 1

    @property
    def images_per_second(self) -> float:
        """Images embedded per second by this run (those resumed from an earlier one left out)."""
        embedded = self.added - self.resumed
        return embedded / self.seconds if self.seconds > 0 else 0.0


def staging_dir(index_dir: str | Path) -> Path:
    """Where build-index builds the index that is to replace ``index_dir``: a hidden sibling
    folder, kept when a build is interrupted, so that the same command resumes it."""
    target = Path(index_dir)
    return target.parent / f".{target.name}.building"


def stray_builds(target: Path) -> list[Path]:
    """Folders beside ``target`` that interrupted builds left and nothing will use: a parked old
    index (see fsutil.exchange) once ``target`` is in place again."""
    aside = aside_name(target)
    return [aside] if aside.is_dir() and target.exists() else []


def _holds_files(folder: Path) -> bool:
    return any(e.name != LOCK_FILE for e in folder.iterdir())


def _open_staging(staging: Path, network: Network, index_type: str) -> tuple[IndexStore, bool]:
    """The index in ``staging`` if it was begun with the same network and index type (True),
    else a new one. A new one is created with the exported network beside it, written before
    its manifest: a staging index never names a model.onnx it lacks, wherever a build is
    killed."""
    files = {} if network.onnx is None else {ONNX_FILE: network.onnx}
    if IndexStore.is_index(staging):
        try:
            store = IndexStore.open(staging)
        except IndexStoreError as exc:
            log.info("starting %s afresh: %s", staging, exc)
        else:
            as_stored = json.loads(json.dumps(network.entry))  # as the manifest holds it
            same = store.model == as_stored and store.manifest.index_type == index_type
            if same and all(_holds(staging / name, data) for name, data in files.items()):
                return store, True
            store.close()
            log.info("starting %s afresh: it was begun with another network or type", staging)
    store = IndexStore.create(
        staging,
        network.entry["dim"],
        network.entry,
        overwrite=True,
        index_type=index_type,
        files=files,
    )
    return store, False


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _resume(
    store: IndexStore, records: Sequence[Record], shas: Sequence[str]
) -> tuple[list[int], int]:
    """Which of ``records`` still need embedding into a staging index: those it does not hold
    with the same path, content and label. Staged items that are not part of this build (files
    changed, removed, or of another gallery) are removed. Returns (indices to embed, how many
    staged items are kept)."""
    planned = {
        (str(Path(r.path).resolve()), sha, r.label) for r, sha in zip(records, shas, strict=True)
    }
    staged = {(item.path, item.sha256, item.label): item.id for item in store.items()}
    store.remove_ids([i for key, i in staged.items() if key not in planned])
    todo = [
        i
        for i, (r, sha) in enumerate(zip(records, shas, strict=True))
        if (str(Path(r.path).resolve()), sha, r.label) not in staged
    ]
    return todo, len(records) - len(todo)


@dataclass
class Network:
    """The network a build embeds with: its name, an Embedder in this process, the manifest's
    model entry, and the exported ONNX model (None when it runs in torch)."""

    name: str
    embedder: Embedder
    entry: dict[str, Any]
    onnx: bytes | None


class Embedding(Protocol):
    """Where build-index embeds: in this process (LOCAL) or on a Ray cluster
    (retrieval.cluster.distributed.RayEmbedding)."""

    build: Builder | None
    """Makes the FAISS index from the records at the end of the build (None: in this process)."""

    def parts(
        self, network: Network, records: Sequence[Record], progress: Callable[[int], None]
    ) -> Iterator[EmbedResult]:
        """``records`` embedded, in order, a chunk at a time; ``ok`` indexes ``records``."""
        ...


class _LocalEmbedding:
    build: Builder | None = None

    def parts(
        self, network: Network, records: Sequence[Record], progress: Callable[[int], None]
    ) -> Iterator[EmbedResult]:
        return local_parts(network.embedder, records, progress)


LOCAL: Embedding = _LocalEmbedding()


def _network(
    model: str,
    weights: str | None,
    sample: Sequence[Record],
    batch_size: int,
    precision: str = "float32",
) -> Network:
    """The model loaded, exported to ONNX and checked against torch on images of ``sample``;
    with ``precision`` "int8", the export quantised, calibrated on images drawn from
    ``sample`` (retrieval/nets/quantize.py)."""
    from retrieval.nets.export import fast_embedder
    from retrieval.nets.model import load_model

    loaded = load_model(model, weights=weights)
    embedder, onnx = fast_embedder(loaded, sample, batch_size=batch_size)
    entry = loaded.describe()
    if precision == "int8":
        from retrieval.nets.quantize import calibration_images, quantize_int8

        if onnx is None:
            raise ModelError(
                f"--precision int8 quantises the exported ONNX network, but {loaded.name} has "
                "none (onnxruntime is missing, or the export differs from torch)"
            )
        onnx = quantize_int8(onnx, calibration_images(embedder, sample))
        embedder = loaded.entry.embedder(
            OnnxForward(onnx), runtime="onnxruntime", batch_size=batch_size
        )
    if onnx is not None:
        entry["onnx"] = onnx_entry(onnx, precision)
    return Network(loaded.name, embedder, entry, onnx)


@dataclass
class _Filled:
    embedded: Embedded
    labels: dict[str, int]
    total: int
    resumed: int


def _fill(
    folder: Path,
    records: Sequence[Record],
    shas: Sequence[str],
    network: Network,
    index_type: str,
    embedding: Embedding,
    progress: ProgressFactory,
) -> _Filled:
    """Make the staging index in ``folder`` hold ``records``: what it holds of them from an
    interrupted build is kept (if begun with the same model and type), the rest embedded and
    committed a chunk at a time; the FAISS file is written once, at the end."""
    store, resuming = _open_staging(folder, network, index_type)
    with store, store.bulk(embedding.build):
        todo, resumed = _resume(store, records, shas) if resuming else (range(len(records)), 0)
        todo_records = [records[i] for i in todo]
        todo_shas = [shas[i] for i in todo]
        with progress(len(todo_records), "embedding") as bar:
            parts = embedding.parts(network, todo_records, bar.update)
            embedded = commit_parts(store, todo_records, todo_shas, parts)
        return _Filled(embedded, store.label_counts(), len(store), resumed)


def _reset_staging(staging: Path, shards: int) -> None:
    """Empty a staging folder that an interrupted build began with another number of shards
    (nothing in it would be resumed), then mark a sharded one with its shards.json."""
    names = sorted(e.name for e in staging.iterdir() if e.is_dir())
    wanted = [] if shards == 1 else [shard_name(i) for i in range(shards)]
    begun_sharded = is_sharded(staging) or bool(names)
    if begun_sharded != bool(wanted) or (wanted and names and names != wanted):
        for entry in staging.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name != LOCK_FILE:
                entry.unlink()
    if wanted:
        write_shards(staging, shards)


def build_index(
    gallery: str | Path,
    index_dir: str | Path,
    *,
    model: str = "efficientnet_lite0",
    weights: str | None = None,
    batch_size: int = 32,
    force: bool = False,
    dataset: DatasetOptions | None = None,
    index_type: str = "auto",
    shards: int = 1,
    embedding: Embedding = LOCAL,
    known_accept: float | None = None,
    absent_share: float | None = None,
    precision: str = "float32",
    progress: ProgressFactory = no_progress,
) -> BuildReport:
    """Embed every image of a gallery into a new index at ``index_dir``: a folder with one
    sub-folder per label, or a benchmark in its official layout read with ``dataset``'s options
    (format, split, bounding-box crop, label level). ``index_type`` is "auto" (exact search up to
    index.AUTO_COMPACT_ABOVE vectors, then compact), "flat", "ivf" or "compact". With ``shards`` > 1 the index is a
    sharded one (retrieval/shards.py): the images dealt round-robin to that many ordinary index
    folders. ``embedding`` says where the images are embedded (this process, or a Ray cluster).
    ``precision`` "int8" stores and runs the exported network quantised to int8, calibrated on
    images of the gallery (retrieval/nets/quantize.py); "float32" (the default) as exported.

    The index is built in ``staging_dir(index_dir)`` under that folder's writer lock, committed
    a chunk of CHUNK images at a time, and swapped into place in one atomic step only when
    complete: an existing index is untouched until then. An interrupted build is resumed by
    the same command: images the staging folder holds with the same path and content are not
    embedded again (anything else in it is dropped); begun with another model, it starts over.
    """
    target = Path(index_dir)
    check_settings(known_accept, absent_share)
    if shards < 1:
        raise InputError(f"--shards must be at least 1, not {shards}")
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if IndexStore.is_index(target) or is_sharded(target):
        if not force:
            raise IndexExistsError(f"{target} already holds an index; pass --force to replace it")
    elif target.exists() and (not target.is_dir() or _holds_files(target)):
        raise IndexExistsError(f"{target} exists and is not an index; choose another --index")
    scan = (dataset or DatasetOptions()).scan(gallery)
    network = _network(model, weights, scan.records, batch_size, precision)
    start = time.perf_counter()
    readable, shas, unreadable = hash_records(scan.records)
    scan.skipped.extend(unreadable)
    keep, dupes = dedupe(readable, shas, {})
    records = [readable[i] for i in keep]
    shas = [shas[i] for i in keep]
    target.parent.mkdir(parents=True, exist_ok=True)
    for stray in stray_builds(target):
        shutil.rmtree(stray, ignore_errors=True)
    staging = staging_dir(target)
    staging.mkdir(exist_ok=True)
    lock = writer_lock(staging)
    if not lock.acquire(timeout=0):
        raise IndexLockedError(
            f"another build-index into {target} is running{lock.holder()}; wait for it to end"
        )
    try:
        _reset_staging(staging, shards)
        folders = [staging] if shards == 1 else [staging / shard_name(i) for i in range(shards)]
        filled = [
            _fill(
                folder,
                [records[i] for i in part],
                [shas[i] for i in part],
                network,
                index_type,
                embedding,
                progress,
            )
            for folder, part in zip(folders, deal(len(records), shards), strict=True)
        ]
        total = sum(f.total for f in filled)
        if total == 0:
            shutil.rmtree(staging)
            raise InputError(f"no image in {gallery} could be read; nothing indexed")
        _calibrate(staging, folders, known_accept, absent_share)
        _swap_into_place(staging, target)
    finally:
        lock.release()
    labels: Counter[str] = Counter()
    for f in filled:
        labels.update(f.labels)
    return BuildReport(
        index=target,
        model=network.name,
        dim=network.embedder.dim,
        added=total,
        labels=dict(sorted(labels.items())),
        skipped=scan.skipped + [x for f in filled for x in f.embedded.failures],
        duplicates=dupes + [x for f in filled for x in f.embedded.duplicates],
        seconds=time.perf_counter() - start,
        resumed=sum(f.resumed for f in filled),
        shards=shards,
    )


def _calibrate(
    root: Path, folders: Sequence[Path], known_accept: float | None, absent_share: float | None
) -> None:
    """The open-set state of the complete staging index (retrieval/indexing/calibration.py)
    and, unsharded, its DBA lists (retrieval/indexing/dba.py), made before it is swapped into
    place, so that its first query finds them."""
    stores = [IndexStore.open(f) for f in folders]
    try:
        recalibrate(root, stores, known_accept=known_accept, absent_share=absent_share)
        if len(stores) == 1 and dba.applies(stores[0]):
            with stores[0].writing():
                dba.load(stores[0])
    finally:
        for store in stores:
            store.close()


def _swap_into_place(staging: Path, target: Path) -> None:
    """Put the complete index at ``staging`` where ``target`` is, in one atomic step; an index
    there is swapped out under its writer lock (no write of it is cut short), parked beside it
    (one rename out of the staging name), then deleted: a build killed while it deletes leaves a
    parked stray that the next build-index or check --repair removes, never a half-deleted
    folder where the next build-index would resume."""
    if not target.exists():
        try:
            os.rename(staging, target)
        except OSError as exc:
            raise IndexExistsError(f"cannot move the new index into {target}: {exc}") from exc
        return
    if IndexStore.is_index(target) or is_sharded(target):
        with writer_lock(target).held():
            exchange(staging, target)
    else:
        exchange(staging, target)
    parked = aside_name(target)
    shutil.rmtree(parked, ignore_errors=True)
    os.rename(staging, parked)
    shutil.rmtree(parked)


def build_notes(target: Path) -> list[str]:
    notes = [
        f"{stray} was left by an interrupted build-index; the next build-index or "
        "check --repair removes it"
        for stray in stray_builds(target)
    ]
    staging = staging_dir(target)
    if staging.is_dir():
        lock = writer_lock(staging)
        if lock.acquire(timeout=0):
            lock.release()
            notes.append(
                f"{staging} holds an interrupted build-index: the same build-index command "
                "resumes it; delete the folder to discard it"
            )
        else:
            notes.append(f"a build-index into {target} is running{lock.holder()}")
    return notes
