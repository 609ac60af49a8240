"""ONNX Runtime: an exported embedding network run without torch, and the index's copy of it.

An index built by ``retrieve build-index`` holds its network as ``model.onnx``; its manifest's
model entry names the file and its sha256, checked before ONNX Runtime parses a byte of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import Preprocess
from retrieval.engine.embed import Embedder
from retrieval.errors import ModelError

ONNX_FILE = "model.onnx"
INPUT = "images"
OUTPUT = "embeddings"


def available() -> bool:
    """Whether onnxruntime is installed."""
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxForward:
    """(n, 3, h, w) float32 arrays -> (n, d) float32 rows, by ONNX Runtime on the CPU."""

    def __init__(self, model: bytes, *, threads: int | None = None, source: str = "model") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Idle threads sleep instead of spinning: the CPU goes to the image decoders meanwhile.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                model, sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own error types for a bad graph
            raise ModelError(f"{source} is not a usable ONNX model: {exc}") from exc

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: batch})[0]


def onnx_entry(model: bytes) -> dict[str, str]:
    """What a manifest's model entry records of an exported network."""
    return {"file": ONNX_FILE, "sha256": hashlib.sha256(model).hexdigest()}


def read_index_onnx(index_dir: str | Path, model_entry: dict[str, Any]) -> bytes:
    """The bytes of an index's exported network, checked against the sha256 of its manifest's
    model entry before anything parses them. ModelError naming the file when they do not match."""
    path = Path(index_dir) / ONNX_FILE
    entry = model_entry.get("onnx")
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise ModelError(f"{Path(index_dir) / 'manifest.json'}: bad model entry: onnx {entry!r}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ModelError(
            f"{path} does not have the sha256 its manifest records; rebuild the index with "
            "'retrieve build-index GALLERY --force'"
        )
    return data


def index_embedder(
    index_dir: str | Path,
    model_entry: dict[str, Any],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
) -> Embedder:
    """The Embedder of an index's own exported network (see read_index_onnx)."""
    try:
        preprocess = Preprocess.from_dict(model_entry["preprocess"])
        dim, fingerprint = int(model_entry["dim"]), str(model_entry["fingerprint"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ModelError(f"{Path(index_dir) / 'manifest.json'}: bad model entry: {exc}") from exc
    data = read_index_onnx(index_dir, model_entry)
    return Embedder(
        OnnxForward(data, source=str(Path(index_dir) / ONNX_FILE)),
        preprocess,
        dim,
        fingerprint,
        batch_size=batch_size,
        num_workers=num_workers,
        runtime="onnxruntime",
    )
