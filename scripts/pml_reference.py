"""The peer to beat: our backbone trained with pytorch-metric-learning's reference triplet recipe."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, samplers
from torch.utils.data import DataLoader

from retrieval.config import ModelSpec, TrainConfig
from retrieval.datasets.folders import Record
from retrieval.nets.model import load_model, save_model_dir
from retrieval.training.train import _Images, train_transform

log = logging.getLogger(__name__)


def train_reference(train_records: list[Record], out: Path, cfg: TrainConfig) -> None:
    """Train ``cfg.epochs`` epochs of TripletMarginLoss + MultiSimilarityMiner on M-per-class
    batches (Adam, constant LR, BatchNorm updating) and save the result as our model folder ``out``.
    """
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # MPerClassSampler draws from numpy's global generator
    spec = ModelSpec(
        backbone=cfg.backbone,
        pooling=cfg.pooling,
        dim=cfg.dim or 512,
        attention=False,
        flip=cfg.flip,
    )
    net = load_model(cfg.backbone, spec=spec).net
    pre = dataclasses.replace(net.preprocess, resize=cfg.image_size, crop=cfg.image_size)
    net.backbone.preprocess = pre

    class_ids = {lab: i for i, lab in enumerate(sorted({r.label for r in train_records}))}
    labels = [class_ids[r.label] for r in train_records]
    dataset = _Images(
        train_records,
        labels,
        train_transform(pre, cfg.image_size),
        cfg.image_size,
    )
    batch_size = cfg.p * cfg.k
    sampler = samplers.MPerClassSampler(
        labels, m=cfg.k, batch_size=batch_size, length_before_new_iter=len(labels)
    )
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=2, drop_last=True
    )

    loss_fn = losses.TripletMarginLoss(margin=0.1)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    head = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    optimizer = torch.optim.Adam(
        [
            {"params": list(net.backbone.parameters()), "lr": cfg.lr_trunk},
            {"params": head, "lr": cfg.lr_head},
        ],
        weight_decay=cfg.weight_decay,
    )

    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        epoch_losses = []
        for x, y in loader:
            emb = net(x)
            loss = loss_fn(emb, y, miner(emb, y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
        log.info(
            "pml-reference epoch %d/%d: loss %.4f over %d steps, %.1fs",
            epoch,
            cfg.epochs,
            float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            len(epoch_losses),
            time.perf_counter() - t0,
        )

    save_model_dir(
        net.eval(),
        out,
        extra={"recipe": "pytorch-metric-learning reference", "epochs": cfg.epochs},
    )
