"""The public API as a user calls it: the README's example run as it stands, and what the
Retriever promises beyond it (in-memory images, one network per Retriever, threads, a replaced
index, bad input)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrieval
from retrieval.datasets.synthetic import make_gallery
from retrieval.errors import InputError

from .helpers import COLORS, write_image

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its API example"
    return match.group(1)


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    birds = make_gallery(tmp_path / "photos", n_classes=4, per_class=11)
    names = list(birds)
    birds[names[0]][-1].rename(tmp_path / "new_photo.jpg")  # held out of the gallery
    birds[names[1]][-1].rename(tmp_path / "other.jpg")
    owls = make_gallery(tmp_path / "owls", n_classes=1, per_class=2, start=4)
    for path, name in zip(next(iter(owls.values())), ("owl1.jpg", "owl2.jpg"), strict=True):
        path.rename(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{names[0]} ") and f"/photos/{names[0]}/" in lines[0]
    assert lines[1] == f"other.jpg {names[1]}"
    assert lines[2:] == ["2", "True"]
    assert not list((tmp_path / "my-index" / "uploads").rglob("*.png"))  # its copy went too


@pytest.fixture
def index(tiny_index: Path) -> Path:
    return tiny_index


def test_in_memory_images_answer_as_their_files(index: Path, tmp_path: Path):
    path = write_image(tmp_path / "q.png", COLORS["red"], seed=77)
    with retrieval.Retriever(index) as r:
        by_path, by_bytes, by_pil, by_array = r.query(
            [path, path.read_bytes(), Image.open(path), np.asarray(Image.open(path))]
        )
    for other in (by_bytes, by_pil, by_array):
        assert other.label == by_path.label == "red"
        assert [n.id for n in other.neighbors] == [n.id for n in by_path.neighbors]
        assert np.allclose([n.score for n in other.neighbors], [n.score for n in by_path.neighbors])


def test_a_query_is_asked_averaged_with_its_mirror_image(index: Path, tmp_path: Path):
    """By default the neighbours (and their re-ranking) are of the image averaged with its
    mirror image; the decision score stays the image's own, as the index calibrated it."""
    from index import IndexStore
    from retrieval.engine.images import load_rgb
    from retrieval.nets.model import load_model

    path = write_image(tmp_path / "q.png", COLORS["green"], seed=91, size=40)
    with retrieval.Retriever(index) as r:
        mirrored = r.answer(path, k=6, rerank="none")
        plain = r.answer(path, k=6, rerank="none", mirror=False)
        (listed,) = r.query(path, k=6, rerank="none")
    vector, averaged = load_model("tiny").embedder().embed_images_mirrored([load_rgb(path)])
    with IndexStore.open(index) as store:
        for answer, asked in ((mirrored, averaged[0]), (plain, vector[0])):
            ids, x = store.vectors([n.id for n in answer.neighbors])
            cosine = dict(zip(ids.tolist(), x @ asked, strict=True))
            for n in answer.neighbors:
                assert n.score == pytest.approx(cosine[n.id], abs=1e-4)
    assert [n.score for n in listed.neighbors] == [n.score for n in mirrored.neighbors]
    assert mirrored.decision == pytest.approx(plain.decision, abs=1e-6)
    assert mirrored.confidence == pytest.approx(plain.confidence, abs=1e-6)
    assert (
        max(
            abs(a.score - b.score) for a, b in zip(mirrored.neighbors, plain.neighbors, strict=True)
        )
        > 1e-4
    )


