"""ONNX Runtime: an exported embedding network run without torch, and the index's copy of it.

An index built by ``retrieve build-index`` holds its network as ``model.onnx``; its manifest's
model entry names the file and its sha256, checked before ONNX Runtime parses a byte of it.
A network must hold all its weights: one that refers to ONNX *external data* is refused before
ONNX Runtime sees it (given as bytes, its relative file names would be read from the working
directory, into the vectors of the index).
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
        refuse_external_data(model, source)
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


# Where an ONNX model (protobuf) holds tensors, as field numbers of onnx.proto: message fields
# to walk, per message type, and the TensorProto fields that point outside the model.
_MESSAGES: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 13, 14, 1
_MAX_DEPTH = 100  # protobuf's own recursion limit


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _uses_external_data(buf: memoryview, kind: str, depth: int = 0) -> bool:
    """Whether the message ``buf`` of type ``kind`` holds, at any depth, a tensor whose data
    lies outside the model."""
    if depth > _MAX_DEPTH:
        raise _Malformed("nested too deep")
    fields = _MESSAGES.get(kind, {})
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            if kind == "tensor" and number == _DATA_LOCATION and value == _EXTERNAL:
                return True
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            end = pos + length
            if end > len(buf):
                raise _Malformed("field runs past the end")
            if kind == "tensor" and number == _EXTERNAL_DATA:
                return True
            inner = fields.get(number)
            if inner is not None and _uses_external_data(buf[pos:end], inner, depth + 1):
                return True
            pos = end
        else:
            raise _Malformed(f"wire type {wire}")
        if pos > len(buf):
            raise _Malformed("field runs past the end")
    return False


def refuse_external_data(model: bytes, source: str) -> None:
    """ModelError naming ``source`` if the ONNX model ``model`` refers to external data (any
    tensor of its graphs, subgraphs, functions or sparse tensors), or cannot be walked."""
    try:
        external = _uses_external_data(memoryview(model), "model")
    except _Malformed as exc:
        raise ModelError(f"{source} is not a usable ONNX model: {exc}") from exc
    if external:
        raise ModelError(
            f"{source} refers to external data (weights in other files); an index's network "
            "must hold all its weights: rebuild the index with 'retrieve build-index GALLERY "
            "--force'"
        )


def onnx_entry(model: bytes, precision: str = "float32") -> dict[str, str]:
    """What a manifest's model entry records of an exported network (its precision when it is
    not float32)."""
    entry = {"file": ONNX_FILE, "sha256": hashlib.sha256(model).hexdigest()}
    if precision != "float32":
        entry["precision"] = precision
    return entry


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
