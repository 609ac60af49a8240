from __future__ import annotations

import numpy as np
import pytest

from retrieval.engine import openset
from retrieval.engine.classify import Neighbor, nearest_prototype, vote
from retrieval.training.metrics import knn_accuracy


def n(label: str, score: float) -> Neighbor:
    return Neighbor(f"/{label}/{score}", label, score)


def test_majority_counts_votes_not_scores():
    neighbors = [n("a", 0.99), n("b", 0.6), n("b", 0.5)]
    p = vote(neighbors, k=3, method="majority")
    assert p.label == "b"
    assert p.confidence == pytest.approx(2 / 3)


def test_weighted_uses_scores():
    neighbors = [n("a", 0.99), n("b", 0.3), n("b", 0.3)]
    p = vote(neighbors, k=3, method="weighted")
    assert p.label == "a"
    assert p.confidence == pytest.approx(0.99 / 1.59)


def test_only_first_k_vote_and_neighbors_sorted():
    neighbors = [n("b", 0.2), n("a", 0.9), n("b", 0.1), n("b", 0.15)]
    p = vote(neighbors, k=1)
    assert p.label == "a" and p.confidence == 1.0
    assert [x.score for x in p.neighbors] == [0.9]


def test_tie_broken_by_summed_score():
    p = vote([n("a", 0.5), n("b", 0.9), n("a", 0.45), n("b", 0.1)], k=4, method="majority")
    assert p.label == "b"


def test_unknown_below_min_score():
    p = vote([n("a", 0.4), n("a", 0.3)], k=2, min_score=0.5)
    assert p.label is None and p.confidence == 0.0
    assert len(p.neighbors) == 2


def test_empty_neighbors_is_unknown():
    assert vote([], k=3).label is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        vote([n("a", 1.0)], k=0)
    with pytest.raises(ValueError):
        vote([n("a", 1.0)], method="nope")


def test_prototype_rule_measures_nearness_in_the_galleries_within_class_shape():
    """Every label varies along one nuisance direction (e1: pose, say). A photo of "a" far out
    along it lies nearer the mean of "b" by cosine, but it is a's by the gallery's own shape."""
    dim = 32
    e = np.eye(dim)
    offsets = {"a": 0 * e[0], "b": 0.3 * e[1] + 0.3 * e[2], "c": 0.3 * e[3], "d": 0.3 * e[4]}
    names, rows = [], []
    for label, offset in offsets.items():
        for t in (-0.6, -0.3, 0.3, 0.6):
            rows.append(e[0] + offset + t * e[1])
            names.append(label)
    gallery = np.array(rows, np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    query = (e[0] + 0.55 * e[1]).astype(np.float32)
    query /= np.linalg.norm(query)
    sims = gallery @ query
    neighbors = [Neighbor("", names[i], float(sims[i])) for i in np.argsort(-sims)]
    assert {"a", "b"} <= {nb.label for nb in neighbors[:5]}

    means = {lab: gallery[[i for i, x in enumerate(names) if x == lab]].mean(0) for lab in offsets}
    by_cosine = max(means, key=lambda lab: query @ means[lab] / np.linalg.norm(means[lab]))
    assert by_cosine == "b"  # what the rule chose before it measured in the gallery's shape

    stats = openset.Stats.of(gallery, names)
    scorer = openset.Scorer(stats, openset.Shape.of(stats))
    closeness = scorer.closeness(scorer.distances(query[None])[0])
    assert nearest_prototype(neighbors, closeness, k=5) == "a"
    assert nearest_prototype(neighbors, closeness, k=1) == "a"  # the nearest photo is a's
    assert closeness("zebra") is None
    assert knn_accuracy(gallery, names, query[None], ["a"], k=5) == 1.0
    assert knn_accuracy(gallery, names, query[None], ["a"], k=5, method="weighted") == 1.0


def test_closeness_among_a_few_labels_is_the_full_distances():
    """closeness_among computes only the labels named; each equals the row of distances."""
    rng = np.random.default_rng(4)
    names = [f"l{i % 7}" for i in range(70)]
    gallery = rng.normal(size=(70, 16)) + 2 * np.eye(16)[[i % 7 for i in range(70)]]
    gallery = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32)
    stats = openset.Stats.of(gallery[:-3], names[:-3])  # classes of different sizes
    scorer = openset.Scorer(stats, openset.Shape.of(stats))
    for query in gallery[-3:]:
        full = scorer.closeness(scorer.distances(query[None])[0])
        asked = ["l5", "l1", "zebra", "l5", "l3"]
        some = scorer.closeness_among(query, asked)
        for label in ("l1", "l3", "l5"):
            assert some(label) == pytest.approx(full(label), rel=1e-5, abs=1e-5)
        assert some("l0") is None and some("zebra") is None  # not asked / not in the gallery
