"""A network's model entry (what a manifest records of it), checked once, and the one place an
Embedder is made from it, whatever runs the network (ONNX Runtime, torch, a Ray actor)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retrieval.config import PRECISIONS, Preprocess
from retrieval.engine.embed import Embedder, Forward
from retrieval.errors import ModelError


@dataclass(frozen=True)
class ModelEntry:
    """The ``model`` entry of an index's manifest: name, preprocessing, dimension and
    fingerprint, how to re-create the network in torch (``source``, ``spec``), and the sha256
    and precision ("float32" or "int8") of its exported ONNX file, if any."""

    name: str
    preprocess: Preprocess
    dim: int
    fingerprint: str
    source: Mapping[str, Any] | None
    spec: Mapping[str, Any] | None
    onnx_sha256: str | None
    precision: str = "float32"

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str) -> ModelEntry:
        """The entry checked field by field; ModelError naming ``where`` (the manifest) and the
        field when one is missing or of the wrong type."""
        if not isinstance(entry, Mapping):
            raise ModelError(f"{where}: bad model entry: not an object")
        try:
            preprocess = Preprocess.from_dict(entry["preprocess"])
            dim = entry["dim"]
            fingerprint = entry["fingerprint"]
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelError(f"{where}: bad model entry: {type(exc).__name__} {exc}") from exc
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ModelError(f"{where}: bad model entry: dim {dim!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ModelError(f"{where}: bad model entry: fingerprint {fingerprint!r}")
        onnx = entry.get("onnx")
        if onnx is not None and not (
            isinstance(onnx, Mapping) and isinstance(onnx.get("sha256"), str)
        ):
            raise ModelError(f"{where}: bad model entry: onnx {onnx!r}")
        precision = "float32" if onnx is None else onnx.get("precision", "float32")
        if precision not in PRECISIONS:
            raise ModelError(f"{where}: bad model entry: onnx precision {precision!r}")
        source, spec = entry.get("source"), entry.get("spec")
        return cls(
            name=str(entry.get("name", "?")),
            preprocess=preprocess,
            dim=dim,
            fingerprint=fingerprint,
            source=copy.deepcopy(source) if isinstance(source, Mapping) else None,
            spec=copy.deepcopy(spec) if isinstance(spec, Mapping) else None,
            onnx_sha256=None if onnx is None else str(onnx["sha256"]),
            precision=precision,
        )

    @property
    def has_attention(self) -> bool:
        return bool(self.spec and self.spec.get("attention"))

    @property
    def flip(self) -> bool:
        """Whether the network averages each image with its mirror image itself (``--flip``)."""
        return bool(self.spec and self.spec.get("flip"))

    def embedder(
        self,
        forward: Forward,
        *,
        runtime: str,
        batch_size: int = 32,
        num_workers: int | None = None,
    ) -> Embedder:
        """An Embedder that runs ``forward`` (the network of this entry) on ``runtime``
        ("onnxruntime" or "torch")."""
        return Embedder(
            forward,
            self.preprocess,
            self.dim,
            self.fingerprint,
            batch_size=batch_size,
            num_workers=num_workers,
            runtime=runtime,
        )
