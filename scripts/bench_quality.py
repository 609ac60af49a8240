"""Retrieval quality on unseen species (the protocol of ../shared/data/README.md).

Trains on the first 25 species of cub50-dev in sorted-name order (the ``VAL5`` rows hold 5 of
them out to choose the epoch), measures on the other 25: Recall@1/2/4/8 and MAP@R
leave-one-out, and enrolment accuracy from 1, 5 and 10 photos per species (each the mean of 20
seeded draws of those photos). Each photo is asked as ``retrieve query`` asks it: averaged with
its mirror image, the gallery holding it as it is (``--no-mirror``: as it is; a model trained
with ``--flip`` averages both sides itself). Prints one table with the machine and the command.
With ``--rerank``, each row once per re-ranking (as ``retrieve query --rerank`` ranks; the
5-shot label is decided before re-ranking), with the warm query latency p50 of ``retrieve
query`` on an index of the measured images (each queried photo left out of its neighbours;
measured when --rerank names more than none).

    python scripts/bench_quality.py                       # every row
    python scripts/bench_quality.py --rows frozen-gem,ours
    python scripts/bench_quality.py --rows ours --reuse --work /tmp/bq --rerank none,dba,qe,dba+qe
    python scripts/bench_quality.py --rows frozen-gem --species seen --rerank none,dba+qe
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import retrieval
from retrieval.config import RERANK_METHODS, ModelSpec, TrainConfig
from retrieval.datasets.folders import Record, scan_gallery
from retrieval.nets.model import load_model, save_model_dir
from retrieval.training.metrics import enrollment_accuracy, retrieval_metrics
from retrieval.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cub50-dev"

OURS = TrainConfig()  # every one of the 25 species trained on, the last epoch kept
# The default until 2026-12-04's every-species change: 5 of the 25 species held out to choose the
# epoch, each image averaged with its mirror image (the default until 2026-12-05). The rows below
# measured before that change are this recipe with one change, as then.
VAL5 = TrainConfig(val_classes=5, flip=True)
# The default recipe until 2026-12-04 (trunk learning rate 1e-5, 2 epochs): the rows that change
# one thing of it are measured against it, as the README's first table reports them.
BEFORE = replace(VAL5, lr_trunk=1e-5, epochs=2)
TRAINED_ROWS = {
    "triplet-batch-hard": replace(BEFORE, loss="triplet", miner="batch-hard"),
    "triplet-semi-hard": replace(BEFORE, loss="triplet", miner="semi-hard"),
    "contrastive": replace(BEFORE, loss="contrastive", miner="hard-pairs"),
    "ours": OURS,
    "ours-val5": VAL5,
    "ours-before": BEFORE,
    "ours+attention": replace(BEFORE, attention=True),
    "ours-whiten512": replace(BEFORE, dim=512),
    "ours-288": replace(BEFORE, image_size=288),
    "ours-lr3e-5": replace(BEFORE, lr_trunk=3e-5),
    "ours-lr3e-5-3ep": replace(BEFORE, lr_trunk=3e-5, epochs=3),
    "ours-lr1e-4-2ep": replace(BEFORE, lr_trunk=1e-4),
    "ours-lr3e-4": replace(BEFORE, lr_trunk=3e-4),
    "ours-p16": replace(VAL5, p=16),
    "ours-5ep": replace(VAL5, epochs=5),
    "ours-crop0.25": replace(VAL5, crop_scale=0.25),
    "ours-5ep-crop0.25": replace(VAL5, epochs=5, crop_scale=0.25),
    "ours-lite2": replace(VAL5, backbone="efficientnet_lite2"),
    "ours-lite2-5ep": replace(VAL5, backbone="efficientnet_lite2", epochs=5),
    "ours-192": replace(VAL5, image_size=192),
    "ours-176": replace(VAL5, image_size=176),
    "ours-256": replace(VAL5, image_size=256),
    "ours-proxy-anchor": replace(VAL5, loss="proxy-anchor", miner="none", lr_head=1e-2),
    "ours-wd0.05": replace(VAL5, weight_decay=0.05),
}
# Rows that measure another row's trained model (WORK/ROW) with mirror-image averaging on or off.
MIRROR_ROWS = {
    "ours-flip": ("ours", True),
    "ours-noflip": ("ours", False),
    "ours-before-noflip": ("ours-before", False),
}
FROZEN_ROWS = {
    "frozen-avg": ModelSpec(pooling="avg"),
    "frozen-gem": ModelSpec(pooling="gem"),
    "frozen-gem-flip": ModelSpec(pooling="gem", flip=True),
}
ALL_ROWS = [*FROZEN_ROWS, *TRAINED_ROWS, *MIRROR_ROWS, "pml-reference"]


def machine_and_command(script: str) -> str:
    """The header line of a bench table: the machine and the command that ran ``script``."""
    cmd = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(script, ROOT), *sys.argv[1:]]
    )
    return f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; command: {cmd}"


def split(data: Path) -> tuple[list[Record], list[Record]]:
    records = scan_gallery(data).records
    species = sorted({r.label for r in records})
    train_species = set(species[: len(species) // 2])
    return [r for r in records if r.label in train_species], [
        r for r in records if r.label not in train_species
    ]


LATENCY_QUERIES = 200
SHOTS = (1, 5, 10)  # enrolment accuracy with this many photos per species ...
DRAWS = 20  # ... averaged over this many seeded draws (one draw's s.d. is ~0.8 points at 5 shots)


def query_p50(
    model: str, test: list[Record], work: Path, reranks: list[str], mirror: bool
) -> dict[str, float]:
    """Warm p50 seconds of ``Retriever.query`` per re-ranking, over LATENCY_QUERIES of the test
    images (every 7th) queried one at a time on an index of all of them built with ``model``,
    each image by every re-ranking in turn (so that a busy moment of the machine falls on all)."""
    gallery, index = work / "gallery", work / "index"
    for r in test:
        link = gallery / r.label / Path(r.path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(Path(r.path).resolve())
    retrieval.build(gallery, index, model=model, force=True)
    queries = [r.path for r in test[::7]][:LATENCY_QUERIES]
    seconds: dict[str, list[float]] = {method: [] for method in reranks}
    with retrieval.Retriever(index) as r:
        for method in reranks:
            r.query(queries[:5], rerank=method, mirror=mirror)  # warm: network, FAISS, DBA lists
        for query in queries:
            for method in reranks:
                seconds[method].append(r.answer(query, rerank=method, mirror=mirror).seconds)
    return {method: float(np.median(s)) for method, s in seconds.items()}


def measure(
    model_ref: str,
    spec: ModelSpec | None,
    test: list[Record],
    reranks: list[str],
    work: Path,
    mirror: bool,
    flip: bool | None = None,
) -> dict[str, dict[str, float]]:
    loaded = load_model(model_ref, spec=spec)
    if flip is not None:  # the model's mirror-image averaging turned on or off
        loaded.net.spec = replace(loaded.net.spec, flip=flip)
    mirror = mirror and not loaded.net.spec.flip
    emb = loaded.embedder(batch_size=32).embed_paths([r.path for r in test], mirror=mirror)
    labels = [test[i].label for i in emb.ok]
    enrol = {
        f"enroll_{n}": float(
            np.mean(
                [
                    enrollment_accuracy(emb.vectors, labels, n, seed=s, queries=emb.mirrored)
                    for s in range(DRAWS)
                ]
            )
        )
        for n in SHOTS
    }
    if spec is not None or flip is not None:  # the model as measured, as a folder for build-index
        model_ref = str(save_model_dir(loaded.net, work / "model").parent)
    p50 = (
        query_p50(model_ref, [test[i] for i in emb.ok], work, reranks, mirror)
        if reranks != ["none"]
        else {}
    )
    return {
        method: {
            **retrieval_metrics(emb.vectors, np.array(labels), rerank=method, queries=emb.mirrored),
            **enrol,
            "query_p50_ms": 1000 * p50.get(method, float("nan")),
        }
        for method in reranks
    }


def run_row(
    name: str,
    train_recs: list[Record],
    test: list[Record],
    work: Path,
    epochs: int | None,
    reranks: list[str],
    reuse: bool,
    mirror: bool,
    seed: int | None = None,
) -> dict[str, dict]:
    t0 = time.perf_counter()
    if name in FROZEN_ROWS:
        measured = measure(
            "efficientnet_lite0", FROZEN_ROWS[name], test, reranks, work / name, mirror
        )
        return {m: {**r, "train_s": 0.0, "epochs": 0} for m, r in measured.items()}
    if name in MIRROR_ROWS:
        row, flip = MIRROR_ROWS[name]
        base = work / row
        if not (base / "model.pt").is_file():
            sys.exit(
                f"bench_quality: row {name} measures {base}; train it first (--rows {base.name})"
            )
        measured = measure(
            str(base), None, test, reranks, work / f"{name}-measured", mirror, flip=flip
        )
        return {m: {**r, "train_s": float("nan"), "epochs": "–"} for m, r in measured.items()}
    out = work / name
    if reuse:
        measured = measure(str(out), None, test, reranks, work / f"{name}-measured", mirror)
        return {m: {**r, "train_s": float("nan"), "epochs": "–"} for m, r in measured.items()}
    if name == "pml-reference":
        from pml_reference import train_reference

        cfg = replace(BEFORE, epochs=epochs or BEFORE.epochs)
        train_reference(train_recs, out, cfg)
    else:
        cfg = TRAINED_ROWS[name]
        if epochs:
            cfg = replace(cfg, epochs=epochs)
        if seed is not None:
            cfg = replace(cfg, seed=seed)
        report = train(train_recs, out, cfg)
        print(
            f"  {name}: best epoch {report.best_epoch} of {cfg.epochs}; history {json.dumps(report.history)}",
            file=sys.stderr,
        )
    train_s = time.perf_counter() - t0
    measured = measure(str(out), None, test, reranks, work / f"{name}-measured", mirror)
    return {m: {**r, "train_s": train_s, "epochs": cfg.epochs} for m, r in measured.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", default=",".join(ALL_ROWS))
    ap.add_argument("--epochs", type=int, default=None, help="override every trained row's epochs")
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help="train each row of this package's recipe (not pml-reference) with this seed (its "
        "validation classes and batch order)",
    )
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    ap.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    ap.add_argument(
        "--rerank",
        default="none",
        help=f"comma-separated re-rankings to measure each row with ({', '.join(RERANK_METHODS)})",
    )
    ap.add_argument(
        "--species",
        choices=("unseen", "seen"),
        default="unseen",
        help="measure on the 25 unseen species (the protocol) or on the 25 trained ones",
    )
    ap.add_argument(
        "--no-mirror",
        action="store_true",
        help="ask each photo as it is (retrieve query --no-mirror), not averaged with its mirror",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="measure the trained rows' models already in WORK/ROW instead of training them",
    )
    args = ap.parse_args()
    reranks = args.rerank.split(",")
    if args.seed is not None and args.seed < 0:
        sys.exit(f"bench_quality: --seed must be 0 or more, not {args.seed}")
    if any(m not in RERANK_METHODS for m in reranks):
        sys.exit(f"bench_quality: --rerank takes {', '.join(RERANK_METHODS)}")
    if not args.data.is_dir():
        sys.exit(f"bench_quality: data folder {args.data} is absent (see ../shared/data/README.md)")
    sys.path.insert(0, str(Path(__file__).parent))
    train_recs, test = split(args.data)
    measured = test if args.species == "unseen" else train_recs
    results = {}
    for name in args.rows.split(","):
        if name not in ALL_ROWS:
            sys.exit(f"bench_quality: unknown row {name!r}; rows: {', '.join(ALL_ROWS)}")
        work = args.work
        if (work / name).exists() and not (args.reuse and name not in FROZEN_ROWS):
            import shutil

            shutil.rmtree(work / name)
        rows = run_row(
            name,
            train_recs,
            measured,
            work,
            args.epochs,
            reranks,
            args.reuse,
            not args.no_mirror,
            args.seed,
        )
        for method, row in rows.items():
            key = name if reranks == ["none"] else f"{name} rerank {method}"
            results[key] = row
            print(f"  {key}: {json.dumps(row)}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
        return
    print(machine_and_command(__file__))
    print(
        f"data: {args.data.name}, train {len({r.label for r in train_recs})} species "
        f"({len(train_recs)} images), measured on {len({r.label for r in measured})} "
        f"{args.species} species ({len(measured)} images); queries "
        + ("as they are" if args.no_mirror else "averaged with their mirror image")
    )
    print(
        "| row | R@1 | R@2 | R@4 | R@8 | MAP@R | 1-shot | 5-shot | 10-shot | query p50 | epochs | train wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        wall = "–" if np.isnan(r["train_s"]) else f"{r['train_s'] / 60:.1f} min"
        p50 = "–" if np.isnan(r["query_p50_ms"]) else f"{r['query_p50_ms']:.1f} ms"
        print(
            f"| {name} | {r['recall_at_1']:.3f} | {r['recall_at_2']:.3f} | {r['recall_at_4']:.3f} | "
            f"{r['recall_at_8']:.3f} | {r['map_at_r']:.3f} | {r['enroll_1']:.3f} | {r['enroll_5']:.3f} | "
            f"{r['enroll_10']:.3f} | "
            f"{p50} | {r['epochs']} | {wall} |"
        )


if __name__ == "__main__":
    main()
