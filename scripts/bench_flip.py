"""What mirror-image averaging buys a trained model on unseen species, and on which side.

A trained model embeds each image twice, as it is and mirrored, and averages the two: two passes
of the network for every gallery image and every query. This measures, on the 25 unseen species
of bench_quality's protocol (leave-one-out; each photo queried against all the others), where the
gain comes from: averaging on both sides (what build-index and query do), on the query side only
(the gallery embedded once), on the gallery side only, and the mirror taken inside the network
(the trunk run once up to stage k, the rest run on its output and on that output mirrored). The
cost column is the forward pass's images/s over the single pass's, measured in the same run.

    python scripts/bench_flip.py --model runs/bench_quality/ours
    python scripts/bench_flip.py --model runs/bench_quality/ours --stages 9,12,15,16
"""

from __future__ import annotations

import argparse
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
def run(forward: Forward, batches: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Embeddings of every batch and the images/s of the forward pass."""
    t0 = time.perf_counter()
    rows = [
        forward(torch.from_numpy(b).contiguous(memory_format=torch.channels_last)) for b in batches
    ]
    seconds = time.perf_counter() - t0
    out = torch.cat(rows).numpy()
    return out, len(out) / seconds


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
    _, test = split(args.data)
    net.spec = replace(net.spec, flip=False)
    batches: list[np.ndarray] = []

    def keep(batch: np.ndarray) -> np.ndarray:
        batches.append(batch)
        return np.zeros((len(batch), loaded.net.dim), np.float32)

    result = loaded.embedder(forward=keep).embed_paths([r.path for r in test])
    labels = np.array([test[i].label for i in result.ok])

    plain, plain_ips = run(net, batches)
    mirror, mirror_ips = run(lambda x: net(x.flip(3)), batches)
    averaged = F.normalize(torch.from_numpy(plain + mirror), dim=1).numpy()
    both_ips = 1 / (1 / plain_ips + 1 / mirror_ips)
    variants = [
        ("one pass (no mirror)", plain, plain, plain_ips),
        ("mirror both sides (today)", averaged, averaged, both_ips),
        ("mirror queries only", plain, averaged, plain_ips),
        ("mirror gallery only", averaged, plain, both_ips),
    ]
    for stage in map(int, stages):
        inside, ips = run(mirrored_at(net, stage), batches)
        variants.append((f"mirror at stage {stage} of {n_stages}", inside, inside, ips))

    print(machine_and_command(__file__))
    print(
        f"model: {args.model}; measured on {len(set(labels.tolist()))} unseen species ({len(labels)} images)"
    )
    print(
        "| variant | R@1 | MAP@R | "
        + " | ".join(f"{n}-shot" for n in SHOTS)
        + " | build images/s × one pass |"
    )
    print("|---|---|---|" + "---|" * len(SHOTS) + "---|")
    for name, gallery, queries, ips in variants:
        r1, mapr = leave_one_out(gallery, queries, labels)
        shots = " | ".join(
            f"{np.mean([enrollment_accuracy(gallery, labels, n, seed=s, queries=queries) for s in range(DRAWS)]):.3f}"
            for n in SHOTS
        )
        print(f"| {name} | {r1:.3f} | {mapr:.3f} | {shots} | {ips / plain_ips:.2f} |")


if __name__ == "__main__":
    main()
