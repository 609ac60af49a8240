"""IndexStore operations: add, search against a brute-force reference, remove, lookups."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from index import FORMAT_VERSION, IndexStore, IndexStoreError, Item, exchange
from index import cache as cache_module

from ..helpers import DIM, MODEL, add_items, fake_sha, unit_rows
from .helpers import assert_matches_reference, brute_force


def test_create_writes_manifest(store: IndexStore, root: Path) -> None:
    m = store.manifest
    assert m.format_version == FORMAT_VERSION == 1
    assert m.dim == store.dim == DIM
    assert m.metric == "inner_product"
    assert m.model == store.model == MODEL
    assert datetime.fromisoformat(m.created).tzinfo is not None
    assert store.path == root
    assert len(store) == 0
    assert IndexStore.is_index(root)
    assert {p.name for p in root.iterdir()} >= {
        "manifest.json",
        "records.sqlite",
        "vectors.faiss",
        "vectors.faiss.json",
    }


def test_model_is_a_copy(store: IndexStore) -> None:
    store.model["name"] = "changed"
    assert store.model == MODEL


def test_add_returns_increasing_ids(store: IndexStore) -> None:
    first = add_items(store, unit_rows(5, seed=1), ["a"] * 5)
    second = add_items(store, unit_rows(3, seed=2), ["b"] * 3, start=5)
    assert first.dtype == np.int64 and second.dtype == np.int64
    both = np.concatenate([first, second])
    assert np.all(np.diff(both) > 0)
    assert len(store) == 8


def test_ids_never_reused_after_remove(store: IndexStore) -> None:
    ids = add_items(store, unit_rows(5, seed=1), ["a"] * 5)
    assert store.remove_ids(ids[-2:]) == 2
    assert len(store.remove_label("a")) == 3
    assert len(store) == 0
    new = add_items(store, unit_rows(2, seed=2), ["b"] * 2, start=5)
    assert new.min() > ids.max()


def test_empty_add_changes_nothing(filled, root: Path) -> None:
    store, ids, _, _ = filled
    before = (root / "vectors.faiss.json").read_bytes()
    out = store.add(np.zeros((0, DIM), np.float32), [], [], [])
    assert out.dtype == np.int64 and out.shape == (0,)
    assert len(store) == len(ids)
    assert (root / "vectors.faiss.json").read_bytes() == before


def test_search_matches_brute_force(filled) -> None:
    store, ids, vectors, _ = filled
    queries = unit_rows(7, seed=99)
    hits = store.search(queries, 5)
    ref_scores, ref_ids = brute_force(ids, vectors, queries, 5)
    assert_matches_reference(hits, ref_scores, ref_ids)


def test_search_hits_carry_label_and_path(filled) -> None:
    store, ids, vectors, labels = filled
    hits = store.search(vectors[:3], 1)
    for j, row in enumerate(hits):
        (hit,) = row
        assert hit.id == ids[j]
        assert hit.score == pytest.approx(1.0, abs=1e-5)
        assert hit.label == labels[j]
        assert hit.path == f"/gallery/{labels[j]}/{j}.jpg"


def test_search_with_ties_is_tie_tolerant(store: IndexStore) -> None:
    base = unit_rows(6, seed=3)
    gallery = np.concatenate([base, base[:3]])  # three exact duplicates: tied scores
    ids = add_items(store, gallery, ["x"] * len(gallery))
    queries = unit_rows(4, seed=4)
    ref_scores, ref_ids = brute_force(ids, gallery, queries, len(gallery))
    assert_matches_reference(store.search(queries, len(gallery)), ref_scores, ref_ids)


def test_search_scores_descend_and_k_larger_than_len(filled) -> None:
    store, ids, _, _ = filled
    hits = store.search(unit_rows(3, seed=5), 1000)
    for row in hits:
        assert len(row) == len(ids)
        assert all(h.id >= 0 for h in row)
        scores = [h.score for h in row]
        assert scores == sorted(scores, reverse=True)
        assert sorted(h.id for h in row) == sorted(ids.tolist())


def test_search_empty_index(store: IndexStore) -> None:
    assert store.search(unit_rows(3, seed=1), 5) == [[], [], []]


def test_search_no_queries(filled) -> None:
    store, _, _, _ = filled
    assert store.search(np.zeros((0, DIM), np.float32), 5) == []


@pytest.mark.parametrize("k", [0, -1])
def test_search_k_below_one(filled, k: int) -> None:
    store, _, _, _ = filled
    with pytest.raises(ValueError, match="k must be at least 1"):
        store.search(unit_rows(1), k)


def test_search_accepts_float64_queries(filled) -> None:
    store, ids, vectors, _ = filled
    hits = store.search(vectors[:2].astype(np.float64), 1)
    assert [row[0].id for row in hits] == ids[:2].tolist()


def test_remove_ids_counts_only_existing(filled) -> None:
    store, ids, _, _ = filled
    assert store.remove_ids([ids[0], ids[1], 10_000]) == 2
    assert store.remove_ids([ids[0]]) == 0
    assert store.remove_ids([]) == 0
    assert len(store) == len(ids) - 2
    found = {h.id for row in store.search(unit_rows(5, seed=6), 100) for h in row}
    assert found == set(ids[2:].tolist())


def test_remove_ids_rejects_non_integers(filled) -> None:
    store, _, _, _ = filled
    with pytest.raises(TypeError):
        store.remove_ids([1.5, 2.0])


def test_remove_label(filled) -> None:
    store, ids, vectors, labels = filled
    assert len(store.remove_label("amsel")) == 10
    assert len(store.remove_label("amsel")) == 0
    assert len(store.remove_label("no such label")) == 0
    assert store.label_counts() == {"buchfink": 10, "kohlmeise": 10}
    keep = np.array([lab != "amsel" for lab in labels])
    queries = unit_rows(5, seed=7)
    ref_scores, ref_ids = brute_force(ids[keep], vectors[keep], queries, 8)
    assert_matches_reference(store.search(queries, 8), ref_scores, ref_ids)


def test_remove_path(filled) -> None:
    store, ids, _, labels = filled
    path = f"/gallery/{labels[4]}/4.jpg"
    assert len(store.remove_path(path)) == 1
    assert len(store.remove_path(path)) == 0
    assert ids[4] not in {it.id for it in store.items()}
    assert len(store) == len(ids) - 1


def test_remove_path_removes_every_item_with_that_path(store: IndexStore) -> None:
    vectors = unit_rows(3, seed=8)
    store.add(vectors, ["a", "b", "a"], ["/p/1.jpg", "/p/1.jpg", "/p/2.jpg"], ["s1", "s2", "s3"])
    assert len(store.remove_path("/p/1.jpg")) == 2
    assert [it.path for it in store.items()] == ["/p/2.jpg"]


def test_remove_nothing_writes_nothing(filled, root: Path) -> None:
    store, _, _, _ = filled
    before = (root / "vectors.faiss.json").read_bytes()
    assert len(store.remove_label("nope")) == 0
    assert len(store.remove_path("/nope")) == 0
    assert store.remove_ids([999_999]) == 0
    assert (root / "vectors.faiss.json").read_bytes() == before


def test_label_counts_sorted(store: IndexStore) -> None:
    add_items(store, unit_rows(6, seed=9), ["zeisig", "amsel", "zeisig", "Bussard", "amsel", "ä"])
    counts = store.label_counts()
    assert counts == {"Bussard": 1, "amsel": 2, "zeisig": 2, "ä": 1}
    assert list(counts) == sorted(counts)


def test_find_sha256(filled) -> None:
    store, ids, _, labels = filled
    found = store.find_sha256([fake_sha(3), fake_sha(7), "0" * 64])
    assert set(found) == {fake_sha(3), fake_sha(7)}
    item = found[fake_sha(3)]
    assert isinstance(item, Item)
    assert (item.id, item.label, item.path, item.sha256) == (
        ids[3],
        labels[3],
        f"/gallery/{labels[3]}/3.jpg",
        fake_sha(3),
    )
    assert datetime.fromisoformat(item.added_at).tzinfo is not None
    assert store.find_sha256([]) == {}
    assert store.find_sha256(iter([fake_sha(0)]))[fake_sha(0)].id == ids[0]


def test_find_sha256_prefers_the_oldest_item(store: IndexStore) -> None:
    vectors = unit_rows(2, seed=10)
    ids = store.add(vectors, ["a", "b"], ["/1.jpg", "/2.jpg"], ["same", "same"])
    assert store.find_sha256(["same"])["same"].id == ids[0]


def test_items(filled) -> None:
    store, ids, _, labels = filled
    items = store.items()
    assert [it.id for it in items] == ids.tolist()
    assert [it.label for it in items] == labels
    picked = store.items([ids[5], ids[2], 123_456])
    assert [it.id for it in picked] == [ids[5], ids[2]]
    assert store.items([]) == []


def test_vectors_round_trip(filled) -> None:
    store, ids, vectors, _ = filled
    got_ids, got = store.vectors()
    assert got_ids.dtype == np.int64 and got.dtype == np.float32
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, vectors)


def test_vectors_of_empty_index(store: IndexStore) -> None:
    ids, vectors = store.vectors()
    assert ids.shape == (0,) and vectors.shape == (0, DIM)


def test_unicode_labels_and_paths(tmp_path: Path) -> None:
    root = tmp_path / "índice-索引"
    labels = ["Turdus merula — 黒鶫", "Erithacus rubecula 🐦", "ümlaut"]
    paths = ["/Bilder/Vögel/amsel 1.jpg", "C:\\写真\\鳥.png", "/ü/ß/\u00e9\u0301.jpg"]
    vectors = unit_rows(3, seed=11)
    with IndexStore.create(root, DIM, {"name": "模型"}) as store:
        ids = store.add(vectors, labels, paths, ["a", "b", "c"])
    with IndexStore.open(root) as store:
        assert store.model == {"name": "模型"}
        assert [(it.label, it.path) for it in store.items()] == list(
            zip(labels, paths, strict=True)
        )
        assert store.label_counts() == dict(sorted((lab, 1) for lab in labels))
        hits = store.search(vectors, 1)
        assert [(row[0].id, row[0].label, row[0].path) for row in hits] == list(
            zip(ids.tolist(), labels, paths, strict=True)
        )
        assert len(store.remove_label(labels[0])) == 1
        assert len(store.remove_path(paths[1])) == 1
        assert len(store) == 1


def test_closed_store_refuses_use(root: Path) -> None:
    store = IndexStore.create(root, DIM, MODEL)
    store.close()
    store.close()
    with pytest.raises(IndexStoreError, match="closed"):
        len(store)
    with pytest.raises(IndexStoreError, match="closed"):
        store.search(unit_rows(1), 1)


def test_context_manager_closes(root: Path) -> None:
    with IndexStore.create(root, DIM, MODEL) as store:
        pass
    with pytest.raises(IndexStoreError):
        store.label_counts()


def test_one_store_shared_by_threads(store: IndexStore) -> None:
    """Threads search one store while another adds and removes through it: every search
    succeeds, and each hit is an item with its own vector's score (never a half-applied write)."""
    vectors = unit_rows(400, seed=7)
    add_items(store, vectors[:100], ["base"] * 100)
    queries = unit_rows(8, seed=8)
    errors: list[BaseException] = []
    searches = [0]
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                for row, q in zip(store.search(queries, 5), queries, strict=True):
                    assert len(row) == 5
                    for hit in row:
                        assert hit.label in {"base", "new"}
                        own = vectors[int(Path(hit.path).stem)]
                        assert abs(hit.score - float(own @ q)) < 1e-5
                searches[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for start in range(100, 400, 30):
            with store.writing():
                assert not store.find_sha256([fake_sha(start)])
                add_items(store, vectors[start : start + 30], ["new"] * 30, start=start)
            assert len(store.remove_path(f"/gallery/new/{start}.jpg")) == 1
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]
    assert searches[0] > 0
    assert len(store) == 400 - 10


