"""The public API: a ``Retriever`` opened once on an index folder, and the functions that make
and measure indexes (``build``, ``evaluate``, ``check``). The CLI, ``retrieve serve`` and the
scripts are its users. (``evaluate`` is training/evaluation.py's, re-exported.)

    from retrieval import Retriever

    with Retriever("my-index") as r:
        for answer in r.query(["a.jpg", pil_image]):
            print(answer.label, answer.confidence, answer.neighbors[0].path)
        r.enroll("Snowy Owl", ["owl1.jpg", "owls/"])
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from index import MANIFEST, CheckReport, IndexStore, Item
from retrieval.config import DEFAULT_RERANK, RERANK_METHODS
from retrieval.datasets import DatasetOptions
from retrieval.datasets.folders import Record, collect_images, validate_label
from retrieval.engine.classify import RULES, Neighbor, Prediction, nearest_prototype, share
from retrieval.engine.classify import vote as knn_vote
from retrieval.engine.embed import Embedder
from retrieval.engine.images import ImageInput, decode_input
from retrieval.engine.network import ModelEntry
from retrieval.engine.rerank import Lists, shortlist, uses_lists
from retrieval.engine.rerank import checked as checked_rerank
from retrieval.engine.rerank import rerank as rerank_shortlist
from retrieval.errors import InputError, NotFoundError
from retrieval.indexing import calibration, dba, uploads
from retrieval.indexing.build import BuildReport
from retrieval.indexing.calibration import OpenSet
from retrieval.indexing.health import check as check_folder
from retrieval.indexing.ingest import Embedded, dedupe, embed_into, hash_records
from retrieval.indexing.network import embedder_for, model_for
from retrieval.indexing.shards import (
    LocalShards,
    ShardSearch,
    find_content,
    is_sharded,
    label_counts,
    shard_dirs,
    smallest,
)
from retrieval.progress import ProgressFactory, no_progress
from retrieval.results import Answer, AttentionMap, EnrollReport, Info
from retrieval.training.evaluation import Evaluation, evaluate

__all__ = ["Retriever", "build", "check", "evaluate", "Evaluation"]

DEFAULT_MODEL = "efficientnet_lite0"
RERANK_NOTE = "rerank"
_PATH_TYPES = (str, os.PathLike)


@dataclass
class _Opened:
    """The index as opened: its folders (one, or its shards), their stores, its model entry,
    and how its shards are searched."""

    dirs: list[Path]
    stores: list[IndexStore]
    entry: ModelEntry
    searcher: ShardSearch
    embedder: Embedder | None = None
    openset: OpenSet | None = None
    lists: tuple[int, Lists] | None = None
    small: tuple[int, bool] | None = None  # (generation, whether it may keep DBA lists)

    def close(self) -> None:
        self.searcher.__exit__(None, None, None)
        for store in self.stores:
            store.close()


def _is_one(images: object) -> bool:
    return isinstance(images, (*_PATH_TYPES, bytes, Image.Image, np.ndarray))


def _name(image: ImageInput, i: int) -> str:
    if isinstance(image, _PATH_TYPES):
        return str(image)
    filename = getattr(image, "filename", "")
    return filename if isinstance(filename, str) and filename else f"<image {i + 1}>"


class Retriever:
    """An index folder (or a sharded index) opened once: its records and FAISS index, and its
    network (the exported ONNX copy, or the model re-created in torch), loaded at first use and
    kept. Safe to share between threads: searches and writes go one at a time through each
    store, images are decoded and embedded side by side. When ``build-index --force`` puts
    another index in the folder, the next call opens that one.

    ``model`` (a built-in name or a model folder) makes every call check that the index was
    built with that network, and run it in torch. ``ray`` ("" or "host:port") searches each
    shard in a Ray actor on that cluster (writes need the index opened without it).
    """

    def __init__(
        self,
        index: str | os.PathLike[str],
        *,
        model: str | None = None,
        ray: str | None = None,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {batch_size}")
        self.path = Path(index)
        self._model = model
        self._ray = ray
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._opened = self._open()

    @classmethod
    def open(cls, index: str | os.PathLike[str], **options: Any) -> Retriever:
        """``Retriever(index, **options)``."""
        return cls(index, **options)

    def _open(self) -> _Opened:
        dirs = shard_dirs(self.path) if is_sharded(self.path) else [self.path]
        stores: list[IndexStore] = []
        try:
            for folder in dirs:
                stores.append(IndexStore.open(folder, lazy=self._ray is not None))
            entry = ModelEntry.parse(stores[0].model, str(dirs[0] / MANIFEST))
            searcher: ShardSearch
            if self._ray is None:
                searcher = LocalShards(stores)
            else:
                from retrieval.cluster.shard_actors import RayShards

                searcher = RayShards(dirs, self._ray)
        except BaseException:
            for store in stores:
                store.close()
            raise
        return _Opened(dirs, stores, entry, searcher)

    def _current(self) -> _Opened:
        """The open index; reopened if the folder now holds another one. The one replaced is
        left to calls still using it."""
        if self._opened.stores[0].replaced:
            with self._lock:
                if self._opened.stores[0].replaced:
                    self._opened = self._open()
        return self._opened

    def _embedder(self, opened: _Opened) -> Embedder:
        if opened.embedder is None:
            with self._lock:
                if opened.embedder is None:
                    opened.embedder = embedder_for(
                        opened.dirs[0], opened.entry, self._model, batch_size=self._batch_size
                    )
        return opened.embedder

    def load(self) -> Retriever:
        """Load the network and the FAISS indexes now rather than at first use (a server does,
        so that a bad index fails before it listens)."""
        opened = self._current()
        self._embedder(opened)
        if self._ray is None:
            for store in opened.stores:
                store.layout  # noqa: B018  (reads or rebuilds the FAISS index)
        return self

    def close(self) -> None:
        """Release the index (and the Ray actors of a sharded search); safe to call twice."""
        self._opened.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Retriever({str(self.path)!r})"

    # --- queries ----------------------------------------------------------------------------

    def query(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        k: int = 5,
        min_score: float | None = None,
        vote: str = "prototype",
        rerank: str | None = None,
        mirror: bool = True,
        progress: ProgressFactory = no_progress,
    ) -> list[Answer]:
        """One answer per image (a path, the bytes of an image file, a PIL image or a uint8
        array; one, or a sequence of them), in order, each from its ``k`` nearest gallery
        items: by default (``vote="prototype"``) the label among theirs whose mean (prototype)
        is nearest the image, by the shrunk within-class Mahalanobis distance of the gallery's
        open-set statistics (engine/openset.py); or their vote, ``weighted`` by their cosine
        scores or by ``majority``.

        "Unknown" (label None) when the image is not like any label of the gallery: its
        decision score (engine/openset.py) is under the threshold the index calibrated from its
        own gallery; with ``min_score``, instead, when the best cosine score is under it (0:
        never, the closed-set answer). ``confidence`` is the estimated probability that the
        label is right (for an unknown answer: that the best label would be wrong). A gallery
        item with the same file content as the query is left out of its neighbours (a photo
        does not vote for itself). The neighbours shown are re-ranked by ``rerank`` ("none",
        "dba", "qe", "dba+qe" or "kr"; None: the index's setting, see ``set_rerank``) over the
        index's shortlist (engine/rerank.py); the label, its confidence and the unknown rule
        come from the neighbours as found, before re-ranking. With ``mirror`` (the default) the
        image is asked averaged with its mirror image (one more pass of the network, in the
        same call; a network trained with ``--flip`` does it itself): its neighbours, their
        re-ranking and its label come from that average, the decision score and confidence
        from the image as it is, as the index calibrated them from its gallery's vectors.
        Every path is checked before the first image is answered."""
        batch: list[ImageInput] = [images] if _is_one(images) else list(images)  # type: ignore[list-item, arg-type]
        for i, image in enumerate(batch):
            if isinstance(image, _PATH_TYPES) and not Path(image).is_file():
                decode_input(image, _name(image, i))  # the error that names it
        with progress(len(batch), "querying") as bar:
            answers = []
            for answer in self.query_stream(
                batch, k=k, min_score=min_score, vote=vote, rerank=rerank, mirror=mirror
            ):
                answers.append(answer)
                bar.update(1)
        return answers

    def query_stream(
        self,
        images: Iterable[ImageInput],
        *,
        k: int = 5,
        min_score: float | None = None,
        vote: str = "prototype",
        rerank: str | None = None,
        mirror: bool = True,
    ) -> Iterator[Answer]:
        """``query`` of images one at a time as they come (e.g. paths read from a pipe)."""
        _check_vote(k, vote, min_score)
        method = self._rerank_method(self._current(), rerank)
        for i, image in enumerate(images):
            yield self.answer(
                image,
                name=_name(image, i),
                k=k,
                min_score=min_score,
                vote=vote,
                rerank=method,
                mirror=mirror,
            )

    def answer(
        self,
        image: ImageInput,
        *,
        name: str | None = None,
        k: int = 5,
        min_score: float | None = None,
        vote: str = "prototype",
        rerank: str | None = None,
        mirror: bool = True,
    ) -> Answer:
        """The answer for one image (see ``query``); ``name`` is what the answer and an error
        call it (default: its path)."""
        _check_vote(k, vote, min_score)
        start = time.perf_counter()
        name = _name(image, 0) if name is None else name
        opened = self._current()
        method = self._rerank_method(opened, rerank)
        embedder = self._embedder(opened)
        picture, sha = decode_input(image, name, min_side=embedder.transform.pre.resize)
        vector, asked = embedder.embed_images_mirrored(
            [picture], mirror=mirror and not opened.entry.flip
        )
        hits = opened.searcher.neighbors(asked, sha, shortlist(k, method))
        ids = len(opened.dirs) == 1  # shards number their items apart
        neighbors = [Neighbor(h.path, h.label, h.score, h.id if ids else None) for h in hits]
        state = self._openset(opened)
        p = knn_vote(
            neighbors, k=k, method="weighted" if vote == "prototype" else vote, min_score=-math.inf
        )
        distances = state.scorer.distances(vector)
        if vote == "prototype":
            closeness = (
                state.scorer.closeness(distances[0])
                if asked is vector
                else state.scorer.closeness_among(asked[0], (n.label for n in neighbors))
            )
            chosen = nearest_prototype(neighbors, closeness, k) or p.label
            p = Prediction(chosen, share(neighbors, chosen, k), p.neighbors)
        score = float(state.scorer.score(vector, distances)[0])
        right = state.calibration.confidence(score) if p.neighbors else 0.0
        threshold = state.calibration.threshold
        why = None
        if not p.neighbors:
            why = "the index is empty"
        elif min_score is not None:
            if p.neighbors[0].score < min_score:
                why = f"best score {p.neighbors[0].score:.3f} < --min-score {min_score:g}"
        elif threshold is not None and score < threshold:
            why = f"like no label of the index: decision score {score:.3f} < {threshold:.3f}"
        label = None if why else p.label
        shown = list(p.neighbors)
        if method != "none" and neighbors:
            shown = self._reranked(opened, method, asked[0], neighbors, sha)[:k]
        return Answer(
            name,
            label,
            right if label is not None else (1.0 - right if p.neighbors else 0.0),
            tuple(shown),
            time.perf_counter() - start,
            vote_share=p.confidence,
            decision=score,
            unknown_because=why,
            rerank=method,
        )

    def _rerank_method(self, opened: _Opened, rerank: str | None) -> str:
        """The re-ranking a query gets: ``rerank``, else the index's setting. A sharded index
        or one searched on Ray is not re-ranked (its items' ids are per shard)."""
        if rerank is not None:
            method = checked_rerank(rerank)
        else:
            method = opened.stores[0].note(RERANK_NOTE)
            method = method if method in RERANK_METHODS else DEFAULT_RERANK
        if method != "none" and (len(opened.dirs) > 1 or self._ray is not None):
            if rerank is not None:
                raise InputError("--rerank needs an unsharded index searched in this process")
            return "none"
        if uses_lists(method) and not self._small(opened):
            if rerank is not None:
                raise InputError(
                    f"--rerank {method}: DBA is kept for indexes of at most {dba.AT_MOST:,} "
                    "items and this one holds more; use --rerank kr, qe or none"
                )
            return "kr" if method == "dba+qe" else "none"
        return method

    def _small(self, opened: _Opened) -> bool:
        """Whether the index may keep DBA lists (dba.AT_MOST), counted once per generation."""
        store = opened.stores[0]
        generation = store.generation
        if opened.small is None or opened.small[0] != generation:
            opened.small = (generation, dba.applies(store))
        return opened.small[1]

    def _reranked(
        self, opened: _Opened, method: str, q: np.ndarray, hits: list[Neighbor], sha: str | None
    ) -> list[Neighbor]:
        """The shortlist re-ranked (engine/rerank.py), best first; the item with the query's
        own content (a photo of the gallery queried again) is no DBA neighbour of it."""
        store = opened.stores[0]
        own = None if sha is None else store.find_sha256([sha]).get(sha)

        def vectors_of(ids: np.ndarray) -> np.ndarray:
            found, x = store.vectors(ids)
            if not np.array_equal(found, ids):
                raise LookupError("an item of the shortlist was removed meanwhile")
            return x

        try:
            lists = self._lists(opened) if uses_lists(method) else None
            ids = np.array([n.id for n in hits], np.int64)
            scores = rerank_shortlist(method, q, ids, vectors_of, lists, own.id if own else None)
        except LookupError:  # a write between the search and now: this answer not re-ranked
            return hits
        order = np.argsort(-scores, kind="stable")
        return [replace(hits[i], score=float(scores[i])) for i in order]

    def _lists(self, opened: _Opened) -> Lists:
        """The index's DBA neighbour lists at the records' generation, loaded (or made) when it
        moved."""
        store = opened.stores[0]
        kept = opened.lists
        if kept is None or kept[0] != store.generation:
            with self._lock:
                kept = opened.lists
                if kept is None or kept[0] != store.generation:
                    kept = opened.lists = dba.load(store)
        return kept[1]

    def set_rerank(self, method: str) -> None:
        """Make ``method`` the re-ranking of this index's queries (kept with its records)."""
        self._writable().stores[0].set_note(RERANK_NOTE, checked_rerank(method))

    def _openset(self, opened: _Opened) -> OpenSet:
        """The index's open-set state at the stores' generations, loaded (or made) when they
        moved."""
        state = opened.openset
        generations = tuple(s.generation for s in opened.stores)
        if state is None or state.generations != generations:
            with self._lock:
                state = opened.openset
                if state is None or state.generations != generations:
                    state = opened.openset = calibration.load(self.path, opened.stores)
        return state

    def calibrate(
        self, *, known_accept: float | None = None, absent_share: float | None = None
    ) -> Info:
        """Calibrate the index anew from its gallery: for ``known_accept`` (the share of
        queries of a label the gallery holds that must not be answered unknown; kept with the
        index) and ``absent_share`` (the share of queries of species it lacks, that the
        confidence assumes). Returns what ``info`` then shows."""
        opened = self._writable()
        opened.openset = calibration.recalibrate(
            self.path, opened.stores, known_accept=known_accept, absent_share=absent_share
        )
        return self.info()

    def attention(self, images: Sequence[ImageInput]) -> list[AttentionMap] | None:
        """The spatial attention of the index's network over each image (the part of it the
        network sees), or None when the network has no attention module. Only then is the
        model re-created in torch: the exported network does not expose its attention."""
        opened = self._current()
        if not opened.entry.has_attention:
            return None
        from retrieval.nets.model import attention_gates

        loaded = model_for(opened.dirs[0], opened.entry, self._model)
        pre = loaded.net.preprocess
        maps = []
        for i, image in enumerate(images):
            picture, _ = decode_input(image, _name(image, i), min_side=pre.resize)
            gates, box = attention_gates(loaded, picture)
            maps.append(AttentionMap(gates, box))
        return maps

    # --- writes -----------------------------------------------------------------------------

    def _writable(self) -> _Opened:
        if self._ray is not None:
            raise InputError("a Retriever searching on Ray does not write; open it without ray")
        return self._current()

    def enroll(
        self,
        label: str,
        images: Sequence[ImageInput],
        *,
        progress: ProgressFactory = no_progress,
    ) -> EnrollReport:
        """Add images under ``label`` (new or existing): files, folders (every image below
        them), or images in memory (bytes of an image file, PIL images, uint8 arrays: the index
        keeps a copy of each under ``INDEX/uploads``). Content already indexed is skipped and
        reported; unreadable files are skipped and reported. InputError, nothing added, if none
        can be read. Committed a chunk at a time: if the process is killed, the index holds the
        readable images of the first whole chunks, and enrolling again adds the rest. In a
        sharded index they go to the shard holding the fewest items."""
        validate_label(label)
        files: list[str | Path] = [Path(i) for i in images if isinstance(i, _PATH_TYPES)]
        in_memory = [
            (i, image) for i, image in enumerate(images) if not isinstance(image, _PATH_TYPES)
        ]
        scan = collect_images(list(files)) if files else None
        self._writable()
        paths = [r.path for r in scan.records] if scan else []
        skipped = list(scan.skipped) if scan else []
        report = None
        # While its copies are out, check --repair leaves them alone (uploads.pending).
        with uploads.pending(self.path) if in_memory else contextlib.nullcontext():
            stored = [
                uploads.store(self.path, f"image-{i + 1}.png", _png(image, _name(image, i)))
                for i, image in in_memory
            ]
            try:
                report = self.enroll_files(
                    label, [*paths, *(s.path for s in stored)], skipped, progress=progress
                )
            finally:
                uploads.discard(stored, report.added if report else ())
        return report

    def enroll_files(
        self,
        label: str,
        paths: Sequence[str | os.PathLike[str]],
        skipped: Sequence[tuple[str, str]] = (),
        *,
        progress: ProgressFactory = no_progress,
    ) -> EnrollReport:
        """``enroll`` of image files as they are (no folder is walked); ``skipped`` are inputs
        set aside already, reported with those that cannot be decoded."""
        validate_label(label)
        opened = self._writable()
        embedder = self._embedder(opened)
        target = smallest(opened.stores) if len(opened.stores) > 1 else opened.stores[0]
        others = [s for s in opened.stores if s is not target]
        records, shas, unreadable = hash_records([Record(Path(p), label) for p in paths])
        skipped = [*skipped, *unreadable]
        with target.writing():  # a writer, even with nothing to add: leftovers of killed ones go
            known = find_content(others, shas)
            known.update(target.find_sha256(shas))
        keep, dupes = dedupe(records, shas, known)
        embedded = Embedded()
        if not records and skipped:
            raise InputError(f"none of the images for {label!r} could be read; nothing enrolled")
        if keep:

            def committed(
                before: int, ids: np.ndarray, vectors: np.ndarray, labels: list[str]
            ) -> None:
                calibration.follow(self.path, opened.stores, target, before, vectors, labels, 1)
                dba.follow(target, before, ids, labels, 1)

            embedded = embed_into(
                target,
                embedder,
                [records[i] for i in keep],
                [shas[i] for i in keep],
                progress,
                "enrolling",
                committed,
            )
            if embedded.added:
                with target.writing():
                    calibration.refresh(self.path, opened.stores)
            if not embedded.added and not embedded.duplicates:
                raise InputError(
                    f"none of the images for {label!r} could be read; nothing enrolled"
                )
        return EnrollReport(
            label,
            tuple(embedded.added),
            tuple(dupes + embedded.duplicates),
            tuple([*skipped, *embedded.failures]),
            sum(len(store.find(label=label)) for store in opened.stores),
        )

    def remove(
        self, *, label: str | None = None, path: str | os.PathLike[str] | None = None
    ) -> list[Item]:
        """Remove every item of ``label``, or the item(s) recorded at ``path`` (as given, or
        resolved), from every shard; returns the items removed. The index's own copies of them
        (``INDEX/uploads``) are deleted; a photo elsewhere never is. InputError, nothing
        removed, when there is no such item."""
        if (label is None) == (path is None):
            raise InputError("give exactly one of --label or --path")
        gone: list[Item] = []
        opened = self._writable()
        for store in opened.stores:
            with store.writing():
                if label is not None:
                    found = store.find(label=label)
                else:
                    resolved = _resolved(path)  # type: ignore[arg-type]
                    found = store.find(path=resolved) or store.find(path=str(path))
                if not found:
                    continue
                _, vectors = store.vectors([i.id for i in found])
                before = store.generation
                if label is not None:
                    removed = store.remove_label(label)
                else:
                    removed = store.remove_path(found[0].path)
                labels = [i.label for i in removed]
                calibration.follow(self.path, opened.stores, store, before, vectors, labels, -1)
                dba.follow(store, before, np.array([i.id for i in removed]), labels, -1)
                gone += removed
        if not gone:
            what = f"items with label {label!r}" if label is not None else f"item with path {path}"
            raise NotFoundError(f"no {what} in {self.path}")
        with opened.stores[0].writing():
            calibration.refresh(self.path, opened.stores)
        uploads.delete_copies(self.path, gone)
        return gone

    # --- reads ------------------------------------------------------------------------------

    def info(self) -> Info:
        """What the index holds; for a sharded one, summed over its shards (the model and FAISS
        layout are those of its first shard)."""
        opened = self._current()
        first = opened.stores[0]
        m = first.manifest
        labels = label_counts(opened.stores)
        return Info(
            index=self.path,
            count=sum(labels.values()),
            labels=labels,
            model=opened.entry.name,
            dim=m.dim,
            format_version=m.format_version,
            fingerprint=opened.entry.fingerprint,
            index_type=m.index_type,
            layout=first.layout.to_json(),
            shards=len(opened.stores),
            open_set=calibration.describe(self._openset(opened)),
            flip=opened.entry.flip,
            precision=opened.entry.precision,
            rerank=self._rerank_method(opened, None),
            input_size=opened.entry.preprocess.crop,
        )

    def labels(self) -> dict[str, int]:
        """Items per label, sorted by label."""
        return label_counts(self._current().stores)

    def items(self, ids: Iterable[int]) -> list[Item]:
        """The items with these ids (of an unsharded index), in that order; unknown ids are
        left out."""
        return self._current().stores[0].items(ids)

    def __len__(self) -> int:
        return sum(len(s) for s in self._current().stores)


def _resolved(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute, symbolic links resolved; as given when it cannot be (a NUL)."""
    try:
        return str(Path(path).resolve())
    except (OSError, ValueError):
        return str(path)


def _check_vote(k: int, method: str, min_score: float | None = None) -> None:
    if min_score is not None and not math.isfinite(min_score):  # NaN compares false
        raise InputError(f"--min-score must be a finite number, not {min_score}")
    if k < 1:
        raise InputError(f"-k must be at least 1, not {k}")
    if method not in RULES:
        raise InputError(f"--vote must be one of {', '.join(RULES)}, not {method!r}")


def _png(image: ImageInput, name: str) -> bytes:
    """An in-memory image as the bytes of an image file: bytes as they are, else PNG."""
    if isinstance(image, bytes):
        return image
    import io

    picture, _ = decode_input(image, name)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


# --- indexes made and measured --------------------------------------------------------------


def build(
    gallery: str | os.PathLike[str],
    index: str | os.PathLike[str],
    *,
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    batch_size: int = 32,
    force: bool = False,
    dataset: DatasetOptions | None = None,
    index_type: str = "auto",
    shards: int = 1,
    ray: str | None = None,
    workers: int | None = None,
    known_accept: float | None = None,
    absent_share: float | None = None,
    precision: str = "float32",
    progress: ProgressFactory = no_progress,
) -> BuildReport:
    """Embed every image of ``gallery`` (a folder per label, or a benchmark in its official
    layout read with ``dataset``'s options) into a new index at ``index``, built beside it and
    swapped into place when complete (an existing one is replaced only with ``force``; an
    interrupted build is resumed by the same call). ``index_type`` "auto", "flat" or "ivf";
    ``shards`` > 1 makes a sharded index. With ``ray`` ("" or "host:port"), the images are
    embedded on Ray by ``workers`` actors (default: one per CPU). The index calibrates its
    "unknown" answer from the gallery for ``known_accept`` (default 0.95) and the confidence
    for ``absent_share`` (default 0.2); see ``Retriever.calibrate``. ``precision`` "int8"
    stores and runs the network quantised to int8, calibrated on images of the gallery (faster
    on a CPU, a little less accurate: README, speed section); "float32" as exported."""
    from retrieval.indexing.build import build_index

    options: dict[str, Any] = {
        "model": model,
        "weights": weights,
        "batch_size": batch_size,
        "force": force,
        "dataset": dataset,
        "index_type": index_type,
        "shards": shards,
        "known_accept": known_accept,
        "absent_share": absent_share,
        "precision": precision,
        "progress": progress,
    }
    if ray is not None:
        from retrieval.cluster.distributed import build_index_on_ray

        return build_index_on_ray(
            Path(gallery), Path(index), address=ray, workers=workers, **options
        )
    if workers is not None:
        raise InputError("--workers needs --ray")
    return build_index(Path(gallery), Path(index), **options)


def check(index: str | os.PathLike[str], *, repair: bool = False) -> CheckReport:
    """Whether an index's manifest, records, FAISS file, sidecar and network agree (and, for a
    sharded index, each shard's), with notes on what interrupted builds left. With ``repair``,
    the FAISS file and sidecar are rebuilt from the records and leftovers removed (never the
    records or manifest: they are the truth), then it is checked again."""
    return check_folder(Path(index), repair=repair)
