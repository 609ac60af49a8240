"""Concurrent writers and readers: 2 and 4 real ``retrieve enroll`` processes into one index at
once, while searches (in-process) and ``retrieve query --json`` / ``retrieve info --json``
(subprocesses) run in a loop: every image lands exactly once, ``retrieve check`` passes, and
no read ever fails or returns a malformed answer."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index import IndexStore
from retrieval.indexing import calibration, dba
from retrieval.indexing.build import build_index

from ..helpers import (
    ANSWER_JSON_KEYS,
    COMMAND_ENV,
    DIM,
    MODEL,
    add_items,
    palette,
    record,
    retrieve_exe,
    unit_rows,
    write_gallery,
    write_image,
)
from .helpers import retrieve

# Subprocess-heavy (minutes): run with the reliability folder, not in the quick suite.
pytestmark = pytest.mark.slow

OWN, SHARED, K = 300, 40, 5  # per writer: 300 images of its own (2 chunks), 40 all writers share


def _reader_loop(root: Path, stop: threading.Event, seen: dict[str, int]) -> None:
    """Search the index until told to stop; every answer must be well formed."""
    rng = np.random.default_rng(0)
    with IndexStore.open(root) as store:
        while not stop.is_set():
            queries = rng.normal(size=(4, store.dim)).astype(np.float32)
            for row in store.search(queries, K):
                assert len(row) == K
                scores = [h.score for h in row]
                assert scores == sorted(scores, reverse=True)
                assert len({h.id for h in row}) == K
                assert all(isinstance(h.label, str) and h.path.endswith(".png") for h in row)
            seen["searches"] += 1


def _command_loop(root: Path, image: Path, stop: threading.Event, seen: dict[str, int]) -> None:
    """Run ``retrieve query --json`` and ``retrieve info --json`` until told to stop."""
    while not stop.is_set():
        for args in (["query", image, "-k", K, "--json"], ["info", "--json"]):
            done = subprocess.run(
                [retrieve_exe(), *map(str, args), "--index", str(root)],
                capture_output=True,
                text=True,
                timeout=120,
                env=COMMAND_ENV,
            )
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            if args[0] == "query":
                assert set(answer) == ANSWER_JSON_KEYS
                assert len(answer["neighbors"]) == K
                seen["queries"] += 1
            else:
                assert answer["count"] == sum(answer["labels"].values()) >= 12
                seen["infos"] += 1


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_enrolls_land_every_image_once(tmp_path: Path, writers: int):
    root = tmp_path / "idx"
    build_index(write_gallery(tmp_path / "base", 3, 4), root, model="tiny")
    colors = palette(writers + 5)[5:]
    shared = [
        write_image(tmp_path / "shared" / f"s{j:03d}.png", (9, 9, 9), 7000 + j, 24)
        for j in range(SHARED)
    ]
    folders = []
    for w in range(writers):
        folder = tmp_path / f"writer{w}"
        for j in range(OWN):
            write_image(folder / f"w{j:03d}.png", colors[w], 10_000 * (w + 1) + j, 24)
        for path in shared:  # the same content, enrolled by every writer at once
            shutil.copy(path, folder / path.name)
        folders.append(folder)
    query = write_image(tmp_path / "q.png", colors[0], 1, 24)

    stop = threading.Event()
    seen = {"searches": 0, "queries": 0, "infos": 0}
    failures: list[BaseException] = []

    def guarded(target, *args) -> None:
        try:
            target(*args)
        except BaseException as exc:
            failures.append(exc)
            stop.set()

    readers = [
        threading.Thread(target=guarded, args=(_reader_loop, root, stop, seen)),
        threading.Thread(target=guarded, args=(_command_loop, root, query, stop, seen)),
    ]
    for thread in readers:
        thread.start()
    procs = [
        subprocess.Popen(
            [retrieve_exe(), "enroll", f"writer{w}", str(folders[w]), "--index", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=COMMAND_ENV,
        )
        for w in range(writers)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    stop.set()
    for thread in readers:
        thread.join(timeout=300)
    if failures:
        raise failures[0]
    assert [proc.returncode for proc in procs] == [0] * writers, outputs

    enrolled = [int(out.split()[1]) for out in outputs]
    assert sum(enrolled) == writers * OWN + SHARED
    with IndexStore.open(root) as store:
        items = store.items()
        counts = store.label_counts()
    shas = [item.sha256 for item in items]
    assert len(shas) == len(set(shas)), "an image landed twice"
    assert len(items) == 12 + writers * OWN + SHARED
    for w in range(writers):
        own = {str((folders[w] / f"w{j:03d}.png").resolve()) for j in range(OWN)}
        assert own <= {item.path for item in items if item.label == f"writer{w}"}
        assert counts[f"writer{w}"] == enrolled[w]
    assert retrieve("check", "--index", root).returncode == 0
    assert seen["searches"] > 0 and seen["queries"] > 0
    record(
        f"{writers} retrieve enroll processes at once, readers looping",
        writers=writers,
        images_per_writer=OWN + SHARED,
        shared_images=SHARED,
        items_after=len(items),
        duplicates=len(shas) - len(set(shas)),
        in_process_searches=seen["searches"],
        query_commands=seen["queries"],
        info_commands=seen["infos"],
        read_errors=len(failures),
    )


def test_readers_never_fail_while_build_index_swaps_the_folder(tmp_path: Path):
    """``retrieve build-index --force`` swaps a new index into the folder three times while a
    reader opens and searches it in a loop: each open sees the old or the new index, whole."""
    root = tmp_path / "idx"
    small = write_gallery(tmp_path / "small", 2, 5)
    big = write_gallery(tmp_path / "big", 3, 40, seed=300)
    build_index(small, root, model="tiny")
    stop = threading.Event()
    sizes: set[int] = set()
    reads = [0]
    failures: list[BaseException] = []

    def reader() -> None:
        rng = np.random.default_rng(1)
        try:
            while not stop.is_set():
                with IndexStore.open(root) as store:
                    n = len(store)
                    rows = store.search(rng.normal(size=(2, store.dim)), 3)
                    assert [len(row) for row in rows] == [3, 3]
                    assert {h.label for row in rows for h in row} <= {
                        f"label{i:02d}" for i in range(3)
                    }
                    sizes.add(n)
                    reads[0] += 1
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for gallery in (big, small, big):
            done = retrieve("build-index", gallery, "--index", root, "--model", "tiny", "--force")
            assert done.returncode == 0, done.stderr
    finally:
        stop.set()
        thread.join(timeout=60)
    if failures:
        raise failures[0]
    assert sizes == {10, 120}
    assert retrieve("check", "--index", root).returncode == 0
    record(
        "reads while build-index --force swaps the folder",
        swaps=3,
        opens_and_searches=reads[0],
        index_sizes_seen=sorted(sizes),
        read_errors=len(failures),
    )


def _keep_dba_lists(store: IndexStore) -> None:
    dba.load(store)


def _keep_calibration(store: IndexStore) -> None:
    calibration.load(store.path, [store])


@pytest.mark.parametrize(
    ("module", "keep"), [(dba, _keep_dba_lists), (calibration, _keep_calibration)]
)
def test_a_query_keeping_a_derived_file_never_blocks_a_writer_until_it_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module, keep
):
    """A query that makes the DBA lists or the open-set state keeps them in a file only while
    no writer holds the store, and holds it as writers do (its mutex, then its writer lock).
    Taken the other way round (the lock alone, then the store read under it), an enrolment
    arriving meanwhile held the mutex and waited for the lock while the query waited for the
    mutex, until the enrolment gave up (a served enrolment hung past its client's timeout)."""
    store = IndexStore.create(tmp_path / "idx", DIM, MODEL, lock_timeout=3)
    add_items(store, unit_rows(40, seed=3), ["a", "b"] * 20)
    failures: list[BaseException] = []

    def enrol() -> None:
        try:
            add_items(store, unit_rows(2, seed=5), ["c", "c"], start=40)
        except BaseException as exc:
            failures.append(exc)

    writer = threading.Thread(target=enrol)
    write_file = module._write

    def write_while_a_writer_arrives(*args) -> None:
        writer.start()
        time.sleep(0.5)  # the writer takes what it can of the store and waits for the rest
        assert len(store) == 40  # the query still reads the store it keeps the file of
        write_file(*args)

    monkeypatch.setattr(module, "_write", write_while_a_writer_arrives)
    keep(store)
    writer.join(timeout=60)
    assert not writer.is_alive() and not failures, failures
    assert len(store) == 42
    store.close()
