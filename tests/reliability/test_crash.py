"""SIGKILL at a seeded random moment of the real ``retrieve enroll``, ``build-index`` and
``remove`` (the installed command, in a subprocess).

The fault kills the main process only, as ``kill -9`` or the OOM killer does; its orphaned
DataLoader workers are killed just after, so that they do not slow the next runs. Each kill
lands a seeded uniform delay after the run takes the writer lock (its lock file changes), up to
the measured length of a whole run's writes: from taking the lock to its last commit (enroll,
whose writes go to the records and their change log only), its base rewrite (remove of half the
index, which merges its change into a new FAISS base) or its swap into place (build-index).

After every kill: what ``retrieve check`` runs finds no problem, the index opens, every item
from before is there, and the interrupted work left only whole committed chunks (remove: all or
nothing). Enroll and build-index are killed in chains: the next run of the same command is the
re-run of the interrupted one, killed in its turn, until one finishes, which must then hold
exactly what an uninterrupted run gives, with no temporary files left behind (checked with the
installed ``retrieve check``). Two chains run at once, each on its own index.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import retrieval
from index import IndexStore, sha256_file
from retrieval.engine.embed import Embedder
from retrieval.indexing.build import build_index, staging_dir
from retrieval.indexing.ingest import CHUNK
from retrieval.nets.model import load_model

from ..helpers import (
    COMMAND_ENV,
    cache_is_current,
    record,
    retrieve_exe,
    write_gallery,
    write_images,
)
from .helpers import stray_files

# Subprocess-heavy (minutes): run with the reliability folder, not in the quick suite.
pytestmark = pytest.mark.slow

SEED = 4
KILLS = 20
WORKERS = 2
ENROLL_IMAGES = 600  # 2 whole chunks and a rest of 88
BUILD_LABELS, BUILD_PER_LABEL = 4, 250  # 1000 images: 3 whole chunks and a rest of 232
REMOVE_ITEMS = 40_000  # half of them under the label removed


@dataclass
class Ledger:
    """What the kills of one command did, shared by its worker threads."""

    kills: int = 0
    reruns: int = 0
    outcomes: Counter = field(default_factory=Counter)
    temp_files_after_kill: int = 0
    unusable_base_after_kill: int = 0
    delays: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """Whether one more kill is wanted (and count it)."""
        with self.lock:
            if self.kills >= KILLS:
                return False
            self.kills += 1
            return True

    def note(self, outcome: str, left: tuple[bool, bool], delay: float) -> None:
        """One kill: what it did, and whether it left (a temp file, a base the next open must
        rebuild)."""
        with self.lock:
            self.outcomes[outcome] += 1
            self.delays.append(delay)
            self.temp_files_after_kill += left[0]
            self.unusable_base_after_kill += left[1]

    def finished(self) -> None:
        """One run ended by itself (before its kill, or as a re-run)."""
        with self.lock:
            self.reruns += 1

    def figures(self, span: float) -> dict[str, object]:
        return {
            "kills": self.kills,
            "runs_that_finished": self.reruns,
            "outcomes": dict(self.outcomes),
            "kills_leaving_a_temp_file": self.temp_files_after_kill,
            "kills_leaving_the_faiss_base_to_rebuild": self.unusable_base_after_kill,
            "kill_after_lock_s": [round(min(self.delays), 2), round(max(self.delays), 2)],
            "write_span_s": round(span, 2),
        }


def leftovers(index: Path) -> tuple[bool, bool]:
    """Whether a killed writer left (a temp file, a FAISS base that the next open must rebuild:
    missing, not the file its sidecar describes, or older than the change log reaches back to)
    in ``index``; to be looked at before anything opens it (opening heals both)."""
    if not IndexStore.is_index(index):
        return False, False
    temp = any(p.name.endswith(".tmp") for p in index.iterdir())
    try:
        usable = cache_is_current(index)
    except (FileNotFoundError, sqlite3.OperationalError):
        usable = False
    return temp, not usable


def run(args: list[object], log: Path, kill: tuple[Path, float] | None = None) -> int | None:
    """Run the installed command to its end, or with ``kill = (file, delay)`` SIGKILL it
    ``delay`` s after it first changes ``file`` (its lock file: it begins to write). Its exit
    status if it ended by itself, else None. Only the main process is killed by the fault; its
    orphaned DataLoader workers are killed just after, so that they do not eat the next runs'
    CPU."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [retrieve_exe(), *map(str, args)],
            stdout=out,
            stderr=out,
            env=COMMAND_ENV,
            start_new_session=True,
        )
        if kill is None:
            return proc.wait(timeout=300)
        trigger, delay = kill
        before = _stamp(trigger)
        while _stamp(trigger) == before:
            if proc.poll() is not None:
                return proc.returncode
            time.sleep(0.002)
        try:
            return proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def write_span(
    command: Callable[[int], list[object]],
    begins: Callable[[int], Path],
    ends: Callable[[int], Path],
    *,
    end_at_first_change: bool,
    tmp: Path,
) -> float:
    """How long a whole run writes, in seconds: from the first change of the file ``begins``
    (the lock file, written when the writer lock is first taken) to the last change of ``ends``
    (the cache's sidecar), or its first (the manifest of a swapped-in index). Measured with
    WORKERS runs at once, as the kills run; their mean is returned."""

    def one(w: int) -> tuple[float, float]:
        files = (begins(w), ends(w))
        seen = [_stamp(f) for f in files]
        changed: list[list[float]] = [[], []]
        log = tmp / f"span{w}.log"
        start = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [retrieve_exe(), *map(str, command(w))], stdout=out, stderr=out, env=COMMAND_ENV
            )
            while True:
                ended = proc.poll() is not None
                for k, f in enumerate(files):
                    if (now := _stamp(f)) != seen[k]:
                        changed[k].append(time.monotonic() - start)
                        seen[k] = now
                if ended:
                    break
                time.sleep(0.005)
        assert proc.returncode == 0, log.read_text()
        assert changed[0] and changed[1], f"{files} did not both change"
        return changed[0][0], changed[1][0 if end_at_first_change else -1]

    with ThreadPoolExecutor(WORKERS) as pool:
        spans = [last - first for first, last in pool.map(one, range(WORKERS))]
    assert min(spans) > 0, spans
    return float(np.mean(spans))


