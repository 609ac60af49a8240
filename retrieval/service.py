"""Use cases behind the CLI: query, enroll, remove, info, check, evaluate (build-index is
retrieval/build.py's). Returns reports, never prints."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index import IndexStore, Item
from index.check import CheckReport, check_index, repair_index
from index.errors import IndexFormatError, IndexStoreError
from index.manifest import read_manifest
from index.store import MANIFEST, Hit
from retrieval.datasets import DatasetOptions
from retrieval.datasets.folders import Record, collect_images, validate_label
from retrieval.engine.classify import Neighbor, Prediction, vote
from retrieval.engine.embed import Embedder
from retrieval.engine.images import load_rgb, sha256_file
from retrieval.engine.runtime import available, index_embedder, read_index_onnx
from retrieval.errors import InputError, ModelError, ModelMismatchError, RetrieveError
from retrieval.faces.visual import AttentionMap
from retrieval.indexing.build import build_notes, stray_builds
from retrieval.indexing.ingest import Embedded, dedupe, embed_into, hash_records
from retrieval.indexing.shards import (
    LocalShards,
    ShardSearch,
    find_content,
    is_sharded,
    label_counts,
    own_neighbors,
    shard_dirs,
    smallest,
)
from retrieval.progress import ProgressFactory, no_progress
from retrieval.training.metrics import enrollment_accuracy, retrieval_metrics

# torch (retrieval.nets.model, retrieval.nets.export) takes seconds to import: it is imported only inside
# the use cases that need it. Querying and enrolling an index that holds its exported network
# run on ONNX Runtime and never import it.
if TYPE_CHECKING:
    from retrieval.nets.model import LoadedModel


@dataclass
class EnrollReport:
    label: str
    added: list[str]
    duplicates: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    total_for_label: int


@dataclass
class QueryResult:
    query: str
    prediction: Prediction
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        p = self.prediction
        return {
            "query": self.query,
            "label": p.label,
            "confidence": round(p.confidence, 6),
            "neighbors": [
                {"path": n.path, "label": n.label, "score": round(n.score, 6), "id": n.id}
                for n in p.neighbors
            ],
        }


@dataclass
class Info:
    index: Path
    count: int
    labels: dict[str, int]
    model: str
    dim: int
    format_version: int
    fingerprint: str
    index_type: str
    layout: dict[str, Any]
    shards: int = 1

    def to_json(self) -> dict[str, Any]:
        out = {
            "count": self.count,
            "labels": self.labels,
            "model": self.model,
            "dim": self.dim,
            "format_version": self.format_version,
            "index_type": self.index_type,
            "faiss": self.layout,
        }
        if self.shards > 1:
            out["shards"] = self.shards
        return out


@dataclass(frozen=True)
class IndexModel:
    """An index folder and its manifest's model entry: what model_for and embedder_for read of
    an index, without loading its vectors."""

    path: Path
    model: dict[str, Any]

    @classmethod
    def read(cls, folder: str | Path) -> IndexModel:
        return cls(Path(folder), read_manifest(Path(folder) / MANIFEST).model)


def model_for(
    store: IndexStore | IndexModel, model: str | None = None, weights: str | None = None
) -> LoadedModel:
    """The model an index was built with, re-created and checked against its fingerprint.

    With ``model``, that model is loaded instead and refused unless it is the same network.
    """
    from retrieval.nets.model import load_from_source, load_model

    recorded = store.model
    manifest = store.path / MANIFEST
    source, fingerprint = recorded.get("source"), recorded.get("fingerprint")
    if not isinstance(source, dict) or not isinstance(fingerprint, str):
        raise IndexFormatError(f"{manifest}: the model entry lacks a valid source and fingerprint")
    if model:
        loaded = load_model(model, weights=weights)
    else:
        try:
            loaded = load_from_source(source)
        except RetrieveError:
            raise
        except Exception as exc:  # a tampered entry can fail anywhere while building the network
            raise IndexFormatError(f"{manifest}: the model entry cannot be used: {exc}") from exc
    if loaded.fingerprint != fingerprint:
        name = recorded.get("name", "?")
        what = f"model {model}" if model else f"the model at {source}"
        raise ModelMismatchError(
            f"index {store.path} was built with model {name} "
            f"(fingerprint {fingerprint}), but {what} has fingerprint "
            f"{loaded.fingerprint}; query with the index's own model or rebuild the index with "
            f"'retrieve build-index GALLERY --model {model or name} --force'"
        )
    return loaded


def embedder_for(
    store: IndexStore | IndexModel, model: str | None = None, *, batch_size: int = 32
) -> Embedder:
    """The Embedder of an index: its own exported network on ONNX Runtime when it has one (no
    torch is imported), else its model re-created in torch and checked by fingerprint (see
    model_for); with ``model``, that model, refused unless it is the index's network."""
    if model is None and "onnx" in store.model and available():
        return index_embedder(store.path, store.model, batch_size=batch_size)
    return model_for(store, model).embedder(batch_size=batch_size)


