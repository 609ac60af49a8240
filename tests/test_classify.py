from __future__ import annotations

import pytest

from retrieval.engine.classify import Neighbor, vote


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