def assert_checks(index: Path) -> None:
    """What ``retrieve check`` runs finds no problem (called in-process: it is quicker, and
    test_check.py covers the command around it)."""
    report = retrieval.check(index)
    assert report.ok, report.problems


def assert_command_checks(index: Path) -> None:
    """``retrieve check`` passes, as the installed command."""
    done = subprocess.run(
        [retrieve_exe(), "check", "--index", str(index), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["ok"]


def items(index: Path) -> list[tuple[int, str, str, str]]:
    with IndexStore.open(index) as store:
        return [(it.id, it.label, it.path, it.sha256) for it in store.items()]


def vectors_by_path(index: Path) -> dict[str, np.ndarray]:
    with IndexStore.open(index) as store:
        ids, vectors = store.vectors()
        paths = [it.path for it in store.items()]
    return dict(zip(paths, vectors, strict=True))


def assert_whole_chunks(
    done: list[str],
    plan: list[str],
    reference: dict[str, np.ndarray],
    vectors: dict[str, np.ndarray],
) -> None:
    """``done`` (in commit order) is a prefix of ``plan`` of whole chunks, or all of it, and
    every item holds the vector of its file."""
    assert done == plan[: len(done)], "items are not a prefix of the work, in order"
    assert len(done) % CHUNK == 0 or len(done) == len(plan), f"{len(done)} items: not whole chunks"
    for path in done:
        np.testing.assert_allclose(vectors[path], reference[path], atol=1e-4)


@pytest.fixture(scope="module")
def tiny() -> Embedder:
    loaded = load_model("tiny")
    return loaded.embedder()


def reference_vectors(embedder: Embedder, paths: list[Path]) -> dict[str, np.ndarray]:
    result = embedder.embed_paths(paths)
    assert result.ok == list(range(len(paths)))
    return {str(p.resolve()): v for p, v in zip(paths, result.vectors, strict=True)}


def test_enroll_killed(tmp_path: Path, tiny: Embedder):
    base = write_gallery(tmp_path / "base", 3, 4)
    pristine = tmp_path / "pristine"
    build_index(base, pristine, model="tiny")
    before = items(pristine)
    new = write_images(tmp_path / "new", ENROLL_IMAGES, (230, 220, 20), seed=9000)
    plan = [str(p.resolve()) for p in new]
    shas = {str(p.resolve()): sha256_file(p) for p in new}
    reference = reference_vectors(tiny, new)
    indexes = [tmp_path / f"idx{w}" for w in range(WORKERS)]

    def fresh(w: int) -> Path:
        shutil.rmtree(indexes[w], ignore_errors=True)
        return Path(shutil.copytree(pristine, indexes[w]))

    def command(w: int) -> list[object]:
        return ["enroll", "yellow", tmp_path / "new", "--index", indexes[w]]

    for w in range(WORKERS):
        fresh(w)

    def begins(w: int) -> Path:
        return indexes[w] / ".lock"

    span = write_span(
        command,
        begins,
        lambda w: indexes[w] / "records.sqlite-wal",
        end_at_first_change=False,
        tmp=tmp_path,
    )
    for w in range(WORKERS):
        fresh(w)
    ledger = Ledger()

    def chain(w: int) -> None:
        rng = np.random.default_rng([SEED, w])
        index = fresh(w)
        log = tmp_path / f"run{w}.log"
        enrolled: list[str] = []
        while ledger.claim():
            delay = float(rng.uniform(0, span))
            status = run(command(w), log, kill=(begins(w), delay))
            left = leftovers(index)
            if status is not None:
                ledger.finished()
                assert status == 0, log.read_text()
            assert_checks(index)
            now = items(index)
            assert [it for it in now if it[1] != "yellow"] == before, "items from before changed"
            done = [path for _, label, path, _ in now if label == "yellow"]
            assert all(sha == shas[path] for _, label, path, sha in now if label == "yellow")
            assert_whole_chunks(done, plan, reference, vectors_by_path(index))
            assert len(done) >= len(enrolled), "committed work was lost"
            if status is not None:
                outcome = "finished before the kill"
            elif len(done) == len(enrolled):
                outcome = "killed before its next commit"
            elif len(done) < len(plan):
                outcome = "killed after committing whole chunks"
            else:
                outcome = "killed after its last commit"
            ledger.note(outcome, left, delay)
            enrolled = done
            if len(done) == len(plan):  # the job is done: check, then start a new one
                if status is None:  # killed after its last commit: the re-run has nothing to do
                    assert run(command(w), log) == 0, log.read_text()
                    ledger.finished()
                assert len(items(index)) == len(before) + len(plan), "duplicates"
                assert not any(p.name.endswith(".tmp") for p in index.iterdir())
                assert_command_checks(index)
                index = fresh(w)
                enrolled = []
        if enrolled:  # finish the last, interrupted job: the re-run completes it
            assert run(command(w), log) == 0, log.read_text()
            ledger.finished()
            assert [path for _, label, path, _ in items(index) if label == "yellow"] == plan
            assert len(items(index)) == len(before) + len(plan)
            assert not any(p.name.endswith(".tmp") for p in index.iterdir())
            assert_command_checks(index)

    with ThreadPoolExecutor(WORKERS) as pool:
        for result in [pool.submit(chain, w) for w in range(WORKERS)]:
            result.result()
    assert ledger.kills >= KILLS
    assert ledger.outcomes["killed after committing whole chunks"] >= 1
    record("SIGKILL during retrieve enroll", **ledger.figures(span))


def test_build_index_killed(tmp_path: Path, tiny: Embedder):
    old_gallery = write_gallery(tmp_path / "old_gallery", 2, 5, seed=500)
    pristine = tmp_path / "pristine"
    build_index(old_gallery, pristine, model="tiny")
    old = items(pristine)
    old_vectors = vectors_by_path(pristine)
    gallery = write_gallery(tmp_path / "gallery", BUILD_LABELS, BUILD_PER_LABEL)
    images = sorted(gallery.glob("*/*.png"))
    plan = [str(p.resolve()) for p in images]
    reference = reference_vectors(tiny, images)
    folders = [tmp_path / f"w{w}" for w in range(WORKERS)]

    def fresh(w: int) -> Path:
        shutil.rmtree(folders[w], ignore_errors=True)
        folders[w].mkdir()
        return Path(shutil.copytree(pristine, folders[w] / "idx"))

    def command(w: int) -> list[object]:
        return ["build-index", gallery, "--index", folders[w] / "idx", "--model", "tiny", "--force"]

    for w in range(WORKERS):
        fresh(w)

    def begins(w: int) -> Path:
        return staging_dir(folders[w] / "idx") / ".lock"

    span = write_span(
        command,
        begins,
        lambda w: folders[w] / "idx" / "manifest.json",
        end_at_first_change=True,
        tmp=tmp_path,
    )
    for w in range(WORKERS):
        fresh(w)
    ledger = Ledger()

    def chain(w: int) -> None:
        rng = np.random.default_rng([SEED, 10 + w])
        target = fresh(w)
        staging = staging_dir(target)
        log = tmp_path / f"run{w}.log"
        staged = 0
        while ledger.claim():
            delay = float(rng.uniform(0, span))
            status = run(command(w), log, kill=(begins(w), delay))
            left = leftovers(staging)
            assert_checks(target)
            now = items(target)
            replaced = now != old
            if replaced:
                assert [path for _, _, path, _ in now] == plan, (
                    "the index was replaced by a partial one"
                )
                for path, vector in vectors_by_path(target).items():
                    np.testing.assert_allclose(vector, reference[path], atol=1e-4)
            else:
                vectors = vectors_by_path(target)
                assert vectors.keys() == old_vectors.keys()
                assert all(np.array_equal(vectors[p], v) for p, v in old_vectors.items())
            if status is not None:
                ledger.finished()
                assert status == 0 and replaced, log.read_text()
                outcome = "finished before the kill"
            elif replaced:
                outcome = "killed after the swap"
            elif IndexStore.is_index(staging):
                assert_checks(staging)
                done = [path for _, _, path, _ in items(staging)]
                assert_whole_chunks(done, plan, reference, vectors_by_path(staging))
                assert len(done) >= staged, "committed work was lost"
                outcome = (
                    "killed before its next commit"
                    if len(done) == staged
                    else "killed after committing whole chunks"
                    if len(done) < len(plan)
                    else "killed after its last commit, before the swap"
                )
                staged = len(done)
            else:
                outcome = "killed before its staging index existed"
            ledger.note(outcome, left, delay)
            if replaced:  # the job is done: nothing may be left beside it; start a new one
                if status is None:
                    assert run(command(w), log) == 0, log.read_text()
                    ledger.finished()
                    assert items(target) != old and [p for _, _, p, _ in items(target)] == plan
                assert stray_files(folders[w]) == []
                target = fresh(w)
                staged = 0
        if staged:  # finish the last, interrupted job: the re-run resumes it
            assert run(command(w), log) == 0, log.read_text()
            ledger.finished()
            assert "resumed an interrupted build" in log.read_text()
            assert [path for _, _, path, _ in items(target)] == plan
            assert stray_files(folders[w]) == []
            assert_command_checks(target)

    with ThreadPoolExecutor(WORKERS) as pool:
        for result in [pool.submit(chain, w) for w in range(WORKERS)]:
            result.result()
    assert ledger.kills >= KILLS
    assert ledger.outcomes["killed after committing whole chunks"] >= 1
    record("SIGKILL during retrieve build-index --force", **ledger.figures(span))


def test_remove_killed(tmp_path: Path):
    pristine = tmp_path / "pristine"
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(REMOVE_ITEMS, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = ["gone" if i % 2 else "kept" for i in range(REMOVE_ITEMS)]
    with IndexStore.create(pristine, 64, load_model("tiny").describe()) as store:
        store.add(
            x,
            labels,
            [f"/g/{i}.png" for i in range(REMOVE_ITEMS)],
            [f"{i:064x}" for i in range(REMOVE_ITEMS)],
        )
    before = items(pristine)
    kept = [it for it in before if it[1] == "kept"]
    indexes = [tmp_path / f"idx{w}" for w in range(WORKERS)]

    def fresh(w: int) -> Path:
        shutil.rmtree(indexes[w], ignore_errors=True)
        return Path(shutil.copytree(pristine, indexes[w]))

    def command(w: int) -> list[object]:
        return ["remove", "--index", indexes[w], "--label", "gone"]

    for w in range(WORKERS):
        fresh(w)

    def begins(w: int) -> Path:
        return indexes[w] / ".lock"

    span = write_span(
        command,
        begins,
        lambda w: indexes[w] / "vectors.faiss.json",
        end_at_first_change=False,
        tmp=tmp_path,
    )
    ledger = Ledger()

    def worker(w: int) -> None:
        rng = np.random.default_rng([SEED, 20 + w])
        log = tmp_path / f"run{w}.log"
        while ledger.claim():
            index = fresh(w)
            delay = float(rng.uniform(0, span))
            status = run(command(w), log, kill=(begins(w), delay))
            left = leftovers(index)
            assert_checks(index)
            now = items(index)
            if status is not None:
                ledger.finished()
                outcome = "finished before the kill"
                assert status == 0, log.read_text()
            else:
                outcome = "killed before its commit" if now == before else "killed after its commit"
            assert now in (before, kept), "a label was removed in part"
            ledger.note(outcome, left, delay)
            again = run(command(w), log)
            ledger.finished()
            assert again == (0 if now == before else 1), log.read_text()
            assert items(index) == kept
            assert not any(p.name.endswith(".tmp") for p in index.iterdir())
            assert_command_checks(index)

    with ThreadPoolExecutor(WORKERS) as pool:
        for result in [pool.submit(worker, w) for w in range(WORKERS)]:
            result.result()
    assert ledger.kills >= KILLS
    record(
        f"SIGKILL during retrieve remove --label ({REMOVE_ITEMS // 2} of {REMOVE_ITEMS} items)",
        **ledger.figures(span),
    )