def test_create_writes_its_files_before_the_manifest(root: Path, monkeypatch) -> None:
    import index.store as store_module

    seen = []
    write = store_module.write_manifest

    def observed(path, manifest):
        seen.append((root / "net.bin").read_bytes())
        write(path, manifest)

    monkeypatch.setattr(store_module, "write_manifest", observed)
    with IndexStore.create(root, DIM, MODEL, files={"net.bin": b"weights"}):
        pass
    assert seen == [b"weights"]
    assert (root / "net.bin").read_bytes() == b"weights"


def test_create_over_an_interrupted_create_with_files(root: Path) -> None:
    """A create killed after writing its files, before its manifest: the same files make them
    its own (replaced); without them the folder is not an index and is refused."""
    root.mkdir()
    (root / "net.bin").write_bytes(b"half")
    (root / ".net.bin.0123456789abcdef.tmp").write_bytes(b"ha")
    with pytest.raises(IndexStoreError, match="is not an index"):
        IndexStore.create(root, DIM, MODEL, overwrite=True)
    with IndexStore.create(root, DIM, MODEL, overwrite=True, files={"net.bin": b"whole"}):
        pass
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
    assert (root / "net.bin").read_bytes() == b"whole"
    with IndexStore.open(root) as store:
        assert len(store) == 0