def query(
    images: Sequence[str | Path],
    index_dir: str | Path,
    *,
    k: int = 5,
    min_score: float = 0.0,
    method: str = "weighted",
    model: str | None = None,
    ray_address: str | None = None,
    progress: ProgressFactory = no_progress,
) -> list[QueryResult]:
    """Classify each image by a k-NN vote over the index (see query_stream); every path is
    checked before the first is answered."""
    for img in images:
        if not Path(img).is_file():
            raise InputError(f"query image {img} does not exist")
    with progress(len(images), "querying") as bar:
        out = []
        for result in query_stream(
            images,
            index_dir,
            k=k,
            min_score=min_score,
            method=method,
            model=model,
            ray_address=ray_address,
        ):
            out.append(result)
            bar.update(1)
    return out


def index_dirs(index_dir: str | Path) -> list[Path]:
    """The index folders of an index: its shards' if it is sharded, else itself."""
    return shard_dirs(index_dir) if is_sharded(index_dir) else [Path(index_dir)]


def query_stream(
    images: Iterable[str | Path],
    index_dir: str | Path,
    *,
    k: int = 5,
    min_score: float = 0.0,
    method: str = "weighted",
    model: str | None = None,
    ray_address: str | None = None,
) -> Iterator[QueryResult]:
    """Classify images one at a time as they come (e.g. paths read from a pipe), each by a k-NN
    vote over the index; ``seconds`` of a result is its own time (decode, embed, search, vote).
    The index and its network are opened once. A gallery item with the same content as the
    query is left out of its neighbours (a photo does not vote for itself).

    A sharded index is searched shard by shard and the best k merged: in this process, or,
    with ``ray_address`` ("" starts Ray here), by one Ray actor per shard
    (retrieval/shard_actors.py)."""
    if k < 1:
        raise InputError(f"-k must be at least 1, not {k}")
    dirs = index_dirs(index_dir)
    if ray_address is None:
        searcher: ShardSearch = LocalShards(dirs)
    else:
        from retrieval.cluster.shard_actors import RayShards

        searcher = RayShards(dirs, ray_address)
    with searcher:
        local = isinstance(searcher, LocalShards)
        source = searcher.stores[0] if local else IndexModel.read(dirs[0])
        embedder = embedder_for(source, model, batch_size=1)
        for img in images:
            if not Path(img).is_file():
                raise InputError(f"query image {img} does not exist")
            yield _answer(
                searcher.neighbors,
                embedder,
                img,
                k=k,
                min_score=min_score,
                method=method,
                ids=len(dirs) == 1,
            )


