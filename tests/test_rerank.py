"""Re-ranking (retrieval/engine/rerank.py) and its state beside an index
(retrieval/indexing/dba.py): the lists kept equal to lists made from scratch through enrolment
and removal, a query never a DBA neighbour of what it is compared with, the option through the
CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

import retrieval
from index import IndexStore
from retrieval.engine import rerank as rr
from retrieval.indexing import dba
from retrieval.training.metrics import reranked_leave_one_out, retrieval_metrics

from .helpers import COLORS, MODEL, add_items, run, unit_rows, write_image


def clustered(n: int, classes: int, seed: int = 0, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    x = (centres[labels] + 0.8 * rng.normal(size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_lists_are_the_nearest_others_of_the_same_label_with_a_spare():
    x = unit_rows(40, seed=1)
    labels = np.array(["a", "b", "c", "d"])[np.arange(40) % 4]
    lists = rr.Lists.of(x, labels)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    for i in range(40):
        others = np.where(labels == labels[i], sims[i], -np.inf)
        assert lists.nbr[i].tolist() == np.argsort(-others)[: rr.M + 1].tolist()
        assert np.argmax(sims[i]) in lists.nbr[i] or labels[np.argmax(sims[i])] != labels[i]
    assert any(labels[np.argmax(sims[i])] != labels[i] for i in range(40))  # the case it covers
    nbr, _ = lists.rows(np.arange(40), without=int(lists.nbr[0, 0]))
    assert nbr[0].tolist() == lists.nbr[0, 1:].tolist()  # the spare moves up
    assert nbr.shape == (40, rr.M)


def test_a_label_with_fewer_items_than_a_list_pads_it():
    x = unit_rows(5, seed=2)
    lists = rr.Lists.of(x, ["a", "a", "b", "b", "b"])
    assert lists.nbr[0].tolist() == [1, -1, -1, -1]
    assert lists.nbr[2, :2].tolist() in ([3, 4], [4, 3]) and lists.nbr[2, 2] == -1
    assert np.isinf(lists.sim[0, 1:]).all()


def test_kept_lists_follow_writes_as_if_made_from_scratch(tmp_path: Path):
    """Adds (into labels the gallery holds, whose items' lists the new ones enter, and into new
    labels) and removals (single items, scattered ones, a whole label): the kept lists equal
    lists made from the records afresh."""
    x, _ = clustered(140, 6, seed=2)
    names = np.array(["a", "b", "c"])
    store = IndexStore.create(tmp_path / "idx", 16, MODEL)
    ids = add_items(store, x[:80], list(names[np.arange(80) % 2]))
    generation, _ = dba.load(store)
    assert (tmp_path / "idx" / dba.FILE).is_file() and generation == store.generation
    for lo, hi in ((80, 81), (81, 100), (100, 120), (120, 140)):
        labels = list(names[np.arange(lo, hi) % 3])
        with store.writing():
            before = store.generation
            new = add_items(store, x[lo:hi], labels, start=lo)
            dba.follow(store, before, new, labels, 1)
        kept = dba._read(store)
        assert kept is not None and kept[0] == store.generation
        assert kept[1].equals(dba.build(store))
        ids = np.concatenate([ids, new])
    for gone in (ids[:1], ids[5:30:3], ids[40:90]):
        with store.writing():
            before = store.generation
            labels = [i.label for i in store.items(gone)]
            store.remove_ids(gone)
            dba.follow(store, before, gone, labels, -1)
        kept = dba._read(store)
        assert kept is not None and kept[0] == store.generation
        assert kept[1].equals(dba.build(store))
    with store.writing():
        before = store.generation
        removed = store.remove_label("c")
        dba.follow(store, before, np.array([i.id for i in removed]), ["c"] * len(removed), -1)
    assert dba._read(store)[1].equals(dba.build(store))
    store.close()


def test_lists_not_of_the_records_are_made_anew(tmp_path: Path):
    store = IndexStore.create(tmp_path / "idx", 16, MODEL)
    add_items(store, unit_rows(20, seed=3), ["a"] * 20)
    dba.load(store)
    before = store.generation
    add_items(store, unit_rows(5, seed=4), ["b"] * 5, start=20)  # a write that did not follow
    dba.follow(store, before + 1, np.arange(3), ["b"] * 3, 1)  # not the kept generation: no-op
    assert dba._read(store)[0] == before
    generation, lists = dba.load(store)
    assert generation == store.generation and lists.equals(dba.build(store)) and len(lists) == 25
    (tmp_path / "idx" / dba.FILE).write_bytes(b"damaged")
    assert dba.load(store)[1].equals(lists)
    store.close()


def test_lists_made_across_labels_by_an_earlier_version_are_made_anew(tmp_path: Path):
    """dba.npz written before the lists kept to each label (no "within" in its meta) holds
    neighbours of other labels: it is not used, even at the records' generation."""
    store = IndexStore.create(tmp_path / "idx", 16, MODEL)
    x = unit_rows(30, seed=6)
    labels = ["a", "b", "c"] * 10
    add_items(store, x, labels)
    ids, _ = store.vectors()
    across = rr.Lists.of(x, ["one"] * len(x), ids)  # one label: the nearest items of any
    out = io.BytesIO()
    meta = {"generation": store.generation, "m": rr.M}
    np.savez(out, meta=np.array(json.dumps(meta)), ids=across.ids, nbr=across.nbr, sim=across.sim)
    (tmp_path / "idx" / dba.FILE).write_bytes(out.getvalue())
    assert dba._read(store) is None
    generation, lists = dba.load(store)
    assert generation == store.generation and lists.equals(rr.Lists.of(x, labels, ids))
    assert not lists.equals(across)
    store.close()