@pytest.mark.parametrize(
    "name", ["manifest.json", "records.sqlite", ".lock", "sub/net.bin", "", ".."]
)
def test_create_refuses_files_an_index_owns_or_outside_it(root: Path, name: str) -> None:
    with pytest.raises(ValueError, match="cannot be a file beside an index"):
        IndexStore.create(root, DIM, MODEL, files={name: b"x"})
    assert not (root / "manifest.json").exists()


def test_notes_are_kept_beside_the_records_without_changing_them(store: IndexStore) -> None:
    assert store.note("open_set") is None
    generation_items = (len(store), store.items())
    store.set_note("open_set", {"threshold": 0.5, "labels": ["a"]})
    store.set_note("other", [1, 2])
    assert (len(store), store.items()) == generation_items
    with IndexStore.open(store.path) as again:
        assert again.note("open_set") == {"threshold": 0.5, "labels": ["a"]}
        assert again.note("other") == [1, 2]
    store.set_note("open_set", None)
    assert store.note("open_set") is None
    with pytest.raises(ValueError):
        store.set_note("generation", 3)
    with pytest.raises(ValueError):
        store.set_note("x", float("nan"))


def test_find_and_vectors_of_some_items(filled) -> None:
    store, _, added, labels = filled
    amsel = store.find(label="amsel")
    assert len(amsel) == labels.count("amsel")
    assert amsel and all(i.label == "amsel" for i in amsel)
    ids, vectors = store.vectors([amsel[1].id, amsel[0].id, 10**9])
    assert ids.tolist() == [amsel[0].id, amsel[1].id]
    all_ids, all_vectors = store.vectors()
    assert np.array_equal(vectors, all_vectors[np.isin(all_ids, ids)])
    assert np.allclose(all_vectors, added)
    items, rows = store.labelled_vectors()
    assert [i.id for i in items] == all_ids.tolist() and np.array_equal(rows, all_vectors)
    (one,) = store.find(path=amsel[0].path)
    assert one == amsel[0]
    before = store.generation
    store.remove_ids([one.id])
    assert store.generation == before + 1 and store.find(path=one.path) == []