def answer(
    store: IndexStore,
    embedder: Embedder,
    image: str | Path,
    *,
    name: str | None = None,
    k: int = 5,
    min_score: float = 0.0,
    method: str = "weighted",
) -> QueryResult:
    """Classify one image file by a k-NN vote over an open index with its embedder; ``name`` is
    what the result and an error call the image (default: its path). A gallery item with the
    same content as the image is left out of its neighbours (a photo does not vote for
    itself). ``seconds`` of the result is its own time (decode, embed, search, vote)."""

    def search(vector: np.ndarray, sha: str, k: int) -> list[Hit]:
        return own_neighbors(store, vector, sha, k)

    return _answer(search, embedder, image, name=name, k=k, min_score=min_score, method=method)


def _answer(
    search: Callable[[np.ndarray, str, int], list[Hit]],
    embedder: Embedder,
    image: str | Path,
    *,
    name: str | None = None,
    k: int,
    min_score: float,
    method: str,
    ids: bool = True,
) -> QueryResult:
    """See answer; ``search`` (vector, sha256, k) -> the k nearest items other than the image's
    own content. Without ``ids`` (a sharded index, whose shards number their items apart) the
    neighbours carry no id."""
    start = time.perf_counter()
    name = str(image) if name is None else name
    result = embedder.embed_paths([image])
    if result.failures:
        raise InputError(result.failures[0][1].replace(str(image), name))
    hits = search(result.vectors, sha256_file(image), k)
    neighbors = [Neighbor(h.path, h.label, h.score, h.id if ids else None) for h in hits]
    prediction = vote(neighbors, k=k, method=method, min_score=min_score)
    return QueryResult(name, prediction, time.perf_counter() - start)


def attention_maps(
    images: Sequence[str | Path], index_dir: str | Path, *, model: str | None = None
) -> list[AttentionMap] | None:
    """The spatial attention of the index's model over each image (the part of it the network
    sees), or None when the model has no attention module. Only a model with attention is
    re-created in torch (see model_for): the exported network does not expose its attention."""
    with IndexStore.open(index_dirs(index_dir)[0]) as store:
        spec = store.model.get("spec")
        if not (isinstance(spec, dict) and spec.get("attention")):
            return None
        loaded = model_for(store, model)
    import torch

    from retrieval.engine.transforms import EvalTransform

    transform = EvalTransform(loaded.net.preprocess)
    out = []
    for img in images:
        rgb = load_rgb(img, min_side=transform.pre.resize)
        gates = loaded.net.spatial_attention(torch.from_numpy(transform(rgb)[None]))
        out.append(AttentionMap(gates[0].numpy(), transform.crop_box(rgb.size)))
    return out


def enroll(
    label: str,
    inputs: Sequence[str | Path],
    index_dir: str | Path,
    *,
    model: str | None = None,
    batch_size: int = 32,
    progress: ProgressFactory = no_progress,
) -> EnrollReport:
    """Add images under ``label`` (new or existing); content already indexed is skipped.

    The images are committed a chunk of CHUNK at a time (in the order ``collect_images`` gives
    them): if the command is killed, the index holds the readable images of its first whole
    chunks, and running it again adds the rest (the others are then already indexed). In a
    sharded index they go to the shard that holds the fewest items; content any shard holds
    is skipped.
    """
    validate_label(label)
    dirs = index_dirs(index_dir)
    folder = smallest(dirs) if len(dirs) > 1 else dirs[0]
    with IndexStore.open(folder) as store:
        scan = collect_images(list(inputs))
        embedder = embedder_for(store, model, batch_size=batch_size)
        return enroll_into(
            store,
            embedder,
            label,
            [r.path for r in scan.records],
            scan.skipped,
            progress,
            elsewhere=[d for d in dirs if d != folder],
        )


