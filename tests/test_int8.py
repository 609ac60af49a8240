"""build-index --precision int8: the network quantised, calibrated on the gallery, stored as the
index's model.onnx and run for the gallery and for queries and enrolment alike."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import retrieval
from retrieval.engine.runtime import ONNX_FILE, OnnxForward
from retrieval.errors import InputError, ModelError
from retrieval.indexing import network as index_network
from retrieval.nets.backbones import SamePadConv2d
from retrieval.nets.export import export_onnx, fold_pads
from retrieval.nets.model import load_model
from retrieval.nets.quantize import float_nodes, quantize_int8

from .helpers import COLORS, run, write_image


def _op_types(model: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(model).graph.node}


def test_int8_index_builds_answers_and_enrols(gallery: Path, tmp_path: Path):
    index = tmp_path / "idx"
    run("build-index", gallery, "--index", index, "--model", "tiny", "--precision", "int8")
    stored = (index / ONNX_FILE).read_bytes()
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(stored)
    info = json.loads(run("info", "--index", index, "--json").output)
    assert info["precision"] == "int8"
    assert "precision int8" in run("info", "--index", index).output
    for label, color in COLORS.items():
        query = write_image(tmp_path / f"q-{label}.png", color, seed=50)
        answer = json.loads(run("query", query, "--index", index, "--json").output)
        assert answer["label"] == label
    white = [write_image(tmp_path / f"w{i}.png", (240, 240, 240), seed=60 + i) for i in range(3)]
    run("enroll", "white", *white[:2], "--index", index)
    answer = json.loads(run("query", white[2], "--index", index, "--json").output)
    assert [n["label"] for n in answer["neighbors"][:2]] == ["white", "white"], answer
    assert (index / ONNX_FILE).read_bytes() == stored  # enrolment embedded with the same network
    assert retrieval.check(index).ok


def test_float32_is_the_default(gallery: Path, tmp_path: Path):
    retrieval.build(gallery, tmp_path / "idx", model="tiny")
    with retrieval.Retriever(tmp_path / "idx") as r:
        assert r.info().precision == "float32"
    assert "QuantizeLinear" not in _op_types((tmp_path / "idx" / ONNX_FILE).read_bytes())


def test_an_unknown_precision_is_refused_naming_the_flag(gallery: Path, tmp_path: Path):
    with pytest.raises(InputError, match="^--precision must be one of float32, int8, not 'int4'$"):
        retrieval.build(gallery, tmp_path / "idx", model="tiny", precision="int4")
    out = run("build-index", gallery, "--index", tmp_path / "i", "--precision", "int4", ok=False)
    assert out.exit_code != 0 and "'--precision'" in out.output


def test_an_int8_index_needs_onnxruntime(
    gallery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    retrieval.build(gallery, tmp_path / "idx", model="tiny", precision="int8")
    monkeypatch.setattr(index_network, "available", lambda: False)
    query = write_image(tmp_path / "q.png", COLORS["red"], seed=5)
    with pytest.raises(ModelError, match="int8, which needs onnxruntime"):
        retrieval.Retriever(tmp_path / "idx").query([query])


def test_int8_embeddings_stay_close_to_float32():
    loaded = load_model("tiny")
    model = export_onnx(loaded.net)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 3, 64, 64)).astype(np.float32)
    quantised = quantize_int8(model, images[:24])
    ours, theirs = OnnxForward(quantised)(images[24:]), OnnxForward(model)(images[24:])
    assert 0.95 < float((ours * theirs).sum(1).min()) < 1.0 - 1e-6  # quantised, and close


def test_float_nodes_keep_the_first_convolutions_in_float():
    model = export_onnx(load_model("tiny").net)  # 4 convolutions: the first stays in float
    nodes = onnx.load_from_string(model).graph.node
    kept = set(float_nodes(model))
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    assert convs[0] in kept and not kept & set(convs[1:])


def test_fold_pads_folds_same_padding_into_the_convolutions():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        SamePadConv2d(3, 8, 3, stride=2), torch.nn.ReLU(), SamePadConv2d(8, 4, 5, stride=1)
    ).eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 33, 33),),
            buf,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "n"}, "embeddings": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    model = buf.getvalue()
    assert "Pad" in _op_types(model)
    folded = fold_pads(model, 33)
    assert _op_types(folded) == {"Conv", "Relu"}
    x = np.random.default_rng(1).normal(size=(3, 3, 33, 33)).astype(np.float32)
    np.testing.assert_allclose(OnnxForward(folded)(x), OnnxForward(model)(x), atol=1e-5)
