"""The exported network: ONNX Runtime agrees with torch, the index carries it, querying and
enrolling run on it without importing torch, and a damaged copy is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import retrieval
from retrieval.datasets.folders import Record
from retrieval.engine.runtime import ONNX_FILE, OnnxForward
from retrieval.indexing.build import build_index
from retrieval.nets import export
from retrieval.nets.model import load_model

from .helpers import COLORS, need_shared, run, write_image


def real_images(n: int) -> list[Record]:
    root = need_shared("cub50-dev")
    folders = sorted(p for p in root.iterdir() if p.is_dir())[:n]
    return [Record(next(iter(sorted(f.iterdir()))), f.name) for f in folders]


@pytest.mark.parametrize("name", ["tiny", "efficientnet_lite0"])
def test_export_matches_torch_on_real_images(name: str):
    loaded = load_model(name)
    batch = export.sample_batch(loaded, real_images(16), n=16)
    assert batch.shape[0] == 17
    diff = export.max_abs_diff(loaded.net, export.export_onnx(loaded.net), batch)
    assert diff < export.TOLERANCE


def test_the_default_network_is_exported_with_its_padding_folded():
    """The run-time 'SAME' padding of EfficientNet-Lite0 folded into its convolutions: no Pad
    node is left, and the embeddings are those of the export as it was."""
    import onnx

    net = load_model("efficientnet_lite0").net
    folded, raw = export.export_onnx(net), export.export_onnx(net, fold_padding=False)
    ops = [{n.op_type for n in onnx.load_from_string(m).graph.node} for m in (folded, raw)]
    assert "Pad" in ops[1] and "Pad" not in ops[0]
    x = np.random.default_rng(3).normal(size=(2, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(OnnxForward(folded)(x), OnnxForward(raw)(x), atol=1e-5)


def test_export_of_a_trained_layout_matches_torch(gallery: Path):
    """Head, attention and flip averaging are exported too."""
    from retrieval.config import ModelSpec

    spec = ModelSpec(backbone="tiny", attention=True, dim=8, flip=True)
    loaded = load_model("tiny", spec=spec)
    records = [Record(p, "") for p in sorted(gallery.rglob("*.png"))]
    model = export.export_onnx(loaded.net)
    assert export.max_abs_diff(loaded.net, model, export.sample_batch(loaded, records)) < 1e-4
    out = OnnxForward(model)(export.sample_batch(loaded, records[:3]))
    assert out.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_export_is_deterministic():
    net = load_model("tiny").net
    assert export.export_onnx(net) == export.export_onnx(net)


def test_fast_embedder_falls_back_to_torch_when_the_export_disagrees(
    gallery: Path, monkeypatch: pytest.MonkeyPatch
):
    loaded = load_model("tiny")
    records = [Record(p, "") for p in sorted(gallery.rglob("*.png"))]
    embedder, model = export.fast_embedder(loaded, records)
    assert embedder.runtime == "onnxruntime" and model is not None
    ours = embedder.embed_paths([r.path for r in records]).vectors
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    fallback, none = export.fast_embedder(loaded, records)
    assert fallback.runtime == "torch" and none is None
    np.testing.assert_allclose(
        fallback.embed_paths([r.path for r in records]).vectors, ours, atol=1e-5
    )


def test_index_carries_its_network(gallery: Path, tmp_path: Path):
    index = tmp_path / "idx"
    build_index(gallery, index, model="tiny")
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["model"]["onnx"]["file"] == ONNX_FILE and (index / ONNX_FILE).is_file()
    assert retrieval.check(index).ok
    (index / ONNX_FILE).write_bytes(b"damaged")
    report = retrieval.check(index)
    assert not report.ok and any(ONNX_FILE in p for p in report.problems)


def test_query_and_enroll_never_import_torch(gallery: Path, tmp_path: Path):
    index = tmp_path / "idx"
    build_index(gallery, index, model="tiny")
    query = write_image(tmp_path / "q.png", COLORS["red"], seed=5)
    new = write_image(tmp_path / "new.png", (240, 240, 240), seed=6)
    script = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from retrieval.faces.cli import main\n"
        f"r = CliRunner().invoke(main, ['query', {str(query)!r}, '--index', {str(index)!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"e = CliRunner().invoke(main, ['enroll', 'white', {str(new)!r}, '--index', {str(index)!r}])\n"
        "assert e.exit_code == 0, e.output\n"
        "print(json.dumps({'label': json.loads(r.output)['label'],\n"
        "                  'torch': 'torch' in sys.modules, 'tv': 'torchvision' in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "label": "red",
        "torch": False,
        "tv": False,
    }
    labels = json.loads(run("info", "--index", index, "--json").output)
    assert labels["labels"]["white"] == 1


def test_onnx_and_torch_indexes_give_the_same_answers(gallery: Path, tmp_path: Path):
    index = tmp_path / "idx"
    build_index(gallery, index, model="tiny")
    query = write_image(tmp_path / "q.png", COLORS["blue"], seed=8)
    # as found (re-ranked scores of the tiny network tie within float noise)
    fast = retrieval.Retriever(index).query([query], k=4, rerank="none")[0]
    slow = retrieval.Retriever(index, model="tiny").query([query], k=4, rerank="none")[0]
    assert [n.path for n in fast.neighbors] == [n.path for n in slow.neighbors]
    np.testing.assert_allclose(
        [n.score for n in fast.neighbors], [n.score for n in slow.neighbors], atol=1e-5
    )
    assert fast.label == slow.label == "blue"
