"""Metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.training.metrics import (
    OpenSetRun,
    auroc,
    enrollment_accuracy,
    expected_calibration_error,
    knn_accuracy,
    map_at_r,
    neighbors_leave_one_out,
    open_set_run,
    open_set_split,
    recall_at_k,
    reranked_leave_one_out,
    retrieval_metrics,
    share_weights,
)


def unit(angles_deg):
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_recall_by_hand():
    labels = np.array([0, 0, 1])
    nn_labels = np.array([[1, 0], [0, 1], [0, 0]])
    assert recall_at_k(labels, nn_labels, [1, 2]) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
    }


def test_map_at_r_by_hand():
    # query 0: R = 2, ranking rel = [1, 0, 1] -> AP@R = (1/1) / 2 = 0.5 (3rd hit is past R)
    # query 1: R = 2, rel = [0, 1, 1] -> (1/2) / 2 = 0.25
    # query 2: R = 2, rel = [1, 1, 0] -> (1 + 1) / 2 = 1
    # query 3: R = 0 -> left out
    labels = np.array([0, 0, 0, 1])
    nn_labels = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert map_at_r(labels, nn_labels) == pytest.approx((0.5 + 0.25 + 1.0) / 3)


def test_neighbors_exclude_self_and_blocks_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a = neighbors_leave_one_out(x, 5, block=7)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    np.testing.assert_array_equal(a, np.argsort(-sim, axis=1)[:, :5])
    assert not (a == np.arange(50)[:, None]).any()


def test_retrieval_metrics_on_circle():
    # class 0 at 0,10,20 deg; class 1 at 100,110; the point at 57 deg (class 1) is closest to 20 deg
    x = unit([0, 10, 20, 100, 110, 57])
    labels = np.array([0, 0, 0, 1, 1, 1])
    m = retrieval_metrics(x, labels, ks=(1, 2))
    # R@1: every nearest neighbour is of the same class but that of 57 (20 deg): 5/6
    assert m["recall_at_1"] == pytest.approx(5 / 6)
    assert m["recall_at_2"] == pytest.approx(1.0)
    # AP@R, R=2 each: q0 [10,20] -> 1; q10 -> 1; q20 [10,0] -> 1;
    # q100 [110, 57] -> 1; q110 [100, 57] -> 1; q57 [20(0), 100(1)] -> (1/2)/2 = 0.25
    assert m["map_at_r"] == pytest.approx((5 + 0.25) / 6)


def test_perfect_embedding_is_perfect():
    labels = np.repeat(np.arange(5), 4)
    x = np.eye(5, dtype=np.float32)[labels]
    m = retrieval_metrics(x, labels)
    assert m["recall_at_1"] == 1.0 and m["map_at_r"] == 1.0
    assert enrollment_accuracy(x, [str(v) for v in labels], 1) == 1.0


def test_leave_one_out_asks_the_queries_rows():
    """Row i is asked as queries[i] against the other rows of x: two tight pairs, each row asked
    as the other pair's vector finds that pair, itself still left out."""
    x = unit([0, 10, 90, 100])
    assert neighbors_leave_one_out(x, 1)[:, 0].tolist() == [1, 0, 3, 2]
    swapped = x[[2, 3, 0, 1]]
    assert neighbors_leave_one_out(x, 1, queries=swapped)[:, 0].tolist() == [2, 3, 0, 1]


@pytest.mark.parametrize("method", ["none", "dba", "qe", "dba+qe", "kr"])
def test_reranked_leave_one_out_asks_the_queries_rows(method: str):
    """Each re-ranking asks row i as queries[i] against the other rows of x: two tight pairs
    apart, each row asked as the other pair's vector ranks that pair first, itself left out."""
    x = unit([0, 4, 90, 94, 180, 184])
    labels = ["a", "a", "b", "b", "c", "c"]
    own = reranked_leave_one_out(x, labels, 1, method)[:, 0]
    assert own.tolist() == [1, 0, 3, 2, 5, 4]
    np.testing.assert_array_equal(
        reranked_leave_one_out(x, labels, 1, method, queries=x)[:, 0], own
    )
    elsewhere = reranked_leave_one_out(x, labels, 2, method, queries=x[[2, 3, 4, 5, 0, 1]])
    assert [set(row) for row in elsewhere.tolist()] == [
        {2, 3},
        {2, 3},
        {4, 5},
        {4, 5},
        {0, 1},
        {0, 1},
    ]
    m = retrieval_metrics(
        x, np.array(labels), ks=(1,), rerank=method, queries=x[[2, 3, 4, 5, 0, 1]]
    )
    assert m["recall_at_1"] == 0.0 and m["map_at_r"] == 0.0


def test_enrollment_classifies_the_queries_rows():
    """The enrolled photos come from x, the classified ones from queries: rows that point at
    the next class make every answer wrong."""
    labels = np.repeat(np.arange(5), 4)
    x = np.eye(5, dtype=np.float32)[labels]
    shifted = np.eye(5, dtype=np.float32)[(labels + 1) % 5]
    names = [str(v) for v in labels]
    assert enrollment_accuracy(x, names, 2, queries=x) == 1.0
    assert enrollment_accuracy(x, names, 2, queries=shifted) == 0.0


