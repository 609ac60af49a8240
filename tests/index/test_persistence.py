"""Persistence: reopening, the FAISS cache rebuilt when missing, stale or altered, other writers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import pytest

from index import IndexStore, live

from ..helpers import (
    DIM,
    MODEL,
    add_items,
    base_is_current,
    cache_is_current,
    db_generation,
    logged_generations,
    sidecar,
    unit_rows,
)
from .helpers import assert_matches_reference, brute_force

REPO = Path(__file__).resolve().parents[2]


def _check_search(store: IndexStore, ids: np.ndarray, vectors: np.ndarray) -> None:
    queries = unit_rows(6, seed=42)
    ref_scores, ref_ids = brute_force(ids, vectors, queries, 7)
    assert_matches_reference(store.search(queries, 7), ref_scores, ref_ids)


def _rebuilds(caplog: pytest.LogCaptureFixture, rebuilt: bool) -> AbstractContextManager:
    """A context in which the FAISS base must (or must not) be rebuilt from the records."""

    @contextmanager
    def check() -> Iterator[None]:
        caplog.set_level(logging.INFO, logger="index")
        caplog.clear()
        yield
        assert ("rebuilt" in caplog.text) == rebuilt, caplog.text

    return check()


@pytest.fixture
def expect_rebuild(caplog: pytest.LogCaptureFixture) -> Callable[[], AbstractContextManager]:
    """A context in which the FAISS base must be rebuilt from the records."""
    return lambda: _rebuilds(caplog, True)


@pytest.fixture
def expect_no_rebuild(caplog: pytest.LogCaptureFixture) -> Callable[[], AbstractContextManager]:
    """A context in which the FAISS base must be used as it is (caught up from the log)."""
    return lambda: _rebuilds(caplog, False)


def _build(root: Path, n: int = 20, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    vectors = unit_rows(n, seed=seed)
    with IndexStore.create(root, DIM, MODEL) as store:
        ids = add_items(store, vectors, [f"l{i % 4}" for i in range(n)])
    return ids, vectors


def test_round_trip_across_close_and_open(root: Path) -> None:
    vectors = unit_rows(12, seed=1)
    with IndexStore.create(root, DIM, MODEL) as store:
        ids = add_items(store, vectors, ["a", "b", "c"] * 4)
        store.remove_ids(ids[:2])
        manifest = store.manifest
    with IndexStore.open(root) as store:
        assert store.manifest == manifest
        assert len(store) == 10
        assert store.label_counts() == {"a": 3, "b": 3, "c": 4}
        _check_search(store, ids[2:], vectors[2:])
        more = add_items(store, unit_rows(1, seed=2), ["d"], start=12)
        assert more[0] > ids.max()
    assert cache_is_current(root)


def test_open_uses_current_cache_without_rebuilding(root: Path) -> None:
    _build(root)
    stamp = (root / "vectors.faiss").stat().st_mtime_ns
    os.utime(root / "vectors.faiss", ns=(stamp - 10**9, stamp - 10**9))
    with IndexStore.open(root):
        pass
    assert (root / "vectors.faiss").stat().st_mtime_ns == stamp - 10**9


def test_missing_faiss_file_is_rebuilt(root: Path, expect_rebuild) -> None:
    ids, vectors = _build(root)
    (root / "vectors.faiss").unlink()
    with expect_rebuild(), IndexStore.open(root) as store:
        _check_search(store, ids, vectors)
    assert cache_is_current(root)


def test_missing_sidecar_is_rebuilt(root: Path, expect_rebuild) -> None:
    ids, vectors = _build(root)
    (root / "vectors.faiss.json").unlink()
    with expect_rebuild(), IndexStore.open(root) as store:
        _check_search(store, ids, vectors)
    assert cache_is_current(root)


def test_garbage_faiss_file_is_rebuilt(root: Path, expect_rebuild) -> None:
    ids, vectors = _build(root)
    (root / "vectors.faiss").write_bytes(bytes(range(256)) * 16)
    with expect_rebuild(), IndexStore.open(root) as store:
        _check_search(store, ids, vectors)
    assert cache_is_current(root)


def test_garbage_with_matching_sidecar_is_rebuilt(root: Path, expect_rebuild) -> None:
    ids, vectors = _build(root)
    garbage = b"IxM2" + bytes(256)  # an IDMap2 header, then no valid sub-index
    (root / "vectors.faiss").write_bytes(garbage)
    meta = {"generation": db_generation(root), "sha256": hashlib.sha256(garbage).hexdigest()}
    (root / "vectors.faiss.json").write_text(json.dumps(meta))
    with expect_rebuild(), IndexStore.open(root) as store:
        _check_search(store, ids, vectors)
    assert cache_is_current(root)


def test_garbage_sidecar_is_rebuilt(root: Path, expect_rebuild) -> None:
    ids, vectors = _build(root)
    (root / "vectors.faiss.json").write_text("{not json")
    with expect_rebuild(), IndexStore.open(root) as store:
        _check_search(store, ids, vectors)
    assert cache_is_current(root)


def test_writes_change_no_faiss_file_but_log_the_change(root: Path, expect_no_rebuild) -> None:
    vectors = unit_rows(13, seed=1)
    with IndexStore.create(root, DIM, MODEL) as store:
        before = (root / "vectors.faiss").read_bytes(), sidecar(root)
        first = add_items(store, vectors[:10], ["a"] * 10)
        second = add_items(store, vectors[10:], ["b"] * 3, start=10)
        store.remove_ids(first[:3])
        assert ((root / "vectors.faiss").read_bytes(), sidecar(root)) == before
    assert sidecar(root)["generation"] < db_generation(root)
    assert logged_generations(root, sidecar(root)["generation"]) == {1, 2, 3}
    assert cache_is_current(root) and not base_is_current(root)
    with expect_no_rebuild(), IndexStore.open(root) as store:
        assert len(store) == 10
        _check_search(store, np.concatenate([first[3:], second]), vectors[3:])


def test_base_is_merged_when_the_changes_pass_a_share(
    root: Path, monkeypatch: pytest.MonkeyPatch, expect_no_rebuild
) -> None:
    monkeypatch.setattr(live, "MERGE_AT_LEAST", 4)
    vectors = unit_rows(12, seed=1)
    with IndexStore.create(root, DIM, MODEL) as store:
        ids = add_items(store, vectors[:4], ["a"] * 4)
        assert sidecar(root)["generation"] == 0
        more = add_items(store, vectors[4:], ["b"] * 8, start=4)
        assert base_is_current(root)
        assert logged_generations(root, -1) == set()  # the merged log is dropped
        store.remove_ids(more[:2])
        assert sidecar(root)["generation"] == db_generation(root) - 1
    with expect_no_rebuild(), IndexStore.open(root) as store:
        _check_search(
            store, np.concatenate([ids, more[2:]]), np.concatenate([vectors[:4], vectors[6:]])
        )


@pytest.mark.parametrize("added", [3, 10])
def test_older_base_is_caught_up_from_the_log(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect_no_rebuild, added: int
) -> None:
    """An intact but old base whose log is whole (with ``added == 3`` it even holds as many
    vectors as the records, only older ones) is caught up, not rebuilt."""
    monkeypatch.setattr(live, "MERGE_AT_LEAST", 9)
    vectors = unit_rows(10 + added, seed=1)
    with IndexStore.create(root, DIM, MODEL) as store:
        first = add_items(store, vectors[:10], ["a"] * 10)
        assert base_is_current(root)
        second = add_items(store, vectors[10:], ["b"] * added, start=10)
        store.remove_ids(first[:3])
    assert sidecar(root)["generation"] < db_generation(root)
    with expect_no_rebuild(), IndexStore.open(root) as store:
        assert len(store) == 7 + added
        ids = np.concatenate([first[3:], second])
        _check_search(store, ids, vectors[3:])
    assert cache_is_current(root)


def test_older_base_without_its_log_is_rebuilt(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect_rebuild
) -> None:
    """A base older than the log reaches back to (a merge dropped the rows after it) is
    rebuilt from the records."""
    monkeypatch.setattr(live, "MERGE_AT_LEAST", 4)
    vectors = unit_rows(16, seed=1)
    with IndexStore.create(root, DIM, MODEL) as store:
        first = add_items(store, vectors[:5], ["a"] * 5)
        shutil.copy(root / "vectors.faiss", tmp_path / "old.faiss")
        shutil.copy(root / "vectors.faiss.json", tmp_path / "old.json")
        second = add_items(store, vectors[5:], ["b"] * 11, start=5)
        store.remove_ids(first[:1])
    shutil.copy(tmp_path / "old.faiss", root / "vectors.faiss")
    shutil.copy(tmp_path / "old.json", root / "vectors.faiss.json")
    with expect_rebuild(), IndexStore.open(root) as store:
        _check_search(store, np.concatenate([first[1:], second]), vectors[1:])
    assert base_is_current(root)


def test_faiss_file_of_another_sidecar_is_rebuilt(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect_rebuild
) -> None:
    """As after a crash between writing the FAISS file and its sidecar: the sidecar names
    another file (its token), so the file is not used even though it is intact."""
    monkeypatch.setattr(live, "MERGE_AT_LEAST", 4)
    vectors = unit_rows(11, seed=1)
    with IndexStore.create(root, DIM, MODEL) as store:
        first = add_items(store, vectors[:5], ["a"] * 5)
        shutil.copy(root / "vectors.faiss", tmp_path / "old.faiss")
        store.remove_ids(first[:1])
        add_items(store, vectors[5:], ["b"] * 6, start=5)
        ids, current = store.vectors()
    shutil.copy(tmp_path / "old.faiss", root / "vectors.faiss")
    with expect_rebuild(), IndexStore.open(root) as store:
        assert len(store) == 10
        _check_search(store, ids, current)
    assert base_is_current(root)


def test_damaged_codes_cost_recall_not_truth(root: Path) -> None:
    """Damage in the part of the FAISS file that is mapped, not parsed (the vectors), is not
    seen at open (``retrieve check`` finds it); the scores a search gives are still those of
    the records' vectors."""
    ids, vectors = _build(root)
    with IndexStore.open(root) as store:
        store.rebuild_cache()
    meta = sidecar(root)
    offset, length = meta["payload"]
    assert length == len(ids) * DIM * 4
    data = bytearray((root / "vectors.faiss").read_bytes())
    data[offset : offset + length] = bytes(length)
    (root / "vectors.faiss").write_bytes(bytes(data))
    with IndexStore.open(root) as store:
        queries = unit_rows(3, seed=5)
        for row, query in zip(store.search(queries, 5), queries, strict=True):
            for hit in row:
                np.testing.assert_allclose(hit.score, vectors[hit.id - 1] @ query, atol=1e-6)


