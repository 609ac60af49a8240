"""An exported network in int8: static quantisation by ONNX Runtime (QDQ, per-channel int8
weights, uint8 activations), calibrated on images of the gallery it will index.

What keeps the loss of Recall@1 near half a point on the dev protocol (README, speed section):
the first convolutions (for EfficientNet-Lite0 the stem and blocks 0 and 1, at 112 px the most
sensitive to rounding) stay in float, and the activation ranges are averaged over calibration
batches. What makes it fast: the 'SAME' padding that the export computes from the input's shape
at run time is folded into the convolutions (the crop size is fixed), so that each convolution
runs on int8 from input to output instead of around a float Pad.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval.datasets.folders import Record
from retrieval.engine.embed import Embedder
from retrieval.engine.images import load_rgb
from retrieval.engine.runtime import INPUT
from retrieval.errors import ImageError, ModelError

CALIBRATION_IMAGES = 96  # images of the gallery the int8 network is calibrated on, at most
FLOAT_CONVS = 6  # the first convolutions kept in float (at most a third of the network's)
_CALIBRATION_BATCH = 8


def calibration_images(
    embedder: Embedder, records: Sequence[Record], n: int = CALIBRATION_IMAGES, seed: int = 0
) -> np.ndarray:
    """Up to ``n`` of ``records``, drawn at random (seeded), decoded and transformed as
    ``embedder`` feeds its network; those that cannot be decoded are passed over."""
    order = np.random.default_rng(seed).permutation(len(records))
    arrays: list[np.ndarray] = []
    for i in order:
        if len(arrays) == n:
            break
        r = records[int(i)]
        try:
            img = load_rgb(r.path, min_side=embedder.transform.pre.resize, box=r.box)
        except ImageError:
            continue
        arrays.append(embedder.transform(img))
    if not arrays:
        raise ModelError("--precision int8: no image of the gallery could be read to calibrate on")
    return np.stack(arrays)


class _QuantiserQuiet(logging.Filter):
    """Drops what ONNX Runtime's quantiser logs to the root logger (advice to pre-process the
    model, which export_onnx's fold_pads does; biases left in float): the command's output
    stays its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in Path(record.pathname).parts


def float_nodes(model: bytes) -> list[str]:
    """Names of the nodes that stay in float: every node before the (k+1)-th convolution,
    k = min(FLOAT_CONVS, a third of the convolutions)."""
    import onnx

    nodes = onnx.load_from_string(model).graph.node
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    k = min(FLOAT_CONVS, len(convs) // 3)
    end = convs[k] if k < len(convs) else len(nodes)
    return [n.name for n in nodes[:end] if n.name]


def quantize_int8(model: bytes, calibration: np.ndarray) -> bytes:
    """The exported network ``model`` (input (n, 3, crop, crop), its padding folded by
    export_onnx) in int8, calibrated on
    ``calibration``, transformed images as the Embedder feeds them (see the module's notes)."""
    from onnxruntime.quantization import CalibrationDataReader

    if len(calibration) == 0:
        raise ModelError("--precision int8 needs at least one calibration image")
    batches = iter(
        np.ascontiguousarray(calibration[i : i + _CALIBRATION_BATCH])
        for i in range(0, len(calibration), _CALIBRATION_BATCH)
    )

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(batches, None)
            return None if batch is None else {INPUT: batch}

    quiet = _QuantiserQuiet()
    logging.getLogger().addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="retrieve-int8-") as work:
            return _quantize(model, Reader(), Path(work))
    finally:
        logging.getLogger().removeFilter(quiet)


def _quantize(model: bytes, reader: object, work: Path) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, dst = work / "float32.onnx", work / "int8.onnx"
    src.write_bytes(model)
    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=float_nodes(model),
        extra_options={"CalibMovingAverage": True},
    )
    return dst.read_bytes()
