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


def export_onnx(net: EmbeddingNet, *, fold_padding: bool = True) -> bytes:
    """The network in eval mode as an ONNX model: input ``images`` (n, 3, crop, crop) float32,
    output ``embeddings`` (n, d); with ``fold_padding``, its run-time 'SAME' padding folded into
    the convolutions (``fold_pads``: the same embeddings, about twice the images/s on ONNX
    Runtime). The same weights always give the same bytes."""
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
    model = buffer.getvalue()
    return fold_pads(model, crop) if fold_padding else model


def fold_pads(model: bytes, crop: int) -> bytes:
    """``model`` with each Pad whose amounts it computes from the input's shape, and that feeds
    one convolution with zeros, folded into that convolution's pads. The amounts are read by
    running the network on inputs of ``crop`` x ``crop`` (the only size an Embedder feeds it);
    the result computes the same embeddings of such inputs."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.load_from_string(model)
    graph = m.graph
    pads = [n for n in graph.node if n.op_type == "Pad"]
    if not pads:
        return model
    wanted = list(dict.fromkeys(i for n in pads for i in n.input[1:] if i))
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    for name in wanted:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values: dict[str, np.ndarray] = {}
    for n in (1, 2):  # amounts that vary with the batch size are not the padding's
        out = session.run(wanted, {INPUT: np.zeros((n, 3, crop, crop), np.float32)})
        for name, value in zip(wanted, out, strict=True):
            if name in values and not np.array_equal(values[name], value):
                return model
            values[name] = value
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for pad in pads:
        users = consumers.get(pad.output[0], [])
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        fill = values[pad.input[2]] if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        amounts = values[pad.input[1]].astype(np.int64)
        if (
            mode != b"constant"
            or np.any(fill)
            or len(users) != 1
            or users[0].op_type != "Conv"
            or amounts.shape != (8,)
            or np.any(amounts[[0, 1, 4, 5]])  # batch and channel amounts
            or any(a.name == "auto_pad" for a in users[0].attribute)
        ):
            continue
        conv = users[0]
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [int(a + b) for a, b in zip(old, amounts[[2, 3, 6, 7]], strict=True)]
        for attr in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(attr)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
    _prune(graph)
    return m.SerializeToString()


def _prune(graph) -> None:
    """Remove the nodes and initializers that no longer feed an output of ``graph``."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


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
