"""`retrieve evaluate`: a model measured on a labelled dataset — leave-one-out Recall@K and MAP@R,
and the few-shot enrolment curve — with the embeddings the figures came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import DEFAULT_RERANK
from retrieval.datasets import DatasetOptions
from retrieval.engine.rerank import checked
from retrieval.errors import InputError
from retrieval.progress import ProgressFactory, no_progress
from retrieval.training.metrics import (
    OpenSetRun,
    enrollment_accuracy,
    open_set_run,
    open_set_split,
    retrieval_metrics,
)

OPEN_SET_KEYS = (
    "auroc",
    "known_right",
    "absent_rejected",
    "threshold",
    "absent_share",
    "queries_absent",
)


@dataclass(frozen=True)
class Evaluation:
    """What evaluate measured (its ``metrics``, the keys of ``evaluate --json``) and what it
    measured it on: each readable image's vector, label and path, in the same order."""

    metrics: dict[str, Any]
    vectors: np.ndarray
    labels: list[str]
    paths: list[str]
    skipped: list[tuple[str, str]]
    open_set: OpenSetRun | None = None


def evaluate(
    data_dir: str | Path,
    *,
    model: str = "efficientnet_lite0",
    shots: Sequence[int] = (1, 5, 10),
    seed: int = 0,
    k: int = 5,
    batch_size: int = 32,
    rerank: str = DEFAULT_RERANK,
    mirror: bool = True,
    dataset: DatasetOptions | None = None,
    progress: ProgressFactory = no_progress,
) -> Evaluation:
    """Leave-one-out Recall@1/2/4/8 and MAP@R over every image of a dataset (a folder per label,
    or a benchmark read with ``dataset``'s options), and the enrolment curve: top-1 k-NN accuracy
    after enrolling ``shots`` random images per class; and the open world (``open_set``, ``ece``):
    half the classes (seeded) in a gallery with 60 % of their images, the rest of their images
    and up to 12 of each other class's queried one at a time, the gallery calibrated from itself
    as an index is (``ece``: over these queries; ``ece_at_absent_share``: the known and absent
    ones weighted to the share of absent queries the confidence assumes); with the embeddings
    they came from. Recall@K and MAP@R rank the neighbours
    as ``query --rerank`` does (``rerank``); the labels (enrolment, open world) are decided
    before re-ranking, as a query decides them. With ``mirror`` (as ``query`` by default) each
    image is asked averaged with its mirror image, the gallery holding it as it is."""
    checked(rerank)
    from retrieval.nets.export import fast_embedder
    from retrieval.nets.model import load_model

    scan = (dataset or DatasetOptions()).scan(data_dir)
    loaded = load_model(model)
    embedder, _ = fast_embedder(loaded, scan.records, batch_size=batch_size)
    mirrored = mirror and not loaded.net.spec.flip
    with progress(len(scan.records), "embedding") as bar:
        result = embedder.embed_paths(
            [r.path for r in scan.records],
            progress=bar.update,
            boxes=[r.box for r in scan.records],
            mirror=mirrored,
        )
    asked = result.mirrored
    labels = [scan.records[i].label for i in result.ok]
    if len(set(labels)) < 2:
        raise InputError(f"{data_dir}: evaluation needs at least 2 labels with readable images")
    metrics: dict[str, Any] = retrieval_metrics(
        result.vectors, np.array(labels), rerank=rerank, queries=asked
    )
    metrics["rerank"] = rerank
    metrics["mirror"] = mirror or loaded.net.spec.flip  # asked mirror-averaged, by either
    metrics["enrollment"] = {
        str(n): enrollment_accuracy(result.vectors, labels, n, seed=seed, k=k, queries=asked)
        for n in shots
    }
    metrics.update(n_images=len(labels), n_classes=len(set(labels)), model=loaded.name)
    paths = [str(scan.records[i].path) for i in result.ok]
    open_set = open_set_run(
        result.vectors, labels, *open_set_split(labels, paths, seed=seed), k=k, asked=asked
    )
    measured = open_set.metrics()
    metrics["ece"] = measured.pop("ece")
    metrics["ece_at_absent_share"] = measured.pop("ece_at_absent_share")
    metrics["open_set"] = {key: measured[key] for key in OPEN_SET_KEYS}
    return Evaluation(
        metrics, result.vectors, labels, paths, scan.skipped + result.failures, open_set
    )
