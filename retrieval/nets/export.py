"""Export an embedding network to ONNX and prove the export: the runtime used for embedding and
querying when ONNX Runtime is installed (training stays in torch)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from retrieval.datasets.folders import Record
from retrieval.engine.embed import Embedder
from retrieval.engine.images import load_rgb
from retrieval.engine.runtime import INPUT, OUTPUT, OnnxForward, available
from retrieval.errors import ImageError
from retrieval.nets.model import EmbeddingNet, LoadedModel, TorchForward

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max abs difference allowed between ONNX Runtime's and torch's embeddings
OPSET = 17


def export_onnx(net: EmbeddingNet) -> bytes:
    """The network in eval mode as an ONNX model: input ``images`` (n, 3, crop, crop) float32,
    output ``embeddings`` (n, d). The same weights always give the same bytes."""
    crop = net.preprocess.crop
    buffer = io.BytesIO()
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes fixed by the crop size
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, crop, crop),),
            buffer,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "n"}, OUTPUT: {0: "n"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def max_abs_diff(net: EmbeddingNet, model: bytes, batch: np.ndarray) -> float:
    """Largest absolute difference between torch's and ONNX Runtime's embeddings of ``batch``."""
    ours = OnnxForward(model)(batch)
    theirs = TorchForward(net)(batch)
    return float(np.abs(ours - theirs).max())


def sample_batch(loaded: LoadedModel, records: Sequence[Record], n: int = 8) -> np.ndarray:
    """Up to ``n`` of ``records`` decoded and transformed as for embedding, plus one random input
    (so that the batch is never empty)."""
    embedder = loaded.embedder(num_workers=0)
    arrays = []
    for r in records:
        if len(arrays) == n:
            break
        try:
            img = load_rgb(r.path, min_side=embedder.transform.pre.resize, box=r.box)
        except ImageError:
            continue
        arrays.append(embedder.transform(img))
    crop = loaded.net.preprocess.crop
    arrays.append(np.random.default_rng(0).normal(size=(3, crop, crop)).astype(np.float32))
    return np.stack(arrays)


def fast_embedder(
    loaded: LoadedModel,
    sample: Sequence[Record],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
) -> tuple[Embedder, bytes | None]:
    """An Embedder on ONNX Runtime with the exported network, when onnxruntime is installed and
    the export agrees with torch within TOLERANCE on images of ``sample``; else the torch one.
    Returns the exported model too (None for torch)."""
    if not available():
        return loaded.embedder(batch_size=batch_size, num_workers=num_workers), None
    model = export_onnx(loaded.net)
    diff = max_abs_diff(loaded.net, model, sample_batch(loaded, sample))
    if diff > TOLERANCE:
        log.warning(
            "the ONNX export of %s differs from torch by %.2g (> %g); embedding with torch",
            loaded.name,
            diff,
            TOLERANCE,
        )
        return loaded.embedder(batch_size=batch_size, num_workers=num_workers), None
    embedder = loaded.embedder(
        batch_size=batch_size,
        num_workers=num_workers,
        forward=OnnxForward(model),
        runtime="onnxruntime",
    )
    return embedder, model