def test_evaluate_queries_one_at_a_time_without_themselves():
    """Each row's ranking equals a query of a gallery that never held it: the lists made from
    scratch without the row, the row queried from outside."""
    x, labels = clustered(90, 5, seed=5)
    for method in ("dba", "qe", "dba+qe", "kr"):
        got = reranked_leave_one_out(x, labels, 10, method)
        for i in range(0, 90, 7):
            rest = np.delete(np.arange(90), i)
            g = x[rest]
            cand = np.argsort(-(g @ x[i]), kind="stable")[: rr.shortlist(10, method)]
            lists = rr.Lists.of(g, labels[rest]) if rr.uses_lists(method) else None
            scores = rr.rerank(method, x[i], cand, g.__getitem__, lists)
            want = rest[cand[np.argsort(-scores, kind="stable")[:10]]]
            assert got[i].tolist() == want.tolist(), (method, i)
    plain = retrieval_metrics(x, labels)
    assert retrieval_metrics(x, labels, rerank="none") == plain
    assert retrieval_metrics(x, labels, rerank="dba+qe")["map_at_r"] != plain["map_at_r"]


def reference_k_reciprocal(q: np.ndarray, x: np.ndarray, k1=20, k2=6, lam=0.3) -> np.ndarray:
    """The paper's re-ranking as its authors' code writes it, one node at a time (float64), on
    the graph of the query and its shortlist; returned as 1 - final distance."""
    feats = np.vstack([q, x]).astype(np.float64)
    m = len(feats)
    dist = np.maximum(2 - 2 * feats @ feats.T, 0)
    dist = np.transpose(dist / np.max(dist, axis=0))
    rank = np.argsort(dist, axis=1, kind="stable")
    v = np.zeros((m, m))
    half = int(np.around(k1 / 2))
    for i in range(m):
        fwd = rank[i, : k1 + 1]
        recip = fwd[np.where(rank[fwd, : k1 + 1] == i)[0]]
        expansion = recip
        for cand in recip:
            cf = rank[cand, : half + 1]
            cand_recip = cf[np.where(rank[cf, : half + 1] == cand)[0]]
            if len(np.intersect1d(cand_recip, recip)) > 2 / 3 * len(cand_recip):
                expansion = np.append(expansion, cand_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        v[i, expansion] = weight / weight.sum()
    v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(m)])
    shared = np.minimum(v[0], v[1:]).sum(axis=1)
    jaccard = 1 - shared / (2 - shared)
    return 1 - ((1 - lam) * jaccard + lam * dist[0, 1:])


@pytest.mark.parametrize("n", [200, 40, 12])
def test_k_reciprocal_is_the_papers_reranking(n: int):
    """Vectorised, it scores a shortlist as the authors' per-node loops do (shortlists larger
    and smaller than k1)."""
    x, _ = clustered(n + 1, 6, seed=n, dim=32)
    q, shortlist = x[0], x[1:]
    got = rr.k_reciprocal(q, shortlist)
    want = reference_k_reciprocal(q, shortlist)
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.argsort(-got, kind="stable").tolist() == np.argsort(-want, kind="stable").tolist()


def test_k_reciprocal_lifts_map_at_r_and_survives_odd_shortlists():
    x, labels = clustered(300, 6, seed=11, dim=24)
    plain = retrieval_metrics(x, labels)
    kr = retrieval_metrics(x, labels, rerank="kr")
    assert kr["map_at_r"] > plain["map_at_r"] + 0.02
    twins = np.repeat(x[:1], 30, axis=0)  # duplicates: ties at distance 0
    for shortlist in (twins, x[:1], x[:0]):
        scores = rr.k_reciprocal(x[0], shortlist)
        assert scores.shape == (len(shortlist),) and np.isfinite(scores).all()
        assert ((scores >= 0) & (scores <= 1 + 1e-6)).all()


