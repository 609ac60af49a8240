"""Frozen settings shared by the ML side: preprocessing and model specifications (no torch here)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: resize the shorter side to ``resize``, centre-crop ``crop``, normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(int(d["resize"]), int(d["crop"]), tuple(d["mean"]), tuple(d["std"]))  # type: ignore[arg-type]


POOLINGS = ("gem", "avg")
PRECISIONS = ("float32", "int8")  # of an index's exported network (build-index --precision)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an embedding network's architecture (weights live elsewhere)."""

    backbone: str = "efficientnet_lite0"
    pooling: str = "gem"
    gem_p: float = 3.0
    dim: int | None = None
    attention: bool = False
    flip: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be positive, not {self.dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        names = ("backbone", "pooling", "gem_p", "dim", "attention", "flip")
        known = {k: d[k] for k in names if k in d}
        return cls(**known)


INDEX_ENV = "RETRIEVE_INDEX"

# How a query re-ranks its neighbours (retrieval/engine/rerank.py); an index keeps its own.
RERANK_METHODS = ("none", "dba", "qe", "dba+qe", "kr")
DEFAULT_RERANK = "dba+qe"


def default_index_dir() -> str:
    """``$RETRIEVE_INDEX``, else ``index`` in the per-user data folder."""
    env = os.environ.get(INDEX_ENV)
    if env:
        return env
    from platformdirs import user_data_dir

    return os.path.join(user_data_dir("retrieve", appauthor=False), "index")


# whiten: the loss trains the pooled descriptor; the linear head is then fitted as a PCA whitening
# on the training classes. learned: a randomly initialised head trained with the loss.
HEADS = ("whiten", "learned")


@dataclass(frozen=True)
class TrainConfig:
    """A metric-learning recipe. The defaults are the best recipe the benchmark found (README)."""

    backbone: str = "efficientnet_lite0"
    pooling: str = "gem"
    dim: int | None = None
    attention: bool = False
    flip: bool = False
    loss: str = "multi-similarity"
    miner: str = "multi-similarity"
    epochs: int = 3
    p: int = 8
    k: int = 4
    lr_trunk: float = 1e-4
    lr_head: float = 1e-4
    weight_decay: float = 1e-4
    warmup: float = 0.1
    freeze: str = "none"
    head: str = "whiten"
    whiten_power: float = 0.5
    image_size: int = 224
    augment: bool = True
    crop_scale: float = 0.5  # the smallest share of an image's area a training crop keeps
    # Classes held out to choose the epoch; none: every class trained on, the last epoch kept.
    val_classes: int = 0
    cache_views: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.freeze not in ("none", "all") and not self.freeze.isdigit():
            raise ValueError(
                f"freeze must be 'none', 'all' or a number of last blocks to train, not {self.freeze!r}"
            )
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        for name in ("epochs", "p", "k", "image_size", "cache_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, not {self.seed}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1], not {self.crop_scale}")
        if self.val_classes < 0:
            raise ValueError("val_classes must be 0 or more")

    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            backbone=self.backbone,
            pooling=self.pooling,
            dim=self.dim,
            attention=self.attention,
            flip=self.flip,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})