def test_temp_files_of_state_kept_beside_the_index_go_with_the_next_writer(store: IndexStore):
    """A writer killed while replacing a file its users keep beside the index (the open-set
    state, say) leaves `.NAME.RANDOM.tmp`: the next writer removes it, and leaves the rest."""
    left = store.path / ".openset.npz.k1ll3d.tmp"
    left.write_bytes(b"half a file")
    kept = store.path / "openset.npz"
    kept.write_bytes(b"state")
    with store.writing():
        pass
    assert not left.exists() and kept.read_bytes() == b"state"


def test_a_folder_swapped_in_while_the_base_is_read_is_not_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build-index --force swaps another index into the folder after a reader checked that the
    folder is still its own and before it read the FAISS base (both bases of the same
    generation): the reader searches its own records, never the other index's base."""
    root, other = tmp_path / "idx", tmp_path / "other"
    for folder, label, seed in ((root, "mine", 1), (other, "theirs", 2)):
        with IndexStore.create(folder, DIM, MODEL) as s:
            add_items(s, unit_rows(30, seed=seed), [label] * 30)
            s.rebuild_cache()  # a base holding the 30 vectors, at the same generation in both
    mine = unit_rows(30, seed=1)
    read = cache_module.FaissCache.read
    swaps = []

    def swap_then_read(self: cache_module.FaissCache, dim: int):
        if not swaps:
            exchange(other, root)
            swaps.append(True)
        return read(self, dim)

    monkeypatch.setattr(cache_module.FaissCache, "read", swap_then_read)
    with IndexStore.open(root, lazy=True) as store:
        hits = store.search(mine[:4], 3)
    assert swaps
    assert [[h.label for h in row] for row in hits] == [["mine"] * 3] * 4
    assert [row[0].score for row in hits] == pytest.approx([1.0] * 4, abs=1e-5)
