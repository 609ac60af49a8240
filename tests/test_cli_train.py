"""retrieve train / evaluate through click's CliRunner, then the trained folder used as --model."""

from __future__ import annotations

import json
from pathlib import Path

from .helpers import COLORS, EVALUATE_JSON_KEYS, run, write_image


def test_train_then_index_with_the_model(gallery: Path, tmp_path: Path):
    for j in range(4):
        write_image(gallery / "yellow" / f"{j}.png", (230, 220, 20), seed=70 + j)
    out = tmp_path / "model"
    r = run(
        "train",
        gallery,
        "--out",
        out,
        "--backbone",
        "tiny",
        "--epochs",
        "2",
        "--val-classes",
        "1",
        "--dim",
        "8",
        "--image-size",
        "32",
        "--batch-p",
        "2",
        "--batch-k",
        "2",
        "--workers",
        "0",
        "--loss",
        "triplet",
        "--miner",
        "batch-hard",
    )
    assert "kept epoch" in r.output and "epoch 2:" in r.output
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history[:-1]] == [0, 1, 2]
    assert history[-1]["whitened"] is True and "whitening head" in r.output
    index = tmp_path / "idx"
    run("build-index", gallery, "--index", index, "--model", out)
    info = json.loads(run("info", "--index", index, "--json").output)
    assert info["dim"] == 8 and info["model"] == "model" and info["count"] == 16
    assert info["flip"] is False  # the default: one pass per image
    assert info["input_size"] == 32  # --image-size: what the network sees, its cost and detail
    q = write_image(tmp_path / "q.png", COLORS["red"], seed=3)
    obj = json.loads(run("query", q, "--index", index, "--json").output)
    assert len(obj["neighbors"]) == 5


def test_train_flip_gives_a_two_pass_model_that_says_so(gallery: Path, tmp_path: Path):
    out = tmp_path / "model"
    tiny = ["--backbone", "tiny", "--epochs", "1", "--val-classes", "0", "--image-size", "32"]
    batches = ["--batch-p", "2", "--batch-k", "2", "--workers", "0"]
    run("train", gallery, "--out", out, "--flip", *tiny, *batches)
    index = tmp_path / "idx"
    run("build-index", gallery, "--index", index, "--model", out)
    info = run("info", "--index", index)
    assert "each image averaged with its mirror image (2 passes)" in info.output
    assert json.loads(run("info", "--index", index, "--json").output)["flip"] is True
    m = json.loads(run("evaluate", gallery, "--model", out, "--no-mirror", "--json").output)
    assert m["mirror"] is True  # the network averages each photo with its mirror itself


def test_train_bad_settings(gallery: Path, tmp_path: Path):
    r = run("train", gallery, "--out", tmp_path / "m", "--freeze", "some", ok=False)
    assert r.exit_code == 2 and "freeze" in r.output
    r = run("train", gallery, "--out", tmp_path / "m", "--crop-scale", "0", ok=False)
    assert r.exit_code == 2 and "--crop-scale" in r.output
    r = run("train", gallery, "--out", tmp_path / "m", "--seed", "-1", ok=False)
    assert r.exit_code == 2 and "'--seed': -1 is not in the range x>=0" in r.output
    assert not (tmp_path / "m").exists()
    r = run(
        "train",
        gallery,
        "--out",
        tmp_path / "m",
        "--backbone",
        "tiny",
        "--val-classes",
        "2",
        "--batch-p",
        "2",
        "--batch-k",
        "2",
        "--workers",
        "0",
        ok=False,
    )
    assert r.exit_code == 1 and "leaves 1 classes" in r.output
    out = tmp_path / "few"
    r = run("train", gallery, "--out", out, "--backbone", "tiny", "--workers", "0", ok=False)
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "retrieve: error: --batch-p 8 needs 8 classes of 2 or more images to train on; 3 of "
        "the 3 classes left after --val-classes 0 have them: lower --batch-p or --val-classes"
    ]
    assert not out.exists()


def test_evaluate_bad_seed(gallery: Path):
    r = run("evaluate", gallery, "--model", "tiny", "--seed", "-2", ok=False)
    assert r.exit_code == 2 and "'--seed': -2 is not in the range x>=0" in r.output


def test_evaluate_json(gallery: Path):
    m = json.loads(run("evaluate", gallery, "--model", "tiny", "--json").output)
    assert set(m) == EVALUATE_JSON_KEYS
    assert m["n_images"] == 12 and m["n_classes"] == 3 and m["model"] == "tiny"
    assert set(m["enrollment"]) == {"1", "5", "10"}
    assert 0.0 <= m["enrollment"]["1"] <= 1.0
    assert m["enrollment"]["5"] is None  # 4 images per class: none left to classify
    assert all(0.0 <= v <= 1.0 for k, v in m.items() if k.startswith(("recall", "map")))
    assert m["recall_at_1"] <= m["recall_at_2"] <= m["recall_at_4"] <= m["recall_at_8"]
    # 1 of the 3 classes in the gallery (2 of its 4 images): 2 known and 8 absent queries
    assert m["open_set"]["queries_absent"] == 0.8 and m["open_set"]["absent_share"] == 0.2
    assert 0.0 <= m["ece_at_absent_share"] <= 1.0
    text = run("evaluate", gallery, "--model", "tiny").output
    assert "R@1" in text and "MAP@R" in text
    assert "(80% of these queries absent;" in text
    assert f"{m['ece_at_absent_share']:.3f} weighted to the 20% the confidence assumes" in text
    assert m["mirror"] is True and "queries mirror-averaged" in text  # as query asks by default
    plain = json.loads(run("evaluate", gallery, "--model", "tiny", "--json", "--no-mirror").output)
    assert plain["mirror"] is False
    assert (
        "mirror-averaged" not in run("evaluate", gallery, "--model", "tiny", "--no-mirror").output
    )
