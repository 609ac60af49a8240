"""retrieve check: every disagreement between manifest, records, FAISS file and sidecar is
reported on its own line with exit 1; --repair rebuilds the cache, never the records."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from index import backend
from index.cache import TRAILER_BYTES
from retrieval.indexing.build import build_index

from ..helpers import COLORS, db_generation, run, sidecar, write_image

Fault = Callable[[Path], None]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(4):
            write_image(root / "gallery" / label / f"{j}.png", color, seed=ci * 10 + j)
    build_index(root / "gallery", root / "idx", model="tiny")
    return root / "idx"


@pytest.fixture
def index(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "idx"))


def check(index: Path, *flags: str) -> Result:
    return run("check", "--index", index, *flags, ok=False)


def files(index: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(index.iterdir()) if p.name != ".lock"}


def sql(index: Path, statement: str, *params: object) -> None:
    with closing(sqlite3.connect(index / "records.sqlite")) as conn:
        conn.execute(statement, params)
        conn.commit()


def write_cache(index: Path, ids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
    """A well-formed FAISS file with these contents and a sidecar vouching for it."""
    faiss_index = backend.new_flat_index(vectors.shape[1])
    backend.add_with_ids(faiss_index, vectors, ids)
    digest = backend.write_index(faiss_index, index / "vectors.faiss")
    (index / "vectors.faiss.json").write_text(
        json.dumps({"generation": generation, "sha256": digest})
    )


def stored(index: Path) -> tuple[np.ndarray, np.ndarray]:
    with closing(sqlite3.connect(index / "records.sqlite")) as conn:
        rows = conn.execute("SELECT id, vector FROM items ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows], np.int64)
    return ids, np.stack([np.frombuffer(r[1], "<f4") for r in rows])


def fewer_vectors(index: Path) -> None:
    ids, vectors = stored(index)
    write_cache(index, ids[1:], vectors[1:], db_generation(index))


def other_ids(index: Path) -> None:
    ids, vectors = stored(index)
    write_cache(index, ids + 1000, vectors, db_generation(index))


def other_vectors(index: Path) -> None:
    ids, vectors = stored(index)
    write_cache(index, ids, vectors[::-1].copy(), db_generation(index))


def altered_faiss_file(index: Path) -> None:
    data = bytearray((index / "vectors.faiss").read_bytes())
    data[-TRAILER_BYTES - 5] ^= 0xFF  # in FAISS's bytes (a vector's id), not the trailer
    (index / "vectors.faiss").write_bytes(bytes(data))


def unreadable_faiss_vouched_for(index: Path) -> None:
    garbage = b"IxM2" + bytes(64)
    (index / "vectors.faiss").write_bytes(garbage)
    meta = {"generation": db_generation(index), "sha256": hashlib.sha256(garbage).hexdigest()}
    (index / "vectors.faiss.json").write_text(json.dumps(meta))


def garbage_sidecar(index: Path) -> None:
    (index / "vectors.faiss.json").write_text('{"generation": "x"}')


def sidecar_from_the_future(index: Path) -> None:
    meta = sidecar(index)
    meta["generation"] += 5
    (index / "vectors.faiss.json").write_text(json.dumps(meta))


CACHE_FAULTS: dict[str, tuple[Fault, str]] = {
    "fewer vectors": (fewer_vectors, "holds 11 vectors, the records 12 items"),
    "other ids": (other_ids, "holds other ids than the records"),
    "other vectors": (other_vectors, "holds other vectors than the records"),
    "altered FAISS file": (altered_faiss_file, "does not have the sha256 recorded"),
    "unreadable FAISS file": (unreadable_faiss_vouched_for, "not a readable FAISS index"),
    "garbage sidecar": (garbage_sidecar, "is not a {generation, sha256} record"),
    "sidecar ahead of records": (sidecar_from_the_future, "but the records are only at"),
}


def nan_vector(index: Path) -> None:
    sql(index, "UPDATE items SET vector = ? WHERE id = 2", np.full(64, np.nan, "<f4").tobytes())


def long_vector(index: Path) -> None:
    sql(index, "UPDATE items SET vector = ? WHERE id IN (3, 4)", np.ones(65, "<f4").tobytes())


def not_unit(index: Path) -> None:
    sql(index, "UPDATE items SET vector = ? WHERE id = 5", np.full(64, 0.5, "<f4").tobytes())


def label_not_text(index: Path) -> None:
    sql(index, "UPDATE items SET label = CAST(label AS BLOB) WHERE id = 6")


def future_manifest(index: Path) -> None:
    data = json.loads((index / "manifest.json").read_text())
    data["format_version"] = 7
    (index / "manifest.json").write_text(json.dumps(data))


def damaged_records(index: Path) -> None:
    for name in ("records.sqlite-wal", "records.sqlite-shm"):
        (index / name).unlink(missing_ok=True)
    data = (index / "records.sqlite").read_bytes()
    (index / "records.sqlite").write_bytes(data[:4096] + b"\xff" * (len(data) - 4096))


SOURCE_FAULTS: dict[str, tuple[Fault, str]] = {
    "NaN vector": (nan_vector, "1 item(s) hold a vector with NaN or infinity (ids 2)"),
    "vector too long": (long_vector, "2 item(s) hold a vector of the wrong length (ids 3, 4)"),
    "vector not unit": (not_unit, "1 item(s) hold a vector whose norm is not 1"),
    "label not text": (label_not_text, "1 item(s) hold a label, path, sha256 or time"),
    "manifest from the future": (future_manifest, "index format 7 is newer"),
    "damaged records": (damaged_records, "records.sqlite"),
}


def test_healthy_index(index: Path):
    before = files(index)
    out = check(index)
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == ["index OK: 12 items, 3 labels"]
    report = json.loads(check(index, "--json").output)
    assert report == {
        "index": str(index),
        "ok": True,
        "items": 12,
        "labels": 3,
        "problems": [],
        "notes": [],
        "repaired": [],
    }
    assert files(index) == before


@pytest.mark.parametrize("fault", CACHE_FAULTS)
def test_cache_faults_are_problems_that_repair_fixes(index: Path, fault: str):
    damage, message = CACHE_FAULTS[fault]
    damage(index)
    before = files(index)
    out = check(index)
    assert out.exit_code == 1, out.output
    lines = out.output.splitlines()
    problems = [line for line in lines if line.startswith("problem: ")]
    assert len(problems) == 1 and message in problems[0], out.output
    assert lines[-1] == f"index {index} has 1 problem(s)"
    assert files(index) == before, "check changed the index"
    fixed = check(index, "--repair")
    assert fixed.exit_code == 0, fixed.output
    assert fixed.output.splitlines() == [
        "repaired: rebuilt vectors.faiss and vectors.faiss.json from the 12 records",
        "index OK: 12 items, 3 labels",
    ]


@pytest.mark.parametrize("fault", SOURCE_FAULTS)
def test_source_faults_are_problems_that_repair_leaves(index: Path, fault: str):
    damage, message = SOURCE_FAULTS[fault]
    damage(index)
    out = check(index)
    assert out.exit_code == 1, out.output
    problems = [line for line in out.output.splitlines() if line.startswith("problem: ")]
    assert problems and any(message in p for p in problems), out.output
    before = files(index)
    again = check(index, "--repair", "--json")
    assert again.exit_code == 1
    report = json.loads(again.output)
    assert not report["ok"] and report["problems"] == [
        p.removeprefix("problem: ") for p in problems
    ]
    assert report["repaired"][0].startswith("nothing repaired: the manifest or records are damaged")
    assert files(index) == before


def test_states_that_heal_themselves_are_notes(index: Path, tmp_path: Path):
    """A base behind the records is the normal state (the change log carries the writes since);
    a base file its sidecar does not describe (a merge killed between its two renames) and a
    temp file (a writer killed mid-rewrite) leave the index usable: check notes them, exit 0;
    repair clears them."""
    run("remove", "--index", index, "--label", "red")
    assert sidecar(index)["generation"] < db_generation(index)
    assert check(index).output.splitlines() == ["index OK: 8 items, 2 labels"]
    old_sidecar = (index / "vectors.faiss.json").read_bytes()
    assert check(index, "--repair").exit_code == 0
    (index / "vectors.faiss.json").write_bytes(old_sidecar)
    (index / ".vectors.faiss.0123456789abcdef.tmp").write_bytes(b"half a file")
    out = check(index)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[-1] == "index OK: 8 items, 2 labels"
    notes = [line for line in lines if line.startswith("note: ")]
    assert len(notes) == 2
    assert "vectors.faiss is not the file vectors.faiss.json describes" in notes[0]
    assert ".vectors.faiss.0123456789abcdef.tmp is a temporary file" in notes[1]
    fixed = check(index, "--repair")
    assert fixed.output.splitlines() == [
        "repaired: removed .vectors.faiss.0123456789abcdef.tmp",
        "repaired: rebuilt vectors.faiss and vectors.faiss.json from the 8 records",
        "index OK: 8 items, 2 labels",
    ]
    (index / "vectors.faiss").unlink()
    assert "note: vectors.faiss is missing" in check(index).output


def test_a_base_the_log_no_longer_reaches_is_a_note(index: Path, tmp_path: Path):
    """An older base (copied back, or a writer that kept no log) whose generation the change log
    does not reach back to: a note, and the next open rebuilds it."""
    old = {n: (index / n).read_bytes() for n in ("vectors.faiss", "vectors.faiss.json")}
    run("remove", "--index", index, "--label", "red")
    assert check(index, "--repair").exit_code == 0  # a new base: the log before it is dropped
    for name, data in old.items():
        (index / name).write_bytes(data)
    out = check(index)
    assert out.exit_code == 0, out.output
    assert "the records' change log does not reach back to it" in out.output
    assert check(index, "--repair").exit_code == 0
    assert check(index).output.splitlines() == ["index OK: 8 items, 2 labels"]


def test_not_an_index_is_a_one_line_error(tmp_path: Path):
    out = check(tmp_path)
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [
        f"retrieve: error: {tmp_path} is not an index: it lacks manifest.json or records.sqlite"
    ]


def test_installed_command(index: Path):
    exe = Path(sys.executable).parent / "retrieve"
    done = subprocess.run(
        [str(exe), "check", "--index", str(index)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "index OK: 12 items, 3 labels\n"
