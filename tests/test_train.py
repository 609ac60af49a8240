"""A few training steps on a tiny synthetic set: loss goes down, checkpoints round-trip, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.config import TrainConfig
from retrieval.datasets.folders import scan_gallery
from retrieval.engine.images import load_rgb
from retrieval.engine.transforms import EvalTransform
from retrieval.errors import InputError
from retrieval.nets.model import load_model
from retrieval.training.train import (
    pca_whitening,
    split_classes,
    train,
    train_transform,
)

from .helpers import write_image

COLORS = [
    (220, 30, 30),
    (30, 200, 40),
    (30, 40, 220),
    (220, 220, 30),
    (200, 30, 200),
    (30, 200, 200),
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for c, color in enumerate(COLORS):
        for j in range(6):
            write_image(root / f"class{c}" / f"{j}.png", color, seed=c * 100 + j, size=40)
    return root


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(
        backbone="tiny",
        dim=16,
        epochs=2,
        p=4,
        k=3,
        lr_trunk=1e-3,
        lr_head=1e-2,
        val_classes=2,
        image_size=32,
        loss="triplet",
        miner="batch-hard",
        head="learned",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_loss_and_writes_model_dir(data: Path, tmp_path: Path):
    out = tmp_path / "m"
    report = train(data, out, tiny_cfg(epochs=4), num_workers=0)
    losses = [h["loss"] for h in report.history if h["loss"] is not None]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert [h["epoch"] for h in report.history] == [0, 1, 2, 3, 4]
    assert all("recall_at_1" in h for h in report.history)
    assert json.loads((out / "history.json").read_text()) == report.history
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["extra"]["epoch"] == report.best_epoch
    loaded = load_model(str(out))
    assert loaded.net.dim == 16 and loaded.net.preprocess.crop == 32
    with torch.no_grad():
        e = loaded.net(torch.randn(2, 3, 32, 32))
    assert e.shape == (2, 16)


def test_whitening_head_is_fitted_after_training(data: Path, tmp_path: Path):
    cfg = tiny_cfg(head="whiten", dim=8, epochs=1, flip=True)
    report = train(data, tmp_path / "w", cfg, num_workers=0)
    last = report.history[-1]
    assert last["whitened"] is True and last["epoch"] == report.best_epoch
    assert "recall_at_1" in last
    net = load_model(str(tmp_path / "w")).net.eval()
    assert net.spec.flip
    train_recs, _ = split_classes(scan_gallery(data).records, cfg.val_classes, cfg.seed)
    to_array = EvalTransform(net.preprocess)
    x = torch.from_numpy(
        np.stack([to_array(load_rgb(r.path, min_side=cfg.image_size)) for r in train_recs])
    )
    with torch.no_grad():  # the descriptors the head was fitted on: image and mirror averaged
        both = net.descriptor_from(x) + net.descriptor_from(x.flip(3))
        y = net.head(torch.nn.functional.normalize(both, dim=1)).double().numpy()
    # The head whitens the training classes' descriptors: centred, unit covariance.
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T), np.eye(cfg.dim), atol=1e-4)


def test_resume_continues_to_the_same_result(data: Path, tmp_path: Path):
    full = train(data, tmp_path / "full", tiny_cfg(epochs=2), num_workers=0)
    train(data, tmp_path / "part", tiny_cfg(epochs=1), num_workers=0)
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    state["config"]["epochs"] = 2
    torch.save(state, tmp_path / "part" / "last.pt")
    resumed = train(data, tmp_path / "part", resume=True, num_workers=0)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-4)


def test_frozen_trunk_is_cached_and_unchanged(data: Path, tmp_path: Path):
    before = load_model("tiny").net.backbone.state_dict()
    train(data, tmp_path / "f", tiny_cfg(freeze="all", epochs=2, cache_views=2), num_workers=0)
    last = torch.load(tmp_path / "f" / "last.pt", weights_only=True)["model"]
    after = {k.removeprefix("backbone."): v for k, v in last.items() if k.startswith("backbone.")}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_partial_freeze_trains_only_last_stages(data: Path, tmp_path: Path):
    before = load_model("tiny").net.backbone.state_dict()
    train(data, tmp_path / "p", tiny_cfg(freeze="1", epochs=1, attention=True), num_workers=0)
    last = torch.load(tmp_path / "p" / "last.pt", weights_only=True)["model"]
    after = {k.removeprefix("backbone."): v for k, v in last.items() if k.startswith("backbone.")}
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"3"}


def test_refuses_to_overwrite_and_bad_resume(data: Path, tmp_path: Path):
    train(data, tmp_path / "m", tiny_cfg(epochs=1), num_workers=0)
    with pytest.raises(InputError, match="already holds a model"):
        train(data, tmp_path / "m", tiny_cfg(epochs=1), num_workers=0)
    with pytest.raises(InputError, match="does not exist"):
        train(data, tmp_path / "other", resume=True, num_workers=0)


def test_split_classes_is_seeded_and_disjoint(data: Path):
    records = scan_gallery(data).records
    tr, va = split_classes(records, 2, seed=1)
    assert {r.label for r in tr}.isdisjoint({r.label for r in va})
    assert len({r.label for r in va}) == 2
    assert split_classes(records, 2, seed=1) == (tr, va)
    with pytest.raises(InputError):
        split_classes(records, 5, seed=1)


def test_by_default_every_class_is_trained_on_and_the_last_epoch_kept(data: Path, tmp_path: Path):
    """No validation classes by default: the proxy loss has one proxy per class of the data, no
    epoch is measured, and the model is the last epoch's."""
    cfg = tiny_cfg(
        val_classes=TrainConfig.val_classes,
        loss="proxy-anchor",
        miner="none",
        dim=None,
        head="whiten",
    )
    report = train(data, tmp_path / "m", cfg, num_workers=0)
    state = torch.load(tmp_path / "m" / "last.pt", weights_only=True)
    assert state["loss"]["proxies"].shape[0] == len(COLORS)
    assert not any("recall_at_1" in h for h in report.history)
    assert report.best_epoch == cfg.epochs
    assert (
        torch.load(tmp_path / "m" / "model.pt", weights_only=True)["extra"]["epoch"] == cfg.epochs
    )


