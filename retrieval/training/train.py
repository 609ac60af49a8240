"""Metric-learning training loop: P×K batches, mining, freezing, cached frozen trunk, warm-up + cosine,
optional validation by Recall@1 on held-out classes (best checkpoint), resume."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from retrieval.config import Preprocess, TrainConfig
from retrieval.datasets import DatasetOptions
from retrieval.datasets.folders import Record
from retrieval.engine.images import load_rgb
from retrieval.engine.transforms import EvalTransform
from retrieval.errors import InputError
from retrieval.nets.model import EmbeddingNet, load_model, save_model_dir
from retrieval.progress import ProgressFactory, no_progress
from retrieval.training.losses import MetricLoss, make_loss
from retrieval.training.metrics import retrieval_metrics
from retrieval.training.miners import make_miner
from retrieval.training.samplers import PKSampler

STATE_NAME = "last.pt"
HISTORY_NAME = "history.json"
CONFIG_NAME = "config.json"


@dataclass
class TrainReport:
    out: Path
    best_epoch: int
    best: dict[str, float]
    history: list[dict[str, Any]]
    seconds: float


def epoch_key(row: dict[str, Any]) -> tuple[float, float]:
    """How two epochs' history rows compare for keeping one: validation Recall@1, then MAP@R
    (without validation, the later epoch); the earlier of equal epochs is kept."""
    return (row.get("recall_at_1", row["epoch"]), row.get("map_at_r", 0.0))


def split_classes(
    records: Sequence[Record], val_classes: int, seed: int
) -> tuple[list[Record], list[Record]]:
    """Hold out ``val_classes`` whole classes (seeded choice) for validation."""
    labels = sorted({r.label for r in records})
    if val_classes and len(labels) - val_classes < 2:
        raise InputError(
            f"--val-classes {val_classes} leaves {len(labels) - val_classes} classes to train on; need 2"
        )
    held = set(random.Random(seed).sample(labels, val_classes)) if val_classes else set()
    return [r for r in records if r.label not in held], [r for r in records if r.label in held]


def train_transform(pre: Preprocess, size: int, crop_scale: float) -> Callable:
    """Random resized crop (``crop_scale``-1 of the area), horizontal flip, colour jitter, normalise."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(size, scale=(crop_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.02),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(pre.mean), list(pre.std)),
        ]
    )


class _Images(Dataset):
    def __init__(
        self, records: Sequence[Record], labels: Sequence[int], transform: Callable, min_side: int
    ) -> None:
        self.records = list(records)
        self.labels = list(labels)
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = self.records[i]
        return self.transform(load_rgb(r.path, min_side=self.min_side, box=r.box)), self.labels[i]


def _frozen_prefix(cfg: TrainConfig, n_stages: int) -> int:
    if cfg.freeze == "none":
        return 0
    if cfg.freeze == "all":
        return n_stages
    return max(0, n_stages - int(cfg.freeze))


def _freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm keeps its ImageNet statistics: P×K batches of 32 are too small and too skewed."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


@torch.no_grad()
def _prefix_outputs(
    net: EmbeddingNet, loader: DataLoader, stage: int, progress: ProgressFactory, desc: str
) -> torch.Tensor:
    chunks = []
    with progress(len(loader.dataset), desc) as bar:
        for x, _ in loader:
            chunks.append(net.backbone.forward_stages(x, 0, stage).to(torch.float16))
            bar.update(len(x))
    return torch.cat(chunks)


@torch.no_grad()
def _embed(
    net: EmbeddingNet, inputs: torch.Tensor | DataLoader, stage: int, descriptor: bool
) -> np.ndarray:
    """Embeddings, or unit pooled descriptors, of cached stage outputs or of a loader of images."""
    net.eval()
    rows = []
    batches = (
        ((inputs[s : s + 64].float(), None) for s in range(0, len(inputs), 64))
        if isinstance(inputs, torch.Tensor)
        else inputs
    )
    for x, _ in batches:
        if not descriptor:
            rows.append(net.embed_from(x, stage))
        elif net.spec.flip:
            both = net.descriptor_from(x, stage) + net.descriptor_from(x.flip(3), stage)
            rows.append(torch.nn.functional.normalize(both, dim=1))
        else:
            rows.append(net.descriptor_from(x, stage))
    return torch.cat(rows).numpy()


