"""Index types: flat and IVF each add, remove, search, reopen and repair; the auto choice by size;
the type in the manifest, and old manifests without it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from index import IndexFormatError, IndexStore, backend, plan
from index.cache import FaissCache
from index.check import check_index, repair_index

from ..helpers import DIM, MODEL, add_items, cache_is_current, unit_rows
from .helpers import assert_matches_reference, brute_force, clustered_rows

N = 3000
TYPES = ("flat", "ivf", "compact")


def _labels(which: np.ndarray) -> list[str]:
    return [f"c{int(c)}" for c in which]


def _filled(root: Path, index_type: str, n: int = N) -> tuple[np.ndarray, np.ndarray, list[str]]:
    vectors, which = clustered_rows(n, seed=1)
    labels = _labels(which)
    with IndexStore.create(root, DIM, MODEL, index_type=index_type) as store:
        ids = add_items(store, vectors, labels)
    return ids, vectors, labels


def _hit_ids(store: IndexStore, queries: np.ndarray, k: int) -> list[list[int]]:
    return [[h.id for h in row] for row in store.search(queries, k)]


def _recall_at_10(store: IndexStore, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray):
    _, exact = brute_force(ids, vectors, queries, 10)
    found = _hit_ids(store, queries, 10)
    return np.mean([len(set(f) & set(e.tolist())) / 10 for f, e in zip(found, exact, strict=True)])


@pytest.mark.parametrize("index_type", TYPES)
def test_layout_follows_the_type(root: Path, index_type: str) -> None:
    _filled(root, index_type)
    with IndexStore.open(root) as store:
        expected = plan.choose(index_type, N)
        assert store.layout == expected
        assert store.layout.type == index_type
    assert backend.layout(backend.read_index(root / "vectors.faiss")) == expected


def test_ivf_layout_follows_the_faiss_guidelines() -> None:
    for n in (100, 3000, 250_001, 1_000_000, 10_000_000):
        layout = plan.choose("ivf", n)
        assert layout.type == "ivf"
        assert layout.nlist <= 16 * np.sqrt(n)
        assert n >= plan.TRAIN_PER_LIST * layout.nlist
        assert plan.train_size(layout, n) >= 39 * layout.nlist
        assert 1 <= layout.nprobe <= layout.nlist
        assert plan.choose("ivf", n, layout) == layout
    assert plan.choose("ivf", 1_000_000).nlist >= 4 * np.sqrt(1_000_000)
    assert plan.choose("ivf", 2 * plan.TRAIN_PER_LIST - 1) == plan.FLAT
    assert plan.choose("auto", plan.AUTO_COMPACT_ABOVE) == plan.FLAT
    assert plan.choose("auto", plan.AUTO_COMPACT_ABOVE + 1).type == "compact"
    assert plan.choose("flat", 10_000_000) == plan.FLAT


def test_compact_layout() -> None:
    layout = plan.choose("compact", 1_000_000, dim=1280)
    assert layout == plan.Layout("compact", 4096, 512, 256, plan.RERANK)
    assert plan.choose("compact", 1_000_000, dim=128).pca == 0
    assert plan.choose("compact", plan.COMPACT_MIN - 1, dim=1280) == plan.FLAT
    assert plan.choose("auto", 1_000_000, dim=1280) == layout
    assert plan.choose("ivf", 1_000_000, dim=1280).type == "ivf"


def test_compact_with_a_projection_reopens_without_a_rebuild(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dim = plan.PCA_DIMS + 44
    vectors = clustered_rows(2000, dim, centres=20, seed=2)[0]
    with IndexStore.create(root, dim, MODEL, index_type="compact") as store:
        ids = store.add(vectors, ["a"] * 2000, [str(i) for i in range(2000)], ["s"] * 2000)
        assert store.layout.pca == plan.PCA_DIMS
    caplog.set_level(logging.INFO, logger="index")
    with IndexStore.open(root) as store:
        assert store.layout == plan.choose("compact", 2000, dim=dim)
        found = [row[0].id for row in store.search(vectors[:50], 1)]
    assert "rebuilt" not in caplog.text, caplog.text
    assert found == ids[:50].tolist()
    assert check_index(root).ok


def test_compact_keeps_every_dimension_when_a_projection_would_lose_too_much(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Isotropic vectors (as a whitened head gives): 256 of 512 axes keep about half their
    variance, so the codes are of whole vectors; the layout stays as built when reopened."""
    dim, n = 2 * plan.PCA_DIMS, 8000  # 5,120 training rows: enough to see the spectrum flat
    vectors = unit_rows(n, dim, seed=4)
    with IndexStore.create(root, dim, MODEL, index_type="compact") as store:
        ids = store.add(vectors, ["a"] * n, [str(i) for i in range(n)], ["s"] * n)
        assert store.layout.type == "compact" and store.layout.pca == 0
    caplog.set_level(logging.INFO, logger="index")
    with IndexStore.open(root) as store:
        assert store.layout.pca == 0
        found = [row[0].id for row in store.search(vectors[:50], 1)]
    assert "rebuilt" not in caplog.text, caplog.text
    assert found == ids[:50].tolist()


