"""Choose a recipe on validation species only, over several draws of them.

The protocol trains on the first 25 species of cub50-dev and holds out 5 of them to validate each
epoch (the kept epoch is the best one there); the other 25 species are never looked at here. Five
validation species are few: with one draw, two recipes differ by one or two photos. This script
trains each recipe once per seed (a seed draws both the validation species and the training
order, as ``retrieve train --seed S --val-classes 5`` does) and compares the recipes on the same
draws: validation Recall@1 and MAP@R of the kept epoch and of the last one, per seed, their
means, and each recipe's mean paired difference from the first one with its standard error over
the seeds.

    python scripts/bench_recipe_cv.py                                    # ours vs ours-5ep-crop0.25
    python scripts/bench_recipe_cv.py --rows ours,ours-5ep --seeds 0,1,2 --work /tmp/cv
    python scripts/bench_recipe_cv.py --rows ours-val5,ours --nested

With ``--nested`` a row keeps its own validation classes, drawn (by the same seed) from the
draw's 20 training species, or none for a row without them, and its kept model is measured after
training on the draw's 5 validation species, which it never saw: so a recipe that trains on more
species (``ours``, the default: every species, the last epoch) is compared with one that holds
some out to choose its epoch (``ours-val5``), on species neither looked at.

A model already in WORK/ROW-sSEED (WORK/ROW-nested-sSEED) trained with the same settings is read,
not trained again.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_quality import DEFAULT_DATA, ROOT, TRAINED_ROWS, machine_and_command, split

from retrieval.config import TrainConfig
from retrieval.datasets.folders import Record
from retrieval.nets.model import load_model
from retrieval.training.metrics import retrieval_metrics
from retrieval.training.train import epoch_key, split_classes, train

VAL_CLASSES = 5


def same_settings(out: Path, cfg: TrainConfig) -> bool:
    """Whether ``out`` holds a model trained with ``cfg`` (a setting its config.json predates
    counts at its default, which is what such a model was trained with)."""
    path = out / "config.json"
    if not (out / "model.pt").is_file() or not path.is_file():
        return False
    saved = json.loads(path.read_text())["train"]
    return {**TrainConfig().to_dict(), **saved} == cfg.to_dict()


def history(out: Path, cfg: TrainConfig, train_recs: list) -> list[dict]:
    """Per-epoch validation metrics of ``cfg`` trained into ``out`` (trained unless already there)."""
    if not same_settings(out, cfg):
        train(train_recs, out, cfg)
    return json.loads((out / "history.json").read_text())


def kept(hist: list[dict]) -> dict:
    """The epoch ``retrieve train`` kept (its own rule, the first of the best)."""
    return max((e for e in hist if not e.get("whitened")), key=epoch_key)


def measured_on(out: Path, hist: list[dict], val: list[Record]) -> dict:
    """The kept model in ``out`` measured on ``val`` as validation measures it (no re-ranking),
    with the epoch it kept."""
    emb = load_model(str(out)).embedder(batch_size=32).embed_paths([r.path for r in val])
    labels = np.array([val[i].label for i in emb.ok])
    return {"epoch": kept(hist)["epoch"], **retrieval_metrics(emb.vectors, labels)}


def mean_se(xs: list[float]) -> tuple[float, float]:
    """The mean of ``xs`` and its standard error (nan for one value)."""
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return statistics.fmean(xs), se


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", default="ours,ours-5ep-crop0.25")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_recipe_cv")
    ap.add_argument(
        "--nested",
        action="store_true",
        help="each row validates on its own classes of the draw's training species (or none) and "
        "is measured on the draw's validation species after training",
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(
            f"bench_recipe_cv: data folder {args.data} is absent (see ../shared/data/README.md)"
        )
    rows = args.rows.split(",")
    for name in rows:
        if name not in TRAINED_ROWS:
            sys.exit(f"bench_recipe_cv: unknown row {name!r}; rows: {', '.join(TRAINED_ROWS)}")
    if not all(s.strip().isdigit() for s in args.seeds.split(",")):
        sys.exit(f"bench_recipe_cv: --seeds takes seeds like 0,1,2, not {args.seeds!r}")
    seeds = [int(s) for s in args.seeds.split(",")]
    train_recs, _ = split(args.data)

    results: dict[str, dict[int, tuple[dict, dict | None]]] = {name: {} for name in rows}
    for seed in seeds:
        for name in rows:
            if args.nested:
                fit, val = split_classes(train_recs, VAL_CLASSES, seed)
                out = args.work / f"{name}-nested-s{seed}"
                hist = history(out, replace(TRAINED_ROWS[name], seed=seed), fit)
                results[name][seed] = (measured_on(out, hist, val), None)
            else:
                cfg = replace(TRAINED_ROWS[name], val_classes=VAL_CLASSES, seed=seed)
                hist = history(args.work / f"{name}-s{seed}", cfg, train_recs)
                results[name][seed] = (kept(hist), hist[-1])
            print(f"  {name} seed {seed}: {json.dumps(hist)}", file=sys.stderr)

    print(machine_and_command(__file__))
    print(
        f"data: {args.data.name}, the first {len({r.label for r in train_recs})} species; "
        + (
            f"{VAL_CLASSES} of them held out per seed and measured after training, each row "
            "trained on the rest (less its own validation species)"
            if args.nested
            else f"{VAL_CLASSES} of them held out for validation per seed, the rest trained on"
        )
    )
    for seed in seeds:
        _, val = split_classes(train_recs, VAL_CLASSES, seed)
        print(f"seed {seed} validates on: {', '.join(sorted({r.label for r in val}))}")
    last_cols = not args.nested  # a nested row is measured once, at its kept epoch
    print()
    print(
        "| row | seed | kept epoch | val R@1 | val MAP@R |"
        + (" last epoch R@1 | last epoch MAP@R |" if last_cols else "")
    )
    print("|---|---|---|---|---|" + ("---|---|" if last_cols else ""))
    for name in rows:
        for seed in seeds:
            k, last = results[name][seed]
            print(
                f"| {name} | {seed} | {k['epoch']} | {k['recall_at_1']:.3f} | {k['map_at_r']:.3f} |"
                + (f" {last['recall_at_1']:.3f} | {last['map_at_r']:.3f} |" if last else "")
            )
    print()
    print(
        f"| row | mean val R@1 | mean val MAP@R | minus {rows[0]}: R@1 ± se | MAP@R ± se |"
        + (" last epoch: mean R@1 | mean MAP@R |" if last_cols else "")
    )
    print("|---|---|---|---|---|" + ("---|---|" if last_cols else ""))
    for name in rows:
        cells: list[float | str] = []
        for metric in ("recall_at_1", "map_at_r"):
            cells.append(mean_se([results[name][s][0][metric] for s in seeds])[0])
        for metric in ("recall_at_1", "map_at_r"):
            d, se = mean_se(
                [results[name][s][0][metric] - results[rows[0]][s][0][metric] for s in seeds]
            )
            cells.append(f"{d:+.4f} ± {se:.4f}")
        if last_cols:
            for metric in ("recall_at_1", "map_at_r"):
                cells.append(mean_se([results[name][s][1][metric] for s in seeds])[0])
        print(
            "| "
            + " | ".join([name, *(f"{c:.4f}" if isinstance(c, float) else c for c in cells)])
            + " |"
        )


if __name__ == "__main__":
    main()