def test_second_instance_sees_writes(root: Path) -> None:
    vectors = unit_rows(20, seed=1)
    with IndexStore.create(root, DIM, MODEL) as a, IndexStore.open(root) as b:
        ids_a = add_items(a, vectors[:10], ["a"] * 10)
        assert len(b) == 10
        _check_search(b, ids_a, vectors[:10])
        ids_b = add_items(b, vectors[10:], ["b"] * 10, start=10)
        assert ids_b.min() > ids_a.max()
        all_ids = np.concatenate([ids_a, ids_b])
        _check_search(a, all_ids, vectors)
        assert len(b.remove_label("a")) == 10
        _check_search(a, ids_b, vectors[10:])
        # a writes while behind b: it must reload rather than patch its stale copy
        assert b.remove_ids(ids_b[:2]) == 2
        more = add_items(a, unit_rows(2, seed=3), ["c"] * 2, start=20)
        ids, vecs = a.vectors()
        np.testing.assert_array_equal(ids, np.concatenate([ids_b[2:], more]))
        _check_search(a, ids, vecs)
        _check_search(b, ids, vecs)
    assert cache_is_current(root)


def test_writes_survive_exit_without_close(root: Path) -> None:
    _build(root, n=5)
    script = textwrap.dedent(
        f"""
        import os
        import numpy as np
        from index import IndexStore
        x = np.zeros((2, {DIM}), np.float32)
        x[0, 0] = 1.0
        x[1, 1] = 1.0
        s = IndexStore.open({str(root)!r})
        s.add(x, ["late", "late"], ["/l/0.jpg", "/l/1.jpg"], ["s0", "s1"])
        s.remove_label("l0")
        os._exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, env=env, timeout=60)
    with IndexStore.open(root) as store:
        assert store.label_counts() == {"l1": 1, "l2": 1, "l3": 1, "late": 2}
        ids, vecs = store.vectors()
        _check_search(store, ids, vecs)