@pytest.mark.parametrize("method", ["dba", "kr"])
def test_a_gallery_photo_queried_again_is_no_neighbour_of_its_neighbours(
    tiny_index: Path, tmp_path: Path, method: str
):
    """Querying a photo the index holds re-ranks exactly as if the index did not hold it (no
    DBA neighbour, no node of the k-reciprocal graph)."""
    import shutil

    photo = tmp_path / "g" / "red" / "1.png"
    other = shutil.copytree(tiny_index, tmp_path / "without")
    with retrieval.Retriever(other) as r:
        r.remove(path=photo)
        want = r.query(photo, k=6, rerank=method)[0]
    with retrieval.Retriever(tiny_index) as r:
        got = r.query(photo, k=6, rerank=method)[0]
    # The same neighbours with the same scores, in the same order up to float rounding: the
    # tiny network maps a colour's photos to cosines of 0.9998, whose scores tie to 1e-7.
    got_score = {n.path: n.score for n in got.neighbors}
    want_score = {n.path: n.score for n in want.neighbors}
    assert got_score.keys() == want_score.keys()
    assert [got_score[p] for p in want_score] == pytest.approx(list(want_score.values()), abs=1e-5)
    assert [n.score for n in got.neighbors] == pytest.approx(
        [n.score for n in want.neighbors], abs=1e-5
    )


def test_the_label_is_decided_before_reranking(tiny_index: Path, tmp_path: Path):
    q = write_image(tmp_path / "q.png", COLORS["green"], seed=77)
    with retrieval.Retriever(tiny_index) as r:
        plain = r.query(q, k=4, rerank="none")[0]
        for method in ("dba", "qe", "dba+qe", "kr"):
            a = r.query(q, k=4, rerank=method)[0]
            assert (a.label, a.confidence, a.vote_share, a.decision) == (
                plain.label,
                plain.confidence,
                plain.vote_share,
                plain.decision,
            )
            assert a.rerank == method and len(a.neighbors) == 4


def test_rerank_round_trips_through_the_cli(tiny_index: Path, tmp_path: Path):
    q = write_image(tmp_path / "q.png", COLORS["blue"], seed=78)
    info = json.loads(run("info", "--index", tiny_index, "--json").output)
    assert info["rerank"] == retrieval.api.DEFAULT_RERANK
    for method in ("none", "dba", "qe", "dba+qe", "kr"):
        obj = json.loads(
            run("query", q, "--index", tiny_index, "--rerank", method, "--json").output
        )
        assert obj["rerank"] == method and obj["label"] == "blue"
    run("calibrate", "--index", tiny_index, "--rerank", "qe")
    assert json.loads(run("info", "--index", tiny_index, "--json").output)["rerank"] == "qe"
    obj = json.loads(run("query", q, "--index", tiny_index, "--json").output)
    assert obj["rerank"] == "qe"
    bad = run("query", q, "--index", tiny_index, "--rerank", "graph", ok=False)
    assert bad.exit_code != 0 and "--rerank" in bad.output


def test_evaluate_names_its_reranking(tmp_path: Path):
    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(4):
            write_image(tmp_path / "d" / label / f"{j}.png", color, seed=10 * ci + j)
    for method in ("none", "dba+qe"):
        m = json.loads(
            run("evaluate", tmp_path / "d", "--model", "tiny", "--rerank", method, "--json").output
        )
        assert m["rerank"] == method and 0 <= m["map_at_r"] <= 1


def test_build_index_leaves_current_lists(tiny_index: Path):
    with IndexStore.open(tiny_index) as store:
        kept = dba._read(store)
        assert kept is not None and kept[0] == store.generation
        assert kept[1].equals(dba.build(store)) and len(kept[1]) == 12


def test_a_sharded_index_is_not_reranked(tmp_path: Path):
    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(3):
            write_image(tmp_path / "g" / label / f"{j}.png", color, seed=10 * ci + j)
    retrieval.build(tmp_path / "g", tmp_path / "idx", model="tiny", shards=2)
    q = write_image(tmp_path / "q.png", COLORS["red"], seed=79)
    with retrieval.Retriever(tmp_path / "idx") as r:
        assert r.query(q, k=3)[0].rerank == "none" and r.info().rerank == "none"
        with pytest.raises(retrieval.RetrieveError, match="unsharded"):
            r.query(q, k=3, rerank="dba")


def test_an_index_past_the_dba_bound_reranks_by_k_reciprocal_neighbours(
    tiny_index: Path, tmp_path: Path, monkeypatch
):
    """Past dba.AT_MOST items no lists are kept (their build is a search per item): the default
    dba+qe becomes kr (no lists needed), an explicit DBA is refused in one line, a write drops
    the old lists."""
    monkeypatch.setattr(dba, "AT_MOST", 12)
    probe = write_image(tmp_path / "q.png", COLORS["red"], seed=71)
    with retrieval.Retriever(tiny_index) as r:
        assert r.answer(probe).rerank == "dba+qe"  # 12 items: at the bound, lists kept
        assert (tiny_index / dba.FILE).exists()
        r.enroll("red", [write_image(tmp_path / "r.png", COLORS["red"], seed=72)])
        assert not (tiny_index / dba.FILE).exists()
        assert r.answer(probe).rerank == "kr" and r.info().rerank == "kr"
        with pytest.raises(retrieval.RetrieveError, match="--rerank dba: DBA is kept for"):
            r.answer(probe, rerank="dba")
        assert not (tiny_index / dba.FILE).exists()