def test_evaluate_asks_each_photo_as_query_does(tmp_path: Path):
    """evaluate's figures are those of each photo asked averaged with its mirror image against
    the others as they are (and, with mirror=False, as it is): computed here by hand."""
    from retrieval.nets.model import load_model
    from retrieval.training.metrics import enrollment_accuracy, retrieval_metrics

    birds = make_gallery(tmp_path / "g", n_classes=5, per_class=12)
    paths = sorted(str(p.resolve()) for photos in birds.values() for p in photos)
    labels = [Path(p).parent.name for p in paths]
    embedded = load_model("tiny").embedder().embed_paths(paths, mirror=True)
    by_hand = {}
    for mirror, asked in ((True, embedded.mirrored), (False, None)):
        m = retrieval_metrics(embedded.vectors, np.array(labels), rerank="dba+qe", queries=asked)
        m["5"] = enrollment_accuracy(embedded.vectors, labels, 5, queries=asked)
        by_hand[mirror] = m
        got = retrieval.evaluate(tmp_path / "g", model="tiny", mirror=mirror).metrics
        assert got["mirror"] is mirror
        assert got["recall_at_1"] == pytest.approx(m["recall_at_1"])
        assert got["map_at_r"] == pytest.approx(m["map_at_r"])
        assert got["enrollment"]["5"] == pytest.approx(m["5"])
    assert by_hand[True] != by_hand[False]  # the mirror changes what is measured here


def test_a_gallery_photo_given_as_bytes_does_not_vote_for_itself(index: Path):
    own = index.parent / "g" / "red" / "0.png"
    with retrieval.Retriever(index) as r:
        from_bytes = r.answer(own.read_bytes(), k=3)
        from_array = r.answer(np.asarray(Image.open(own)), k=3, rerank="none")  # as found
    assert str(own.resolve()) not in [n.path for n in from_bytes.neighbors]
    assert from_array.neighbors[0].path == str(own.resolve())  # no file content to know it by


def test_the_network_is_made_once_and_shared_by_threads(index: Path, tmp_path: Path, monkeypatch):
    import retrieval.api as api

    made = []
    real = api.embedder_for
    monkeypatch.setattr(api, "embedder_for", lambda *a, **k: made.append(1) or real(*a, **k))
    queries = [write_image(tmp_path / f"q{i}.png", COLORS["blue"], seed=200 + i) for i in range(8)]
    with retrieval.Retriever(index) as r:
        labels: list[str | None] = []
        threads = [
            threading.Thread(target=lambda q=q: labels.append(r.answer(q).label)) for q in queries
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        r.enroll("white", [write_image(tmp_path / "w.png", (250, 250, 250), seed=5)])
    assert labels == ["blue"] * 8
    assert made == [1]


def test_a_retriever_follows_an_index_replaced_by_build_index(index: Path, tmp_path: Path):
    write_image(tmp_path / "g2" / "grey" / "0.png", (128, 128, 128), seed=1)
    write_image(tmp_path / "g2" / "grey" / "1.png", (130, 130, 130), seed=2)
    query = write_image(tmp_path / "q.png", COLORS["red"], seed=3)
    with retrieval.Retriever(index) as r:
        assert r.answer(query).label == "red"
        retrieval.build(tmp_path / "g2", index, model="tiny", force=True)
        assert r.answer(query).label == "grey"
        assert r.labels() == {"grey": 2}


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 2), np.uint8), "(h, w, 3)"),
        (np.zeros((0, 4), np.uint8), "at least one pixel"),
    ],
)
def test_bad_arrays_are_one_line_errors(index: Path, image: np.ndarray, message: str):
    with retrieval.Retriever(index) as r, pytest.raises(InputError, match=re.escape(message)):
        r.query([image])


def test_an_index_emptied_by_removal_answers_that_it_is_empty(index: Path):
    """Every label removed: the label rule and the decision score have no class to measure."""
    photo = index.parent / "g" / "red" / "0.png"
    with retrieval.Retriever(index) as r:
        assert r.answer(photo).label == "red"
        for label in COLORS:
            r.remove(label=label)
        answer = r.answer(photo)
    assert answer.label is None and answer.neighbors == ()
    assert answer.unknown_because == "the index is empty"


def test_bad_queries_and_removals(index: Path, tmp_path: Path):
    with retrieval.Retriever(index) as r:
        with pytest.raises(InputError, match="nope.png does not exist"):
            r.query([index.parent / "g" / "red" / "0.png", tmp_path / "nope.png"])
        with pytest.raises(InputError, match="-k must be at least 1"):
            r.query(index.parent / "g" / "red" / "0.png", k=0)
        with pytest.raises(InputError, match="exactly one of"):
            r.remove()
        with pytest.raises(InputError, match="no items with label 'nope'"):
            r.remove(label="nope")
        assert len(r) == 12