def pca_whitening(x: np.ndarray, dim: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (dim, d) and bias (dim,) of a PCA projection scaled by eigenvalue^-power.

    ``x`` (n, d) descriptors. Directions beyond the data's rank get the smallest kept scale.
    """
    mean = x.mean(axis=0)
    xc = (x - mean).astype(np.float64)
    cov = xc.T @ xc / max(len(x) - 1, 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:dim]
    eigval = np.maximum(eigval[order], eigval[order][eigval[order] > 1e-9].min(initial=1e-9))
    weight = (eigvec[:, order] * eigval**-power).T
    return weight.astype(np.float32), (-weight @ mean).astype(np.float32)


def _lr_factor(step: int, total: int, warmup: float) -> float:
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _param_groups(net: EmbeddingNet, loss: MetricLoss, cfg: TrainConfig) -> list[dict[str, Any]]:
    trunk = [p for p in net.backbone.parameters() if p.requires_grad]
    new = [
        p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("backbone.")
    ]
    new += list(loss.parameters())
    groups = []
    if trunk:
        groups.append({"params": trunk, "lr": cfg.lr_trunk, "base_lr": cfg.lr_trunk})
    if new:
        groups.append({"params": new, "lr": cfg.lr_head, "base_lr": cfg.lr_head})
    return groups


def train(
    data: str | Path | Sequence[Record],
    out: str | Path,
    cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    num_workers: int = 2,
    progress: ProgressFactory = no_progress,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainReport:
    """Train an embedding network on a dataset folder (a folder per class, or a benchmark layout
    detected from its files) or on records (with their boxes) into model folder ``out``.

    Writes ``out/model.pt`` (with ``cfg.val_classes``, the best epoch by validation Recall@1, then
    MAP@R, epoch 0 the untrained start competing too; without, the last epoch), ``out/last.pt`` (resume state), ``out/history.json`` and ``out/config.json``.
    """
    start_time = time.perf_counter()
    cfg = cfg or TrainConfig()
    out = Path(out)
    state_path = out / STATE_NAME
    state: dict[str, Any] | None = None
    if resume:
        if not state_path.is_file():
            raise InputError(f"--resume: {state_path} does not exist; start without --resume")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        cfg = TrainConfig.from_dict(state["config"])
    elif (out / "model.pt").exists():
        raise InputError(f"{out} already holds a model; choose another --out or pass --resume")
    records = (
        list(data) if not isinstance(data, (str, Path)) else DatasetOptions().scan(data).records
    )
    train_recs, val_recs = split_classes(records, cfg.val_classes, cfg.seed)
    class_ids = {lab: i for i, lab in enumerate(sorted({r.label for r in train_recs}))}
    train_labels = [class_ids[r.label] for r in train_recs]
    fillable = sum(n >= 2 for n in Counter(train_labels).values())
    if fillable < cfg.p:
        raise InputError(
            f"--batch-p {cfg.p} needs {cfg.p} classes of 2 or more images to train on; "
            f"{fillable} of the {len(class_ids)} classes left after --val-classes "
            f"{cfg.val_classes} have them: lower --batch-p or --val-classes"
        )
    sampler = PKSampler(train_labels, cfg.p, cfg.k, seed=cfg.seed)

    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.backbone, spec=cfg.model_spec())
    net = loaded.net
    pre = replace(net.preprocess, resize=cfg.image_size, crop=cfg.image_size)
    net.backbone.preprocess = pre
    n_stages = len(net.backbone.stages())
    frozen = _frozen_prefix(cfg, n_stages)
    for module in net.backbone.stage_modules()[:frozen]:
        module.requires_grad_(False)

    eval_tf = EvalTransform(pre)
    aug_tf = train_transform(pre, cfg.image_size, cfg.crop_scale) if cfg.augment else eval_tf

    def loader(
        recs: Sequence[Record], tf: Callable, labels: Sequence[int] | None = None
    ) -> DataLoader:
        ds = _Images(recs, labels or [0] * len(recs), tf, cfg.image_size)
        return DataLoader(ds, batch_size=64, num_workers=num_workers)

    cache: torch.Tensor | None = None
    val_input: torch.Tensor | DataLoader | None = loader(val_recs, eval_tf) if val_recs else None
    if frozen:
        views = [
            _prefix_outputs(net, loader(train_recs, eval_tf), frozen, progress, "caching trunk")
        ]
        for v in range(1, cfg.cache_views):
            torch.manual_seed(cfg.seed + v)
            views.append(
                _prefix_outputs(
                    net, loader(train_recs, aug_tf), frozen, progress, f"caching view {v + 1}"
                )
            )
        cache = torch.stack(views, dim=1)
        if val_recs:
            val_input = _prefix_outputs(
                net, loader(val_recs, eval_tf), frozen, progress, "caching val"
            )
    stage = frozen

    # With a whitening head (or none) the loss trains the pooled descriptor itself.
    descriptor = cfg.head == "whiten" or cfg.dim is None
    loss_fn = make_loss(
        cfg.loss,
        num_classes=len(class_ids),
        dim=net.backbone.feature_dim if descriptor else net.dim,
    )
    miner = make_miner(cfg.miner)
    optimizer = torch.optim.AdamW(_param_groups(net, loss_fn, cfg), weight_decay=cfg.weight_decay)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * cfg.epochs
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    best_state: dict[str, torch.Tensor] = {}
    first_epoch = 1
    if state is not None:
        net.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        history, best, best_state = state["history"], state["best"], state["best_model"]
        first_epoch = state["epoch"] + 1
    val_labels = np.array([r.label for r in val_recs])

    def measure(use_descriptor: bool) -> dict[str, float]:
        if val_input is None:
            return {}
        x = _embed(net, val_input, stage, use_descriptor)
        return {k: round(v, 4) for k, v in retrieval_metrics(x, val_labels).items()}

    def validate(epoch: int, loss_value: float | None, seconds: float) -> None:
        row: dict[str, Any] = {"epoch": epoch, "loss": loss_value, "seconds": round(seconds, 1)}
        row.update(measure(descriptor))
        history.append(row)
        if not best or epoch_key(row) > epoch_key(best):
            best.clear()
            best.update(row)
            best_state.clear()
            best_state.update({k: v.clone() for k, v in net.state_dict().items()})
        if on_epoch is not None:
            on_epoch(row)

    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(
        json.dumps({"train": cfg.to_dict(), "preprocess": pre.to_dict()}, indent=2)
    )
    if state is None:
        validate(0, None, 0.0)

    train_ds = _Images(train_recs, train_labels, aug_tf, cfg.image_size)
    for epoch in range(first_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)
        net.train()
        _freeze_batchnorm(net)
        losses = []
        if cache is not None:
            batches = (
                (
                    cache[idx, torch.randint(cfg.cache_views, (len(idx),))].float(),
                    torch.tensor(train_labels)[idx],
                )
                for idx in (torch.tensor(b) for b in sampler)
            )
        else:
            batches = iter(DataLoader(train_ds, batch_sampler=sampler, num_workers=num_workers))
        with progress(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}") as bar:
            for i, (x, y) in enumerate(batches):
                step = (epoch - 1) * steps_per_epoch + i
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * _lr_factor(step, total_steps, cfg.warmup)
                emb = net.descriptor_from(x, stage) if descriptor else net.embed_from(x, stage)
                indices = miner(emb, y) if miner is not None else None
                loss = loss_fn(emb, y, indices)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix_str(f"loss {np.mean(losses[-20:]):.4f}")
        validate(epoch, round(float(np.mean(losses)), 5), time.perf_counter() - t0)
        tmp = out / (STATE_NAME + ".tmp")
        torch.save(
            {
                "config": cfg.to_dict(),
                "epoch": epoch,
                "model": net.state_dict(),
                "loss": loss_fn.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "best": best,
                "best_model": best_state,
            },
            tmp,
        )
        tmp.replace(state_path)
        (out / HISTORY_NAME).write_text(json.dumps(history, indent=2))

    net.load_state_dict(best_state)
    if cfg.head == "whiten" and cfg.dim is not None:
        plain = cache[:, 0] if cache is not None else loader(train_recs, eval_tf)
        w, b = pca_whitening(_embed(net, plain, stage, True), cfg.dim, cfg.whiten_power)
        with torch.no_grad():
            net.head.weight.copy_(torch.from_numpy(w))
            net.head.bias.copy_(torch.from_numpy(b))
        row = {"epoch": best["epoch"], "loss": None, "seconds": 0.0, "whitened": True}
        row.update(measure(False))
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    save_model_dir(net, out, extra={"epoch": best["epoch"], "train_config": cfg.to_dict()})
    (out / HISTORY_NAME).write_text(json.dumps(history, indent=2))
    return TrainReport(out, int(best["epoch"]), best, history, time.perf_counter() - start_time)
