"""A tampered ``model.onnx`` whose sha256 was put into the manifest: a graph that refers to ONNX
*external data* must be refused before ONNX Runtime runs it, since a model given as bytes has
its relative external data resolved against the working directory (issue 15, defect 1)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from retrieval.engine.runtime import OnnxForward
from retrieval.errors import ModelError
from retrieval.faces.cli import main

from ..helpers import COLORS, build_tiny_index, write_image
from .helpers import retrieve

DIM = 64  # the tiny model's


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_index(tmp_path_factory.mktemp("pristine"))


def external(name: str, shape: list[int], location: str) -> TensorProto:
    """A float tensor whose data ONNX Runtime reads from the file ``location``."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * DIM))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def leaking_model(location: str = "secret.txt", *, in_subgraph: bool = False) -> bytes:
    """images -> a unit vector that is the content of ``location``, read as float32s."""
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [3, DIM], np.zeros(3 * DIM).tolist())
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "zero"], ["nothing"]),
    ]
    initializers = [zero]
    if in_subgraph:  # the external tensor hidden in a Constant node inside an If branch
        branch = helper.make_graph(
            [helper.make_node("Constant", [], ["w"], value=external("c", [DIM], location))],
            "branch",
            [],
            [helper.make_tensor_value_info("w", TensorProto.FLOAT, [DIM])],
        )
        initializers.append(helper.make_tensor("yes", TensorProto.BOOL, [], [True]))
        nodes.append(
            helper.make_node("If", ["yes"], ["secret"], then_branch=branch, else_branch=branch)
        )
    else:
        initializers.append(external("secret", [DIM], location))
    nodes += [
        helper.make_node("Add", ["nothing", "secret"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embeddings"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "leak",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", DIM])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def plant(index: Path, model: bytes) -> None:
    """Replace the index's network by ``model``, its sha256 put into the manifest."""
    (index / "model.onnx").write_bytes(model)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["model"]["onnx"]["sha256"] = hashlib.sha256(model).hexdigest()
    (index / "manifest.json").write_text(json.dumps(manifest))


def count(index: Path) -> int:
    with closing(sqlite3.connect(index / "records.sqlite")) as conn:
        return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]


@pytest.mark.parametrize("in_subgraph", [False, True], ids=["initializer", "subgraph-constant"])
def test_a_model_with_external_data_is_refused(
    pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_subgraph: bool
):
    index = Path(shutil.copytree(pristine, tmp_path / "idx"))
    plant(index, leaking_model(in_subgraph=in_subgraph))
    somewhere = tmp_path / "somewhere"
    somewhere.mkdir()
    (somewhere / "secret.txt").write_bytes(b"SWORDFISHXHUNTERTWO" * 14)  # finite float32s
    photo = write_image(somewhere / "photo.png", COLORS["red"], seed=5)
    monkeypatch.chdir(somewhere)
    before = count(index)
    for args in (["enroll", "X", photo], ["query", photo]):
        result = CliRunner().invoke(main, [*map(str, args), "--index", str(index)])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1, result.output
        assert len(lines) == 1 and "model.onnx" in lines[0], result.output
        assert "external data" in lines[0], lines[0]
    assert count(index) == before
    check = CliRunner().invoke(main, ["check", "--index", str(index)])
    assert check.exit_code == 1 and "model.onnx" in check.output and "external data" in check.output


def test_onnx_forward_refuses_external_data_whatever_loads_it():
    with pytest.raises(ModelError, match="m.onnx refers to external data"):
        OnnxForward(leaking_model("/etc/hostname"), source="m.onnx")


def test_a_model_without_external_data_still_loads():
    model = onnx.load_from_string(leaking_model())
    for tensor in model.graph.initializer:
        if tensor.name == "secret":
            tensor.ClearField("external_data")
            tensor.data_location = TensorProto.DEFAULT
            tensor.float_data.extend([1.0] * DIM)
    forward = OnnxForward(model.SerializeToString(), source="m.onnx")
    out = forward(np.zeros((2, 3, 8, 8), np.float32))
    np.testing.assert_allclose(out, np.full((2, DIM), DIM**-0.5), rtol=1e-5)


def test_a_checkpoint_holding_python_objects_is_refused_in_one_line(tmp_path: Path):
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"format": 1, "spec": Payload()}, folder / "model.pt")
    gallery = tmp_path / "gallery"
    for label, color in COLORS.items():
        write_image(gallery / label / "0.png", color, seed=1)
    result = CliRunner().invoke(main, ["evaluate", str(gallery), "--model", str(folder)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    # The object is named as torch names it: "print", or the function Ray put in its place.
    assert re.fullmatch(
        f"retrieve: error: {re.escape(str(folder / 'model.pt'))} holds Python objects other "
        r"than weights \([\w.]*print\); it is not unpickled: only model folders written by "
        "'retrieve train' load",
        lines[0],
    ), lines[0]


def test_a_manifest_of_another_dim_is_one_line(pristine: Path, tmp_path: Path):
    index = Path(shutil.copytree(pristine, tmp_path / "idx"))
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["dim"] = 32
    (index / "manifest.json").write_text(json.dumps(manifest))
    photo = write_image(tmp_path / "q.png", COLORS["red"], seed=3)
    for args in (["info"], ["query", photo]):  # the installed command: pytest captures logging
        done = retrieve(*args, "--index", index)
        assert done.returncode == 1 and done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "records.sqlite" in done.stderr and "32-d" in done.stderr