def test_pca_whitening_decorrelates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3.0
    w, b = pca_whitening(x.astype(np.float32), 4, 0.5)
    y = x @ w.T + b
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T), np.eye(4), atol=1e-3)


def test_crop_scale_bounds_how_much_of_the_image_a_crop_keeps():
    """Left half red, right half blue: a crop that keeps the whole area (1.0) always shows both
    halves; crops down to 5 % of the area often show one colour only."""
    from PIL import Image

    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32, 0] = 255
    img[:, 32:, 2] = 255
    pre = load_model("tiny").net.preprocess

    def one_coloured(crop_scale: float) -> int:
        tf = train_transform(pre, 32, crop_scale)
        torch.manual_seed(0)
        crops = [tf(Image.fromarray(img)) for _ in range(40)]
        return sum(
            int(c[0].max() < c[0].min() + 1.0 or c[2].max() < c[2].min() + 1.0) for c in crops
        )

    assert one_coloured(1.0) == 0
    assert one_coloured(0.05) >= 5
    with pytest.raises(ValueError, match="crop_scale"):
        TrainConfig(crop_scale=0)
    with pytest.raises(ValueError, match="seed must be 0 or more, not -1"):
        TrainConfig(seed=-1)


def test_proxy_anchor_trains_the_descriptor_with_its_proxies(data: Path, tmp_path: Path):
    """The proxy-anchor loss on the default head (none: the pooled descriptor is trained), its
    proxies in the optimiser: the loss falls, the proxies have optimiser moments, the model loads."""
    cfg = tiny_cfg(epochs=4, loss="proxy-anchor", miner="none", dim=None, head="whiten")
    report = train(data, tmp_path / "m", cfg, num_workers=0)
    losses = [h["loss"] for h in report.history if h["loss"] is not None]
    assert len(losses) == 4 and losses[-1] < losses[0]
    state = torch.load(tmp_path / "m" / "last.pt", weights_only=True)
    proxies = state["loss"]["proxies"]
    assert proxies.shape == (len(COLORS) - cfg.val_classes, load_model("tiny").net.dim)
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert any(m.shape == proxies.shape and bool(m.abs().sum() > 0) for m in moments)
    assert load_model(str(tmp_path / "m")).net.dim == proxies.shape[1]
