"""What mirror-image averaging buys a trained model on unseen species, and on which side.

A trained model embeds each image twice, as it is and mirrored, and averages the two: two passes
of the network for every gallery image and every query. This measures, on the 25 unseen species
of bench_quality's protocol (leave-one-out; each photo queried against all the others), where the
gain comes from: averaging on both sides (what build-index and query do), on the query side only
(the gallery embedded once), on the gallery side only, and the mirror taken inside the network
(the trunk run once up to stage k, the rest run on its output and on that output mirrored), and
the mirror image embedded at a smaller size (its pass costs about (size/crop)² of a full one). The
cost column is the forward pass's images/s over the single pass's, the two timed in turn on
each batch of the same run.

    python scripts/bench_flip.py --model runs/bench_quality/ours
    python scripts/bench_flip.py --model runs/bench_quality/ours --stages 9,12,15,16
    python scripts/bench_flip.py --model runs/bench_recipe_cv/ours-s1 --species validation --stages '' --sizes 160

``--species validation`` measures on the species the model held out to validate its epochs
(its --val-classes drawn by its --seed from the 25 training species), never on the unseen 25.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.errors import RetrieveError
from retrieval.nets.model import EmbeddingNet, load_model
from retrieval.training.metrics import (
    enrollment_accuracy,
    map_at_r,
    neighbors_leave_one_out,
    recall_at_k,
)
from retrieval.training.train import split_classes

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import DEFAULT_DATA, DRAWS, SHOTS, machine_and_command, split  # noqa: E402

Forward = Callable[[torch.Tensor], torch.Tensor]


def mirrored_at(net: EmbeddingNet, stage: int) -> Forward:
    """The trunk up to ``stage`` once, the rest on its output and on that output mirrored
    (``net`` with its own mirror-image averaging off)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        maps = net.backbone.forward_stages(x, 0, stage)
        both = net.embed_from(maps, stage) + net.embed_from(maps.flip(3), stage)
        return F.normalize(both, dim=1)

    return forward


@torch.inference_mode()
def run(
    forward: Forward, reference: Forward, batches: list[np.ndarray]
) -> tuple[np.ndarray, float]:
    """Embeddings of every batch by ``forward``, and its images/s over ``reference``'s: the two
    timed in turn on each batch (after an untimed first one), so that the machine's drift over a
    run, which is larger than the differences measured here, falls on both alike."""
    first = torch.from_numpy(batches[0]).contiguous(memory_format=torch.channels_last)
    forward(first)
    reference(first)
    rows, spent, spent_reference = [], 0.0, 0.0
    for batch in batches:
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        reference(x)
        t1 = time.perf_counter()
        rows.append(forward(x))
        spent += time.perf_counter() - t1
        spent_reference += t1 - t0
    return torch.cat(rows).numpy(), spent_reference / spent


def mirrored(net: EmbeddingNet) -> Forward:
    """The image and its mirror image, each through the whole network, averaged."""
    return lambda x: F.normalize(net(x) + net(x.flip(3)), dim=1)


def mirrored_small(net: EmbeddingNet, size: int) -> Forward:
    """The image, and its mirror image resized to ``size`` px, each through the whole network,
    averaged (a bilinear resize of the normalised tensor is the normalised resized image)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(x.flip(3), size=(size, size), mode="bilinear", antialias=True)
        return F.normalize(net(x) + net(small), dim=1)

    return forward


def leave_one_out(
    gallery: np.ndarray, queries: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
    """R@1 and MAP@R of each query row against every other gallery row."""
    _, counts = np.unique(labels, return_counts=True)
    nn_labels = labels[neighbors_leave_one_out(gallery, int(counts.max()) - 1, queries=queries)]
    return recall_at_k(labels, nn_labels, (1,))[1], map_at_r(labels, nn_labels)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", required=True, help="a trained model folder (bench_quality's WORK/ours)"
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument(
        "--stages", default="5,9,12,15,16", help="stages to mirror inside the network at"
    )
    ap.add_argument(
        "--sizes", default="", help="sizes in px to embed the mirror image at (e.g. 160,192)"
    )
    ap.add_argument(
        "--species",
        choices=("unseen", "validation"),
        default="unseen",
        help="the 25 unseen species, or the model's own validation species",
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench_flip: data folder {args.data} is absent (see ../shared/data/README.md)")
    try:
        loaded = load_model(args.model)
    except RetrieveError as exc:
        sys.exit(f"bench_flip: --model {args.model}: {exc}")
    net = loaded.net.eval()
    n_stages = len(net.backbone.stages())
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not all(s.isdigit() and 1 <= int(s) < n_stages for s in stages):
        sys.exit(
            f"bench_flip: --stages takes stage numbers from 1 to {n_stages - 1}, not {args.stages!r}"
        )
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not all(s.isdigit() and 32 <= int(s) <= net.preprocess.crop for s in sizes):
        sys.exit(
            f"bench_flip: --sizes takes sizes from 32 to {net.preprocess.crop} px, not {args.sizes!r}"
        )
    train_recs, test = split(args.data)
    if args.species == "validation":
        config = Path(args.model) / "config.json"
        train_cfg = json.loads(config.read_text())["train"] if config.is_file() else {}
        if not train_cfg.get("val_classes"):
            sys.exit(f"bench_flip: --model {args.model} held out no validation species")
        _, test = split_classes(train_recs, train_cfg["val_classes"], train_cfg["seed"])
    net.spec = replace(net.spec, flip=False)
    batches: list[np.ndarray] = []

    def keep(batch: np.ndarray) -> np.ndarray:
        batches.append(batch)
        return np.zeros((len(batch), loaded.net.dim), np.float32)

    result = loaded.embedder(forward=keep).embed_paths([r.path for r in test])
    labels = np.array([test[i].label for i in result.ok])

    with torch.inference_mode():
        plain = torch.cat([net(torch.from_numpy(b)) for b in batches]).numpy()
    averaged, both_speed = run(mirrored(net), net, batches)
    variants = [
        ("one pass (no mirror)", plain, plain, 1.0),
        ("mirror both sides (today)", averaged, averaged, both_speed),
        ("mirror queries only", plain, averaged, 1.0),
        ("mirror gallery only", averaged, plain, both_speed),
    ]
    for stage in map(int, stages):
        inside, speed = run(mirrored_at(net, stage), net, batches)
        variants.append((f"mirror at stage {stage} of {n_stages}", inside, inside, speed))
    for size in map(int, sizes):
        small, speed = run(mirrored_small(net, size), net, batches)
        variants.append((f"mirror at {size} px", small, small, speed))

    print(machine_and_command(__file__))
    print(
        f"model: {args.model}; measured on {len(set(labels.tolist()))} {args.species} species ({len(labels)} images)"
    )
    print(
        "| variant | R@1 | MAP@R | "
        + " | ".join(f"{n}-shot" for n in SHOTS)
        + " | build images/s × one pass |"
    )
    print("|---|---|---|" + "---|" * len(SHOTS) + "---|")
    for name, gallery, queries, speed in variants:
        r1, mapr = leave_one_out(gallery, queries, labels)
        shots = " | ".join(
            f"{np.mean([enrollment_accuracy(gallery, labels, n, seed=s, queries=queries) for s in range(DRAWS)]):.3f}"
            for n in SHOTS
        )
        print(f"| {name} | {r1:.3f} | {mapr:.3f} | {shots} | {speed:.2f} |")


if __name__ == "__main__":
    main()