def enroll_into(
    store: IndexStore,
    embedder: Embedder,
    label: str,
    paths: Sequence[str | Path],
    skipped: Sequence[tuple[str, str]] = (),
    progress: ProgressFactory = no_progress,
    *,
    elsewhere: Sequence[Path] = (),
) -> EnrollReport:
    """Add image files under ``label`` to an open index with its embedder (see enroll);
    ``skipped`` are inputs already set aside, reported with those that cannot be decoded;
    content that the index folders ``elsewhere`` (the other shards) hold is skipped too.
    InputError, nothing added, if none of ``paths`` can be read."""
    validate_label(label)
    records = [Record(Path(p), label) for p in paths]
    shas = hash_records(records)
    with store.writing():  # a writer, even with nothing to add: leftovers of killed ones go
        known = find_content(elsewhere, shas)
        known.update(store.find_sha256(shas))
    keep, dupes = dedupe(records, shas, known)
    embedded = Embedded()
    if keep:
        embedded = embed_into(
            store,
            embedder,
            [records[i] for i in keep],
            [shas[i] for i in keep],
            progress,
            "enrolling",
        )
        if not embedded.added and not embedded.duplicates:
            raise InputError(f"none of the images for {label!r} could be read; nothing enrolled")
    counts = label_counts([store.path, *elsewhere]) if elsewhere else store.label_counts()
    return EnrollReport(
        label,
        embedded.added,
        dupes + embedded.duplicates,
        [*skipped, *embedded.failures],
        counts.get(label, 0),
    )


def remove(index_dir: str | Path, *, label: str | None = None, path: str | None = None) -> int:
    """Remove every item of ``label``, or the item(s) at ``path`` (from every shard of a
    sharded index); returns how many went."""
    n = 0
    for folder in index_dirs(index_dir):
        with IndexStore.open(folder) as store:
            n += len(_remove_from(store, label=label, path=path))
    if n == 0:
        raise _nothing_removed(label, path, index_dir)
    return n


def remove_from(
    store: IndexStore, *, label: str | None = None, path: str | None = None
) -> list[Item]:
    """Remove every item of ``label``, or the item(s) at ``path`` (as given, or resolved), from
    an open index; returns the items removed. InputError, nothing removed, if there are none."""
    gone = _remove_from(store, label=label, path=path)
    if not gone:
        raise _nothing_removed(label, path, store.path)
    return gone


def _nothing_removed(label: str | None, path: str | None, where: str | Path) -> InputError:
    what = f"items with label {label!r}" if label is not None else f"item with path {path}"
    return InputError(f"no {what} in {where}")


def _remove_from(
    store: IndexStore, *, label: str | None = None, path: str | None = None
) -> list[Item]:
    if (label is None) == (path is None):
        raise InputError("give exactly one of --label or --path")
    with store.writing():
        items = store.items()
        if label is not None:
            gone = [item for item in items if item.label == label]
        else:
            resolved = str(Path(path).resolve())
            gone = [i for i in items if i.path == resolved] or [i for i in items if i.path == path]
        store.remove_ids([item.id for item in gone])
    return gone


def info(index_dir: str | Path) -> Info:
    """What an index holds; for a sharded one, summed over its shards (the model and FAISS
    layout are those of its first shard)."""
    dirs = index_dirs(index_dir)
    with IndexStore.open(dirs[0]) as store:
        m = store.manifest
        first = Info(
            index=Path(index_dir),
            count=len(store),
            labels=store.label_counts(),
            model=m.model.get("name", "?"),
            dim=m.dim,
            format_version=m.format_version,
            fingerprint=m.model.get("fingerprint", "?"),
            index_type=m.index_type,
            layout=store.layout.to_json(),
        )
    if len(dirs) > 1:
        first.labels = label_counts(dirs)
        first.count = sum(first.labels.values())
        first.shards = len(dirs)
    return first


