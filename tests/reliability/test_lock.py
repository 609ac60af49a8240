"""The writer lock: writers wait for it or give up clearly, readers never take it, a killed or
forked holder never keeps it, and searches see one consistent state while others write."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index import Hit, IndexLockedError, IndexStore, IndexStoreError, build_faiss, live
from index.fsutil import exchange
from index.lock import writer_lock

from ..helpers import DIM, MODEL, add_items, base_is_current, cache_is_current, unit_rows
from .helpers import hold_lock, python


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "idx"
    with IndexStore.create(root, DIM, MODEL) as store:
        add_items(store, unit_rows(20, seed=1), [f"l{i % 4}" for i in range(20)])
    return root


def test_lock_file_is_created_in_the_index(root: Path) -> None:
    assert (root / ".lock").is_file()
    assert int((root / ".lock").read_text()) == os.getpid()


def test_writer_waits_for_the_lock(root: Path) -> None:
    holder = hold_lock(root, 1.5)
    start = time.monotonic()
    with IndexStore.open(root) as store:
        add_items(store, unit_rows(1, seed=2), ["late"], start=100)
        waited = time.monotonic() - start
        assert len(store) == 21
    assert holder.wait(timeout=30) == 0
    assert waited > 1.0, f"the add did not wait for the lock ({waited:.2f} s)"


def test_writer_gives_up_with_a_clear_error(root: Path) -> None:
    holder = hold_lock(root, 30)
    try:
        with IndexStore.open(root, lock_timeout=0.3) as store:
            before = store.label_counts()
            with pytest.raises(IndexLockedError) as err:
                store.remove_label("l0")
            with pytest.raises(IndexLockedError):
                add_items(store, unit_rows(1, seed=2), ["late"], start=100)
            assert store.label_counts() == before
        message = str(err.value)
        assert str(root) in message and f"pid {holder.pid}" in message
    finally:
        holder.kill()
        holder.wait()


def test_readers_never_take_a_held_lock(root: Path) -> None:
    (root / "vectors.faiss").unlink()  # a stale cache: readers rebuild it in memory
    holder = hold_lock(root, 30)
    try:
        with IndexStore.open(root, lock_timeout=0) as store:
            assert len(store) == 20
            hits = store.search(unit_rows(3, seed=5), 4)
            assert [len(row) for row in hits] == [4, 4, 4]
        assert not (root / "vectors.faiss").exists(), "a reader wrote while a writer held the lock"
    finally:
        holder.kill()
        holder.wait()
    with IndexStore.open(root, lock_timeout=0):
        pass
    assert cache_is_current(root)


def test_killed_holder_leaves_the_lock_free(root: Path) -> None:
    holder = hold_lock(root, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with IndexStore.open(root, lock_timeout=1) as store:
        assert len(store.remove_label("l0")) == 5


def test_forked_children_do_not_keep_the_lock(root: Path) -> None:
    lock = writer_lock(root)
    assert lock.acquire(timeout=1)
    fork = multiprocessing.get_context("fork")
    done = fork.Event()
    child = fork.Process(target=done.wait, args=(60,))  # alive until the test ends
    child.start()
    lock.release()
    try:
        probe = python(
            """
            import fcntl, os, sys
            fd = os.open(sys.argv[1], os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            """,
            root / ".lock",
        )
        assert probe.wait(timeout=30) == 0, "the forked child still holds the writer lock"
        assert child.is_alive()
    finally:
        done.set()
        child.join()


def test_nested_writes_through_two_stores_do_not_deadlock(root: Path) -> None:
    with IndexStore.open(root, lock_timeout=1) as a, IndexStore.open(root, lock_timeout=1) as b:
        with a.writing():
            add_items(b, unit_rows(2, seed=3), ["x", "x"], start=50)
            assert len(a.remove_label("x")) == 2
        assert len(a) == len(b) == 20


CHURN = """
    import sys, time
    import numpy as np
    from index import IndexStore
    rng = np.random.default_rng(0)
    end = time.monotonic() + float(sys.argv[2])
    n = 0
    with IndexStore.open(sys.argv[1]) as store:
        print("started", flush=True)
        while time.monotonic() < end:
            x = rng.normal(size=(50, store.dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            ids = store.add(x, ["churn"] * 50, [f"/c/{n + i}.jpg" for i in range(50)],
                            [f"c{n + i}" for i in range(50)])
            n += 50
            store.remove_ids(ids)
    print(n, flush=True)
"""


def test_search_sees_one_state_while_another_process_writes(root: Path) -> None:
    """Items another process adds and removes at once never make a search fail or come back
    short: the FAISS index and the labels are read from the same committed state."""
    k = 30  # more than the 20 items that stay, so every answer reaches into the churned ones
    writer = python(CHURN, root, 4)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "started"
    searches = 0
    with IndexStore.open(root) as store:
        queries = unit_rows(8, seed=9)
        while writer.poll() is None:
            for row in store.search(queries, k):
                assert len(row) in (20, k), len(row)
                scores = [h.score for h in row]
                assert scores == sorted(scores, reverse=True)
                assert len({h.id for h in row}) == len(row)
                for h in row:
                    assert (h.label == "churn") == h.path.startswith("/c/")
            searches += 1
    assert writer.wait() == 0
    assert searches >= 10


def test_a_reader_never_writes_an_older_cache_over_a_newer_one(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader rebuilds an unusable base from its snapshot; a writer commits and rewrites the
    base while that rebuild runs: the reader's older copy must not replace the writer's (whose
    merge dropped the log the older one would need). The reader is held inside its rebuild (in
    its FAISS builder, which gets the snapshot) until the writer has committed."""
    with IndexStore.open(root) as writer, IndexStore.open(root, lazy=True) as reader:
        (root / "vectors.faiss.json").unlink()  # as if a merge had been killed before its sidecar
        in_rebuild, committed = threading.Event(), threading.Event()

        def held_build(layout: Any, ids: np.ndarray, vectors: np.ndarray) -> Any:
            in_rebuild.set()
            assert committed.wait(timeout=30)
            return build_faiss(layout, ids, vectors)

        reader._builder = held_build
        hits: list[list[Hit]] = []
        searching = threading.Thread(
            target=lambda: hits.extend(reader.search(unit_rows(1, seed=5), 3))
        )
        searching.start()
        try:
            assert in_rebuild.wait(timeout=30)  # the reader's snapshot holds 20 items
            monkeypatch.setattr(live, "MERGE_AT_MOST", 0)  # the writer's next write merges
            add_items(writer, unit_rows(1, seed=3), ["c"], start=20)
        finally:
            committed.set()
            searching.join()
    assert [len(row) for row in hits] == [3]
    assert base_is_current(root)


def test_a_store_whose_folder_is_swapped_keeps_to_its_own_records(tmp_path: Path) -> None:
    """build-index --force swaps another index into the folder of an open store: that store
    must neither read the newcomer's cache as its own nor write its cache over it, even when
    generation and size match."""
    root, other = tmp_path / "idx", tmp_path / "other"
    mine, theirs = unit_rows(21, seed=1), unit_rows(21, seed=2)
    for folder, vectors, label in ((root, mine, "mine"), (other, theirs, "theirs")):
        with IndexStore.create(folder, DIM, MODEL) as store:
            add_items(store, vectors[:20], [label] * 20)
    with IndexStore.open(root) as reader, IndexStore.open(root) as writer:
        add_items(writer, mine[20:], ["mine"], start=20)  # the reader is now one write behind
        with IndexStore.open(other) as store:
            add_items(store, theirs[20:], ["theirs"], start=20)  # same size and generation
        their_cache = {n: (other / n).read_bytes() for n in ("vectors.faiss", "vectors.faiss.json")}
        exchange(other, root)
        hits = reader.search(mine[:3], 1)
        assert [(h[0].label, round(h[0].score, 4)) for h in hits] == [("mine", 1.0)] * 3
        with pytest.raises(IndexStoreError, match="was replaced by another process"):
            writer.remove_label("mine")
    assert {n: (root / n).read_bytes() for n in their_cache} == their_cache
