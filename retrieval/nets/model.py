"""EmbeddingNet (backbone + pooling + optional head, unit-norm output) and loading models by name or folder."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from retrieval.config import ModelSpec, Preprocess
from retrieval.engine.embed import Embedder, Forward
from retrieval.engine.network import ModelEntry
from retrieval.engine.transforms import EvalTransform
from retrieval.errors import ModelError
from retrieval.nets.attention import CBAM
from retrieval.nets.backbones import Backbone, backbone_names, create_backbone

CHECKPOINT_NAME = "model.pt"
CHECKPOINT_FORMAT = 1


class GeM(nn.Module):
    """Generalised-mean pooling: (mean x^p)^(1/p) over positions; p=1 is average pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class EmbeddingNet(nn.Module):
    """Images (B, 3, H, W) -> embeddings (B, d) float32, rows L2-normalised.

    backbone feature maps -> [CBAM attention] -> GeM / average pooling -> L2 norm
    -> [linear head -> L2 norm].
    """

    def __init__(self, backbone: Backbone, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.attention: CBAM | None = CBAM(backbone.feature_dim) if spec.attention else None
        self.pool: nn.Module = GeM(spec.gem_p) if spec.pooling == "gem" else GeM(1.0)
        self.head: nn.Module = (
            nn.Linear(backbone.feature_dim, spec.dim) if spec.dim is not None else nn.Identity()
        )

    @property
    def dim(self) -> int:
        return self.spec.dim if self.spec.dim is not None else self.backbone.feature_dim

    @property
    def preprocess(self) -> Preprocess:
        return self.backbone.preprocess

    @property
    def attention_map(self) -> torch.Tensor | None:
        """The spatial attention gates (B, 1, h, w) of the last forward, or None."""
        return self.attention.attention_map if self.attention is not None else None

    @torch.inference_mode()
    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial attention gates (B, h, w), in (0, 1), of images ``x`` (B, 3, H, W), the
        images as they are (not mirrored); the model must have attention."""
        if self.attention is None:
            raise ModelError("this model has no attention module")
        self.descriptor_from(x)
        assert self.attention.attention_map is not None
        return self.attention.attention_map[:, 0]

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        """Backbone feature maps (B, C, h, w) -> pooled descriptors (B, C), before the head."""
        if self.attention is not None:
            maps = self.attention(maps)
        return self.pool(maps)

    def descriptor_from(self, x: torch.Tensor, stage: int = 0) -> torch.Tensor:
        """Unit pooled descriptors (B, C), the head's input, from the output of stage ``stage - 1``."""
        return F.normalize(self.pooled(self.backbone.forward_stages(x, stage)), dim=1)

    def embed_from(self, x: torch.Tensor, stage: int = 0) -> torch.Tensor:
        """Embeddings from the output of backbone stage ``stage - 1`` (0: from images).

        With ``spec.flip``, outside training, the embedding of the image and of its mirror image
        are averaged (then re-normalised): fine-grained classes do not change under a flip.
        """
        emb = F.normalize(self.head(self.descriptor_from(x, stage)), dim=1)
        if self.spec.flip and not self.training:
            mirror = F.normalize(self.head(self.descriptor_from(x.flip(3), stage)), dim=1)
            emb = F.normalize(emb + mirror, dim=1)
        return emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_from(x)


class TorchForward:
    """(n, 3, h, w) float32 arrays -> (n, d) float32 unit rows, the network in eval mode."""

    def __init__(self, net: EmbeddingNet) -> None:
        self.net = net.eval()

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        return self.net(x).float().numpy()


@dataclass(frozen=True)
class LoadedModel:
    """A ready network with where it came from, so an index can re-create it and check it."""

    net: EmbeddingNet
    name: str
    source: dict[str, Any]
    fingerprint: str

    @property
    def entry(self) -> ModelEntry:
        """The model entry an index built with this network records (see describe)."""
        return ModelEntry.parse(self.describe(), self.name)

    def embedder(
        self,
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
        forward: Forward | None = None,
        runtime: str = "torch",
    ) -> Embedder:
        """An Embedder running this network in torch (eval mode, channels-last), or with
        ``forward``, e.g. its ONNX export on ONNX Runtime."""
        return self.entry.embedder(
            forward or TorchForward(self.net),
            runtime=runtime,
            batch_size=batch_size,
            num_workers=num_workers,
        )

    def describe(self) -> dict[str, Any]:
        """The manifest's ``model`` entry."""
        return {
            "name": self.name,
            "source": self.source,
            "spec": self.net.spec.to_dict(),
            "preprocess": self.net.preprocess.to_dict(),
            "dim": self.net.dim,
            "fingerprint": self.fingerprint,
        }


def attention_gates(
    loaded: LoadedModel, image: Image.Image
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The spatial attention gates (h, w) of a model with attention over an RGB image, and the
    part of the image the network sees (left, top, right, bottom, as fractions)."""
    transform = EvalTransform(loaded.net.preprocess)
    gates = loaded.net.spatial_attention(torch.from_numpy(transform(image)[None]))
    return gates[0].numpy(), transform.crop_box(image.size)


def fingerprint(net: EmbeddingNet) -> str:
    """sha256 over the architecture spec, the preprocessing and every weight's bytes."""
    h = hashlib.sha256()
    meta = {"spec": net.spec.to_dict(), "preprocess": net.preprocess.to_dict()}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for key, tensor in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(
    ref: str, *, weights: str | None = None, spec: ModelSpec | None = None
) -> LoadedModel:
    """A built-in backbone name (``efficientnet_lite0``, ``resnet50``, ``tiny``) or a model folder
    written by ``retrieve train``. ``weights`` is a local backbone state dict for a built-in name."""
    path = Path(ref)
    if ref not in backbone_names() and (path.is_dir() or "/" in ref or ref.startswith(".")):
        if weights is not None:
            raise ModelError("--weights applies to built-in backbones, not to a model folder")
        return load_model_dir(path)
    base = spec or ModelSpec()
    spec = ModelSpec.from_dict({**base.to_dict(), "backbone": ref})
    backbone = create_backbone(ref, weights=weights)
    net = EmbeddingNet(backbone, spec).eval()
    source = {"kind": "builtin", "backbone": ref, "spec": spec.to_dict()}
    if weights is not None:
        source["weights"] = str(Path(weights).resolve())
    return LoadedModel(net, ref, source, fingerprint(net))


def save_model_dir(net: EmbeddingNet, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``out/model.pt`` (weights + spec + preprocessing), loadable with weights_only=True."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": net.spec.to_dict(),
        "preprocess": net.preprocess.to_dict(),
        "state_dict": net.state_dict(),
        "extra": extra or {},
    }
    tmp = out_dir / (CHECKPOINT_NAME + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(out_dir / CHECKPOINT_NAME)
    return out_dir / CHECKPOINT_NAME


def load_model_dir(path: Path) -> LoadedModel:
    ckpt = path / CHECKPOINT_NAME
    if not ckpt.is_file():
        raise ModelError(
            f"{path} is neither a built-in model ({', '.join(backbone_names())}) nor a model folder with {CHECKPOINT_NAME}"
        )
    try:
        payload = torch.load(ckpt, map_location="cpu", weights_only=True)
        spec = ModelSpec.from_dict(payload["spec"])
        state = payload["state_dict"]
    except pickle.UnpicklingError as exc:  # torch's advice to unpickle it anyway is not ours
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(
            f"{ckpt} holds Python objects other than weights{what}; it is not unpickled: only "
            "model folders written by 'retrieve train' load"
        ) from exc
    except Exception as exc:
        raise ModelError(f"{ckpt} is not a readable retrieve checkpoint: {exc}") from exc
    if payload.get("format", 0) > CHECKPOINT_FORMAT:
        raise ModelError(
            f"{ckpt} has checkpoint format {payload['format']}, newer than this retrieve reads ({CHECKPOINT_FORMAT})"
        )
    backbone = create_backbone(spec.backbone, pretrained=False)
    if "preprocess" in payload:
        backbone.preprocess = Preprocess.from_dict(payload["preprocess"])
    net = EmbeddingNet(backbone, spec)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{ckpt}: weights do not match the model config: {first}") from exc
    net.eval()
    source = {"kind": "dir", "path": str(path.resolve())}
    return LoadedModel(net, path.name, source, fingerprint(net))


def load_from_source(source: dict[str, Any]) -> LoadedModel:
    """Re-create the model an index records in its manifest."""
    if source.get("kind") == "dir":
        return load_model_dir(Path(source["path"]))
    if source.get("kind") == "builtin":
        spec = ModelSpec.from_dict(source.get("spec", {}))
        return load_model(source["backbone"], weights=source.get("weights"), spec=spec)
    raise ModelError(f"unknown model source {source!r} in the index manifest")