def test_knn_accuracy_by_hand():
    gallery = unit([0, 90])
    queries = unit([10, 80, 50])
    acc = knn_accuracy(gallery, ["a", "b"], queries, ["a", "b", "a"], k=1)
    assert acc == pytest.approx(2 / 3)


def test_enrollment_is_seeded_and_skips_tiny_classes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = [str(i % 3) for i in range(30)]
    assert enrollment_accuracy(x, labels, 5, seed=3) == enrollment_accuracy(x, labels, 5, seed=3)
    assert enrollment_accuracy(x, labels, 10) is None


def test_open_set_metrics_on_separated_classes():
    """Tight, far-apart classes: absent queries score below every known one, the threshold
    keeps about known_accept of the known ones, and the confidence is near right."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32))
    labels = [f"c{c}" for c in range(8) for _ in range(20)]
    x = np.repeat(centres, 20, axis=0) + 0.05 * rng.normal(size=(160, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = [f"/{lab}/{i:03d}.jpg" for i, lab in enumerate(labels)]
    gallery, known, absent = open_set_split(labels, paths, seed=None)
    assert len(gallery) == 4 * 12 and len(known) == 4 * 8 and len(absent) == 4 * 12
    assert {labels[i] for i in gallery} == {"c0", "c1", "c2", "c3"}
    run = open_set_run(x.astype(np.float32), labels, gallery, known, absent)
    m = run.metrics()
    assert m["auroc"] == 1.0 and m["absent_rejected"] == 1.0
    assert 0.85 <= m["known_right"] <= 1.0 and m["closed_set_right"] == 1.0
    assert m["ece"] < 0.15


def test_an_open_set_query_is_labelled_by_its_asked_row_and_scored_by_its_own():
    """As a mirrored query: the label comes from the asked row, the decision score (and so the
    unknown answer and the confidence) from the row as the gallery was calibrated for."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32))
    labels = [f"c{c}" for c in range(8) for _ in range(20)]
    x = np.repeat(centres, 20, axis=0) + 0.05 * rng.normal(size=(160, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    paths = [f"/{lab}/{i:03d}.jpg" for i, lab in enumerate(labels)]
    split = open_set_split(labels, paths, seed=None)
    plain = open_set_run(x, labels, *split)
    same = open_set_run(x, labels, *split, asked=x)
    moved = open_set_run(x, labels, *split, asked=np.roll(x, 20, axis=0))  # each row: next class's
    for run in (same, moved):
        np.testing.assert_allclose(run.scores, plain.scores, rtol=1e-6)
        np.testing.assert_array_equal(run.answered, plain.answered)
        np.testing.assert_allclose(run.confidence, plain.confidence, rtol=1e-6)
    np.testing.assert_array_equal(same.closed_right, plain.closed_right)
    assert plain.metrics()["closed_set_right"] == 1.0
    assert moved.metrics()["closed_set_right"] == 0.0 and moved.metrics()["known_right"] == 0.0


def test_auroc_and_ece_by_hand():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    assert auroc(np.array([1.0]), np.array([])) != auroc(np.array([1.0]), np.array([]))  # NaN
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    right = np.array([1, 1, 1, 0], bool)
    assert np.isclose(expected_calibration_error(conf, right), 0.5 * 0.05 + 0.5 * 0.05)
    # weighted: the right 0.55 answer counts three times, so its bin is 3/4 right, not 1/2
    w = np.array([1.0, 1.0, 3.0, 1.0])
    assert np.isclose(
        expected_calibration_error(conf, right, weights=w), 2 / 6 * 0.05 + 4 / 6 * 0.2
    )


def test_share_weights_give_known_and_absent_their_assumed_shares():
    known = np.array([True, True, True, False])
    w = share_weights(known, 0.2)
    assert np.allclose(w, [0.8 / 3, 0.8 / 3, 0.8 / 3, 0.2])
    assert np.allclose(share_weights(np.array([True, True]), 0.2), 1.0)


def test_ece_at_the_assumed_absent_share_discounts_an_excess_of_absent_queries():
    """Half the queries absent where the confidence assumes a fifth: two known answers right
    and two absent ones answered, all at 0.9. Over these queries 0.9 is right half the time
    (ECE 0.4); weighted to a fifth absent it is right 0.8 of the time (ECE 0.1)."""
    known = np.array([True, True, False, False])
    run = OpenSetRun(
        threshold=0.0,
        scores=np.ones(4),
        known=known,
        answered=np.ones(4, bool),
        right=known.copy(),
        confidence=np.full(4, 0.9),
        closed_right=known.copy(),
        absent_share=0.2,
    )
    m = run.metrics()
    assert m["queries_absent"] == 0.5 and m["absent_share"] == 0.2
    assert np.isclose(m["ece"], 0.4) and np.isclose(m["ece_at_absent_share"], 0.1)
