"""Retrieval quality on unseen species (the protocol of ../shared/data/README.md).

Trains on the first 25 species of cub50-dev in sorted-name order (validation classes for early
stopping are held out of those 25), measures on the other 25: Recall@1/2/4/8 and MAP@R
leave-one-out, and 5-shot enrolment accuracy. Prints one table with the machine and the command.

    python scripts/bench_quality.py                       # every row
    python scripts/bench_quality.py --rows frozen-gem,ours
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

from retrieval.config import ModelSpec, TrainConfig
from retrieval.datasets.folders import Record, scan_gallery
from retrieval.nets.model import load_model
from retrieval.training.metrics import enrollment_accuracy, retrieval_metrics
from retrieval.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cub50-dev"

OURS = TrainConfig(val_classes=5)
TRAINED_ROWS = {
    "triplet-batch-hard": replace(OURS, loss="triplet", miner="batch-hard"),
    "triplet-semi-hard": replace(OURS, loss="triplet", miner="semi-hard"),
    "contrastive": replace(OURS, loss="contrastive", miner="hard-pairs"),
    "ours": OURS,
    "ours+attention": replace(OURS, attention=True),
    "ours-whiten512": replace(OURS, dim=512),
}
FROZEN_ROWS = {
    "frozen-avg": ModelSpec(pooling="avg"),
    "frozen-gem": ModelSpec(pooling="gem"),
    "frozen-gem-flip": ModelSpec(pooling="gem", flip=True),
}
ALL_ROWS = [*FROZEN_ROWS, *TRAINED_ROWS, "pml-reference"]


def split(data: Path) -> tuple[list[Record], list[Record]]:
    records = scan_gallery(data).records
    species = sorted({r.label for r in records})
    train_species = set(species[: len(species) // 2])
    return [r for r in records if r.label in train_species], [
        r for r in records if r.label not in train_species
    ]


def measure(model_ref: str, spec: ModelSpec | None, test: list[Record]) -> dict[str, float]:
    loaded = load_model(model_ref, spec=spec)
    emb = loaded.embedder(batch_size=32).embed_paths([r.path for r in test])
    labels = [test[i].label for i in emb.ok]
    out = retrieval_metrics(emb.vectors, np.array(labels))
    out["enroll_5"] = enrollment_accuracy(emb.vectors, labels, 5, seed=0)
    return out


def run_row(
    name: str, train_recs: list[Record], test: list[Record], work: Path, epochs: int | None
) -> dict:
    t0 = time.perf_counter()
    if name in FROZEN_ROWS:
        return {
            **measure("efficientnet_lite0", FROZEN_ROWS[name], test),
            "train_s": 0.0,
            "epochs": 0,
        }
    out = work / name
    if name == "pml-reference":
        from pml_reference import train_reference

        cfg = replace(OURS, epochs=epochs or OURS.epochs)
        train_reference(train_recs, out, cfg)
    else:
        cfg = TRAINED_ROWS[name]
        if epochs:
            cfg = replace(cfg, epochs=epochs)
        report = train(train_recs, out, cfg)
        print(
            f"  {name}: best epoch {report.best_epoch} of {cfg.epochs}; history {json.dumps(report.history)}",
            file=sys.stderr,
        )
    train_s = time.perf_counter() - t0
    return {**measure(str(out), None, test), "train_s": train_s, "epochs": cfg.epochs}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", default=",".join(ALL_ROWS))
    ap.add_argument("--epochs", type=int, default=None, help="override every trained row's epochs")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    ap.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench_quality: data folder {args.data} is absent (see ../shared/data/README.md)")
    sys.path.insert(0, str(Path(__file__).parent))
    train_recs, test = split(args.data)
    results = {}
    for name in args.rows.split(","):
        if name not in ALL_ROWS:
            sys.exit(f"bench_quality: unknown row {name!r}; rows: {', '.join(ALL_ROWS)}")
        work = args.work
        if (work / name).exists():
            import shutil

            shutil.rmtree(work / name)
        results[name] = run_row(name, train_recs, test, work, args.epochs)
        print(
            f"  {name}: {json.dumps({k: round(v, 4) for k, v in results[name].items()})}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(results))
        return
    cmd = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]]
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; command: {cmd}"
    )
    print(
        f"data: {args.data.name}, train {len({r.label for r in train_recs})} species "
        f"({len(train_recs)} images), test {len({r.label for r in test})} unseen species ({len(test)} images)"
    )
    print("| row | R@1 | R@2 | R@4 | R@8 | MAP@R | 5-shot enrol | epochs | train wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['recall_at_1']:.3f} | {r['recall_at_2']:.3f} | {r['recall_at_4']:.3f} | "
            f"{r['recall_at_8']:.3f} | {r['map_at_r']:.3f} | {r['enroll_5']:.3f} | {r['epochs']} | "
            f"{r['train_s'] / 60:.1f} min |"
        )


if __name__ == "__main__":
    main()