def test_layouts_have_hysteresis() -> None:
    big = plan.choose("auto", 2 * plan.AUTO_COMPACT_ABOVE, dim=1280)
    assert big.type == "compact"
    assert plan.choose("auto", plan.AUTO_COMPACT_ABOVE - 1, big, 1280) == big
    assert plan.choose("auto", plan.AUTO_COMPACT_ABOVE // 2 - 1, big, 1280) == plan.FLAT
    assert plan.choose("compact", 3 * plan.AUTO_COMPACT_ABOVE, big, 1280) == big
    assert plan.choose("compact", 20 * plan.AUTO_COMPACT_ABOVE, big, 1280).nlist > big.nlist
    ivf = plan.choose("ivf", 300_000)
    assert plan.choose("ivf", 500_000, ivf) == ivf
    assert plan.choose("ivf", 2_000_000, ivf).nlist > ivf.nlist


@pytest.mark.parametrize("index_type", TYPES)
def test_add_remove_search_reopen(root: Path, index_type: str) -> None:
    ids, vectors, labels = _filled(root, index_type)
    gone_label = labels[0]
    with IndexStore.open(root) as store:
        assert store.remove_ids(ids[10:20]) == 10
        assert len(store.remove_label(gone_label)) == labels.count(gone_label) - sum(
            1 for i in range(10, 20) if labels[i] == gone_label
        )
        assert len(store.remove_path(f"/gallery/{labels[5]}/5.jpg")) == int(labels[5] != gone_label)
        gone = {int(i) for i, lab in zip(ids, labels, strict=True) if lab == gone_label}
        gone |= {int(i) for i in ids[10:20]} | {int(ids[5])}
        kept = np.array([i not in gone for i in ids.tolist()])
        assert len(store) == kept.sum()
        assert store.layout.type == index_type
        assert not gone & {i for row in _hit_ids(store, vectors[~kept], 50) for i in row}
        top = [row[0] for row in _hit_ids(store, vectors[kept][:200], 1)]
        assert top == ids[kept][:200].tolist()
        layout = store.layout
    with IndexStore.open(root) as store:
        assert store.layout == layout
        assert len(store) == kept.sum()
        assert not gone & {i for row in _hit_ids(store, vectors[~kept], 50) for i in row}
        more = add_items(store, vectors[:3], labels[:3], start=N)
        assert more.min() > ids.max()
        assert _hit_ids(store, vectors[:1], 1) == [[more[0]]]
    assert cache_is_current(root)
    assert check_index(root).ok


@pytest.mark.parametrize("index_type", TYPES)
def test_repair_rebuilds_the_same_type(root: Path, index_type: str) -> None:
    ids, vectors, _ = _filled(root, index_type)
    queries = clustered_rows(50, seed=9)[0]
    with IndexStore.open(root) as store:
        before = _hit_ids(store, queries, 10)
        layout = store.layout
    (root / "vectors.faiss").unlink()
    report = check_index(root)
    assert report.ok and any("missing" in note for note in report.notes)
    assert repair_index(root) == [
        f"rebuilt vectors.faiss and vectors.faiss.json from the {N} records"
    ]
    report = check_index(root)
    assert report.ok and not report.notes
    with IndexStore.open(root) as store:
        assert store.layout == layout
        assert store.layout.type == index_type
        assert _hit_ids(store, queries, 10) == before


def test_check_finds_an_ivf_file_missing_records(root: Path) -> None:
    ids, vectors, _ = _filled(root, "ivf")
    partial = backend.build_index(plan.choose("ivf", N), ids[1:], vectors[1:])
    FaissCache(root).write(
        partial, json.loads((root / "vectors.faiss.json").read_text())["generation"]
    )
    report = check_index(root)
    assert not report.ok
    assert any(f"{N - 1} vectors, the records {N} items" in p for p in report.problems)


def test_ivf_recall_against_exact(root: Path) -> None:
    data, which = clustered_rows(4200, seed=3)
    vectors, queries = data[:4000], data[4000:]
    with IndexStore.create(root, DIM, MODEL, index_type="ivf") as store:
        ids = add_items(store, vectors, _labels(which[:4000]))
        assert store.layout.nprobe < store.layout.nlist
        assert _recall_at_10(store, ids, vectors, queries) >= 0.9


def test_ivf_search_strips_padding(root: Path) -> None:
    ids, vectors, _ = _filled(root, "ivf")
    with IndexStore.open(root) as store:
        rows = store.search(vectors[:5], N)
    known = set(ids.tolist())
    for row in rows:
        assert 0 < len(row) < N
        assert {h.id for h in row} <= known
        scores = [h.score for h in row]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("index_type", ["auto", *TYPES])
def test_manifest_type_round_trips(root: Path, index_type: str) -> None:
    with IndexStore.create(root, DIM, MODEL, index_type=index_type) as store:
        assert store.manifest.index_type == index_type
    assert json.loads((root / "manifest.json").read_text())["index_type"] == index_type
    with IndexStore.open(root) as store:
        assert store.manifest.index_type == index_type


def test_default_type_is_auto(root: Path) -> None:
    with IndexStore.create(root, DIM, MODEL) as store:
        assert store.manifest.index_type == "auto"
        assert store.layout == plan.FLAT


def test_old_manifest_without_type_opens_as_flat(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids, vectors, _ = _filled(root, "ivf")
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["index_type"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    caplog.set_level(logging.INFO, logger="index")
    queries = clustered_rows(20, seed=8)[0]
    with IndexStore.open(root) as store:
        assert "rebuilt" in caplog.text
        assert store.manifest.index_type == "flat"
        assert store.layout == plan.FLAT
        ref_scores, ref_ids = brute_force(ids, vectors, queries, 10)
        assert_matches_reference(store.search(queries, 10), ref_scores, ref_ids)
    assert cache_is_current(root)
    assert backend.layout(backend.read_index(root / "vectors.faiss")) == plan.FLAT


def test_unknown_type_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="hnsw"):
        IndexStore.create(root, DIM, MODEL, index_type="hnsw")
    assert not root.exists()
    IndexStore.create(root, DIM, MODEL).close()
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "index_type": "hnsw"}))
    with pytest.raises(IndexFormatError, match="index_type"):
        IndexStore.open(root)


