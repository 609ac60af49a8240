"""ONNX Runtime: an exported embedding network run without torch, and the index's copy of it.

An index built by ``retrieve build-index`` holds its network as ``model.onnx``; its manifest's
model entry names the file and its sha256, checked before ONNX Runtime parses a byte of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from retrieval.engine.embed import Embedder
from retrieval.engine.network import ModelEntry
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


def read_index_onnx(index_dir: str | Path, entry: ModelEntry) -> bytes:
    """The bytes of an index's exported network, checked against the sha256 its model entry
    records before anything parses them. ModelError naming the file when they do not match."""
    path = Path(index_dir) / ONNX_FILE
    if entry.onnx_sha256 is None:
        raise ModelError(
            f"{Path(index_dir) / 'manifest.json'}: the model entry names no {ONNX_FILE}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if hashlib.sha256(data).hexdigest() != entry.onnx_sha256:
        raise ModelError(
            f"{path} does not have the sha256 its manifest records; rebuild the index with "
            "'retrieve build-index GALLERY --force'"
        )
    return data


def index_embedder(
    index_dir: str | Path,
    entry: ModelEntry,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
) -> Embedder:
    """The Embedder of an index's own exported network (see read_index_onnx)."""
    data = read_index_onnx(index_dir, entry)
    forward = OnnxForward(data, source=str(Path(index_dir) / ONNX_FILE))
    return entry.embedder(
        forward, runtime="onnxruntime", batch_size=batch_size, num_workers=num_workers
    )
