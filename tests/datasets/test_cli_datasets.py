"""The benchmark layouts through the real CLI: build-index, evaluate and train with --format,
--split, --crop and --level; the boxes reach the network; bad options fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index import IndexStore
from retrieval.datasets import load_dataset
from retrieval.datasets.folders import Record
from retrieval.engine.images import load_rgb
from retrieval.engine.transforms import EvalTransform
from retrieval.nets.model import load_model
from retrieval.training.train import _Images

from ..helpers import run
from .conftest import edit_line


def labels_of(index: Path) -> dict[str, int]:
    return json.loads(run("info", "--index", index, "--json").output)["labels"]


def test_build_index_reads_cub_split_detected(cub_root: Path, tmp_path: Path):
    index = tmp_path / "idx"
    r = run(
        "build-index", cub_root, "--index", index, "--model", "tiny", "--split", "retrieval-test"
    )
    assert "indexed 4 images of 2 labels" in r.output
    assert labels_of(index) == {"White_Pelican": 2, "Western_Wood_Pewee": 2}


@pytest.mark.parametrize("crop", ["none", "bbox"])
def test_build_index_embeds_the_box_when_cropping(cub_root: Path, tmp_path: Path, crop: str):
    index = tmp_path / "idx"
    run(
        "build-index",
        cub_root,
        "--index",
        index,
        "--model",
        "tiny",
        "--format",
        "cub",
        "--crop",
        crop,
    )
    records = load_dataset(cub_root, format="cub", crop=crop)
    loaded = load_model("tiny")
    embedder = loaded.embedder(num_workers=0)
    images = [load_rgb(r.path, min_side=embedder.transform.pre.resize, box=r.box) for r in records]
    expected = dict(
        zip((str(r.path.resolve()) for r in records), embedder.embed_images(images), strict=True)
    )
    with IndexStore.open(index) as store:
        ids, vectors = store.vectors()
        paths = {item.id: item.path for item in store.items()}
    assert len(ids) == len(expected) == 8
    for i, v in zip(ids, vectors, strict=True):
        np.testing.assert_allclose(v, expected[paths[int(i)]], atol=1e-5)
    whole = embedder.embed_images([load_rgb(records[0].path)])[0]
    differs = not np.allclose(expected[str(records[0].path.resolve())], whole, atol=1e-3)
    assert differs == (crop == "bbox")


def test_evaluate_flowers_official_test_split(flowers_root: Path):
    m = json.loads(
        run(
            "evaluate",
            flowers_root,
            "--model",
            "tiny",
            "--format",
            "flowers102",
            "--split",
            "test",
            "--json",
        ).output
    )
    assert (m["n_images"], m["n_classes"]) == (4, 4)
    assert m["enrollment"] == {"1": None, "5": None, "10": None}


def test_evaluate_aircraft_level(aircraft_root: Path):
    m = json.loads(
        run(
            "evaluate", aircraft_root, "--model", "tiny", "--level", "manufacturer", "--json"
        ).output
    )
    assert (m["n_images"], m["n_classes"]) == (8, 4)


def test_build_index_aircraft_family_labels(aircraft_root: Path, tmp_path: Path):
    index = tmp_path / "idx"
    run(
        "build-index",
        aircraft_root,
        "--index",
        index,
        "--model",
        "tiny",
        "--level",
        "family",
        "--split",
        "test",
    )
    assert labels_of(index) == {"A340": 1, "Boeing 707": 1, "Cessna 172": 1, "F-A-18": 1}


def test_train_on_cars_layout_then_index_with_the_model(cars_root: Path, tmp_path: Path):
    out = tmp_path / "model"
    r = run(
        "train",
        cars_root,
        "--out",
        out,
        "--backbone",
        "tiny",
        "--format",
        "cars",
        "--crop",
        "bbox",
        "--epochs",
        "1",
        "--val-classes",
        "0",
        "--image-size",
        "32",
        "--batch-p",
        "2",
        "--batch-k",
        "2",
        "--workers",
        "0",
    )
    assert "kept epoch" in r.output
    index = tmp_path / "idx"
    run("build-index", cars_root, "--index", index, "--model", out, "--crop", "bbox")
    assert sum(labels_of(index).values()) == 8 and len(labels_of(index)) == 4


def test_train_images_are_cut_to_their_box(cub_root: Path):
    (rec,) = [r for r in load_dataset(cub_root, crop="bbox")][:1]
    tf = EvalTransform(load_model("tiny").net.preprocess)
    x, label = _Images([rec], [7], tf, 32)[0]
    assert label == 7
    assert x.shape == tf(load_rgb(rec.path, box=rec.box)).shape
    np.testing.assert_allclose(x, tf(load_rgb(rec.path, min_side=32, box=rec.box)))
    whole = _Images([Record(rec.path, rec.label)], [7], tf, 32)[0][0]
    assert not np.allclose(x, whole, atol=1e-3)


def test_missing_metadata_file_named_and_index_untouched(cub_root: Path, tmp_path: Path):
    index = tmp_path / "idx"
    run("build-index", cub_root, "--index", index, "--model", "tiny")
    before = labels_of(index)
    (cub_root / "bounding_boxes.txt").unlink()
    r = run(
        "build-index",
        cub_root,
        "--index",
        index,
        "--model",
        "tiny",
        "--crop",
        "bbox",
        "--force",
        ok=False,
    )
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and "bounding_boxes.txt" in r.output
    assert labels_of(index) == before


def test_bad_line_quoted_through_the_cli(cub_root: Path, tmp_path: Path):
    edit_line(cub_root / "image_class_labels.txt", 3, "3 banana")
    r = run("evaluate", cub_root, "--model", "tiny", ok=False)
    assert r.exit_code == 1
    assert "image_class_labels.txt line 3" in r.output and "banana" in r.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "flowers102", "--crop", "bbox"], ["bbox", "Flowers"]),
        (["--format", "cub", "--level", "family"], ["family", "aircraft"]),
        (["--format", "folder"], ["split", "folder"]),
        (["--split", "banana"], ["--split", "banana"]),
    ],
)
def test_options_a_dataset_cannot_honour(flowers_root: Path, tmp_path: Path, args, words):
    base = ["--split", "test"] if "--split" not in args else []
    r = run("evaluate", flowers_root, "--model", "tiny", *base, *args, ok=False)
    assert r.exit_code != 0
    assert all(w in r.output for w in words), r.output