def test_auto_switches_type_with_the_gallery_size(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan, "AUTO_COMPACT_ABOVE", 1000)
    monkeypatch.setattr(plan, "COMPACT_MIN", 100)
    vectors, which = clustered_rows(1600, seed=4)
    labels = _labels(which)
    with IndexStore.create(root, DIM, MODEL) as store:
        ids = add_items(store, vectors[:900], labels[:900])
        assert store.layout == plan.FLAT
        before = (root / "vectors.faiss.json").read_bytes()
        with store.bulk():
            ids = np.concatenate([ids, add_items(store, vectors[900:], labels[900:], start=900)])
            assert (root / "vectors.faiss.json").read_bytes() == before  # written at the end
        assert store.layout == plan.choose("auto", 1600, dim=DIM)
        assert store.layout.type == "compact"
    assert cache_is_current(root)
    with IndexStore.open(root) as store:
        assert store.layout.type == "compact"
        store.remove_ids(ids[:1000])
        assert store.layout.type == "compact"
        store.remove_ids(ids[1000:1200])
        assert store.layout == plan.FLAT
        assert not {int(i) for i in ids[:1200]} & {
            i for row in _hit_ids(store, vectors[:1200], 20) for i in row
        }
    assert backend.layout(backend.read_index(root / "vectors.faiss")) == plan.FLAT
    assert check_index(root).ok


def test_check_notes_a_cache_of_another_type(root: Path) -> None:
    _filled(root, "ivf")
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "index_type": "flat"}))
    report = check_index(root)
    assert report.ok
    assert any("holds the layout {'type': 'ivf'" in note for note in report.notes)
    repair_index(root)
    assert not check_index(root).notes
    assert backend.layout(backend.read_index(root / "vectors.faiss")) == plan.FLAT