def check(index_dir: str | Path, *, repair: bool = False) -> CheckReport:
    """Verify that an index's manifest, records, FAISS file and sidecar agree, and note what
    interrupted builds left beside it. With ``repair``, rebuild the FAISS file and sidecar from
    the records, remove the temp files of interrupted writes and the stray folders of
    interrupted builds (under the writer lock), then check again. Damaged records or manifest
    are reported, never repaired: they are the truth the rest is derived from; a resumable
    build's staging folder is kept. A sharded index is checked (and repaired) shard by shard,
    each shard's lines prefixed with its folder's name."""
    target = Path(index_dir)
    if is_sharded(target):
        return _check_shards(target, repair)
    report = check_index(target)
    report.notes.extend(build_notes(target))
    report.problems.extend(_network_problems(target))
    if not repair:
        return report
    if not report.source_ok:
        report.repaired.append(
            "nothing repaired: the manifest or records are damaged, and everything else is "
            "derived from them; rebuild the index with 'retrieve build-index'"
        )
        return report
    done = repair_index(target)
    for stray in stray_builds(target):
        shutil.rmtree(stray)
        done.append(f"removed {stray}")
    report = check_index(target)
    report.notes.extend(build_notes(target))
    report.problems.extend(_network_problems(target))
    report.repaired = done
    return report


def _check_shards(target: Path, repair: bool) -> CheckReport:
    report = CheckReport(target)
    dirs = shard_dirs(target)
    for folder in dirs:
        part = check(folder, repair=repair)
        report.items += part.items
        report.source_ok = report.source_ok and part.source_ok
        for mine, theirs in (
            (report.problems, part.problems),
            (report.notes, part.notes),
            (report.repaired, part.repaired),
        ):
            mine.extend(f"{folder.name}: {line}" for line in theirs)
    if not report.problems:
        report.labels = len(label_counts(dirs))
    report.notes.extend(build_notes(target))
    return report


def _network_problems(target: Path) -> list[str]:
    """The index's exported network, if its manifest names one, checked against its sha256
    (it cannot be repaired from the records: a rebuild re-exports it)."""
    try:
        model = read_manifest(target / MANIFEST).model
    except IndexStoreError:
        return []  # check_index has reported the manifest
    if "onnx" not in model:
        return []
    try:
        read_index_onnx(target, model)
    except ModelError as exc:
        return [str(exc)]
    return []


@dataclass
class Evaluation:
    """What evaluate measured (its ``metrics``, the keys of ``evaluate --json``) and what it
    measured it on: each readable image's vector, label and path, in the same order."""

    metrics: dict[str, Any]
    vectors: np.ndarray
    labels: list[str]
    paths: list[str]
    skipped: list[tuple[str, str]]


def evaluate(
    data_dir: str | Path,
    *,
    model: str = "efficientnet_lite0",
    shots: Sequence[int] = (1, 5, 10),
    seed: int = 0,
    k: int = 5,
    batch_size: int = 32,
    dataset: DatasetOptions | None = None,
    progress: ProgressFactory = no_progress,
) -> Evaluation:
    """Leave-one-out Recall@1/2/4/8 and MAP@R over every image of a dataset (a folder per label,
    or a benchmark read with ``dataset``'s options), and the enrolment curve: top-1 k-NN accuracy
    after enrolling ``shots`` random images per class; with the embeddings they came from."""
    from retrieval.nets.export import fast_embedder
    from retrieval.nets.model import load_model

    scan = (dataset or DatasetOptions()).scan(data_dir)
    loaded = load_model(model)
    embedder, _ = fast_embedder(loaded, scan.records, batch_size=batch_size)
    with progress(len(scan.records), "embedding") as bar:
        result = embedder.embed_paths(
            [r.path for r in scan.records],
            progress=bar.update,
            boxes=[r.box for r in scan.records],
        )
    labels = [scan.records[i].label for i in result.ok]
    if len(set(labels)) < 2:
        raise InputError(f"{data_dir}: evaluation needs at least 2 labels with readable images")
    metrics: dict[str, Any] = retrieval_metrics(result.vectors, np.array(labels))
    metrics["enrollment"] = {
        str(n): enrollment_accuracy(result.vectors, labels, n, seed=seed, k=k) for n in shots
    }
    metrics.update(n_images=len(labels), n_classes=len(set(labels)), model=loaded.name)
    return Evaluation(
        metrics,
        result.vectors,
        labels,
        [str(scan.records[i].path) for i in result.ok],
        scan.skipped + result.failures,
    )
