"""An untrusted index folder: truncated or tampered records.sqlite and manifest.json give one
clear line on stderr naming the file and exit 1 from every command, never a traceback."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.indexing.build import build_index
from retrieval.nets.model import load_model, save_model_dir

from ..helpers import COLORS, run, write_image

Tamper = Callable[[Path], None]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small index built with the tiny model, never changed: each test tampers with a copy."""
    root = tmp_path_factory.mktemp("pristine")
    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(3):
            write_image(root / "gallery" / label / f"{j}.png", color, seed=ci * 10 + j)
    build_index(root / "gallery", root / "idx", model="tiny")
    return root / "idx"


@pytest.fixture
def index(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "idx"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_image(tmp_path / "q.png", COLORS["red"], seed=99)


def commands(index: Path, image: Path) -> dict[str, list[object]]:
    return {
        "info": ["info", "--index", index],
        "query": ["query", image, "--index", index, "--json"],
        "enroll": ["enroll", "new", image, "--index", index],
        "remove": ["remove", "--index", index, "--label", "red"],
    }


def assert_one_line_error(result, name: str) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("retrieve: error: ") and name in lines[0], lines[0]


def sql(index: Path, statement: str, *params: object) -> None:
    with closing(sqlite3.connect(index / "records.sqlite")) as conn:
        conn.execute(statement, params)
        conn.commit()


def drop_cache(index: Path) -> None:
    """As if the FAISS cache were gone, so that the records are read in full."""
    (index / "vectors.faiss").unlink()


def overwrite(name: str, make: Callable[[bytes], bytes]) -> Tamper:
    def tamper(index: Path) -> None:
        for suffix in ("-wal", "-shm"):
            (index / f"{name}{suffix}").unlink(missing_ok=True)
        path = index / name
        path.write_bytes(make(path.read_bytes()))

    return tamper


def flip_pages(data: bytes) -> bytes:
    """Every page after the first two overwritten with 0xff: the schema is readable, the rest not."""
    return data[:8192] + b"\xff" * (len(data) - 8192)


def wrong_length_vector(index: Path) -> None:
    sql(index, "UPDATE items SET vector = ? WHERE id = 3", b"\x00" * 12)
    drop_cache(index)


def nan_vector(index: Path) -> None:
    sql(index, "UPDATE items SET vector = ? WHERE id = 2", np.full(64, np.nan, "<f4").tobytes())
    drop_cache(index)


def foreign_items_table(index: Path) -> None:
    sql(index, "DROP TABLE items")
    sql(index, "CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)")


def bad_generation(index: Path) -> None:
    sql(index, "UPDATE meta SET value = 'soon' WHERE key = 'generation'")


def edit_manifest(**changes: object) -> Tamper:
    def tamper(index: Path) -> None:
        path = index / "manifest.json"
        data = json.loads(path.read_text())
        for key, value in changes.items():
            target = data
            *parents, last = key.split(".")
            for part in parents:
                target = target[part]
            target[last] = value
        path.write_text(json.dumps(data))

    return tamper


RECORDS_CASES: dict[str, Tamper] = {
    "truncated to half": overwrite("records.sqlite", lambda d: d[: len(d) // 2]),
    "truncated to a header": overwrite("records.sqlite", lambda d: d[:100]),
    "pages overwritten": overwrite("records.sqlite", flip_pages),
    "replaced by text": overwrite("records.sqlite", lambda d: b"not a database\n" * 300),
    "vector of the wrong length": wrong_length_vector,
    "vector of NaN": nan_vector,
    "items table of other columns": foreign_items_table,
    "generation not a number": bad_generation,
}

MANIFEST_CASES: dict[str, Tamper] = {
    "truncated to half": overwrite("manifest.json", lambda d: d[: len(d) // 2]),
    "empty": overwrite("manifest.json", lambda d: b""),
    "binary": overwrite("manifest.json", lambda d: bytes(range(256)) * 4),
    "nested a million deep": overwrite("manifest.json", lambda d: b"[" * 1_000_000),
    "larger than a megabyte": overwrite("manifest.json", lambda d: b" " * (2 << 20) + d),
    "format from the future": edit_manifest(format_version=99),
    "dim changed": edit_manifest(dim=65),
}


@pytest.mark.parametrize("case", RECORDS_CASES)
def test_tampered_records_give_one_line_naming_the_file(index: Path, image: Path, case: str):
    RECORDS_CASES[case](index)
    for name, args in commands(index, image).items():
        result = run(*args, ok=False)
        if case == "pages overwritten" and name == "info" and result.exit_code == 0:
            continue  # counting may read only the intact pages; every other command fails
        assert_one_line_error(result, "records.sqlite")


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_tampered_manifest_gives_one_line_naming_the_file(index: Path, image: Path, case: str):
    MANIFEST_CASES[case](index)
    for args in commands(index, image).values():
        assert_one_line_error(
            run(*args, ok=False), "manifest.json" if case != "dim changed" else "records"
        )


def without_onnx(index: Path) -> Path:
    """The index as one built without onnxruntime: no exported network, so query and enroll
    re-create the model from the manifest's source entry in torch."""
    path = index / "manifest.json"
    data = json.loads(path.read_text())
    del data["model"]["onnx"]
    path.write_text(json.dumps(data))
    (index / "model.onnx").unlink()
    return index


ONNX_CASES: dict[str, tuple[Tamper, str]] = {
    "file truncated": (overwrite("model.onnx", lambda d: d[: len(d) // 2]), "model.onnx"),
    "file replaced by text": (overwrite("model.onnx", lambda d: b"not onnx\n" * 50), "model.onnx"),
    "file deleted": (lambda index: (index / "model.onnx").unlink(), "model.onnx"),
    "sha256 changed": (edit_manifest(**{"model.onnx.sha256": "0" * 64}), "model.onnx"),
    "entry not an object": (edit_manifest(**{"model.onnx": "model.onnx"}), "manifest.json"),
    "preprocess missing": (edit_manifest(**{"model.preprocess": None}), "manifest.json"),
}


@pytest.mark.parametrize("case", ONNX_CASES)
def test_tampered_exported_network_gives_one_line(index: Path, image: Path, case: str):
    tamper, name = ONNX_CASES[case]
    tamper(index)
    for command in ("query", "enroll"):
        assert_one_line_error(run(*commands(index, image)[command], ok=False), name)


def test_exported_network_answers_without_the_model_source(index: Path, image: Path):
    """The index's own network is what answers: its source entry is not even read."""
    before = json.loads(run(*commands(index, image)["query"]).output)
    edit_manifest(**{"model.source": {"kind": "dir", "path": "/nowhere"}})(index)
    after = json.loads(run(*commands(index, image)["query"]).output)
    assert after == before and after["label"] == "red"


@pytest.mark.parametrize(
    "source",
    [
        "builtin:tiny",
        {"kind": "builtin", "backbone": "tiny", "spec": {"dim": "wide"}},
        {"kind": "builtin"},
        {"kind": "dir"},
    ],
)
def test_tampered_model_entry_gives_one_line_naming_the_manifest(
    index: Path, image: Path, source: object
):
    edit_manifest(**{"model.source": source})(without_onnx(index))
    for name in ("query", "enroll"):
        assert_one_line_error(run(*commands(index, image)[name], ok=False), "manifest.json")


def test_model_entry_pointing_elsewhere_is_refused(index: Path, image: Path, tmp_path: Path):
    without_onnx(index)
    edit_manifest(**{"model.source": {"kind": "dir", "path": str(tmp_path / "nowhere")}})(index)
    assert_one_line_error(run(*commands(index, image)["query"], ok=False), "nowhere")
    net = load_model("tiny").net
    with torch.no_grad():
        next(net.parameters()).add_(0.01)  # another network that loads just as well
    folder = save_model_dir(net, tmp_path / "other").parent
    edit_manifest(**{"model.source": {"kind": "dir", "path": str(folder)}})(index)
    for name in ("query", "enroll"):
        result = run(*commands(index, image)[name], ok=False)
        assert_one_line_error(result, str(index))
        assert "was built with model tiny" in result.output


def test_labels_stored_with_another_type_still_read_as_text(index: Path, image: Path):
    sql(index, "UPDATE items SET label = CAST(label AS BLOB) WHERE id = 1")
    sql(index, "UPDATE items SET path = 12345 WHERE id = 2")
    out = run("query", image, "--index", index, "-k", "12", "--json")
    neighbors = json.loads(out.output)["neighbors"]
    assert len(neighbors) == 9
    assert all(isinstance(n["label"], str) and isinstance(n["path"], str) for n in neighbors)
    info = json.loads(run("info", "--index", index, "--json").output)
    assert info["labels"] == {"blue": 3, "green": 3, "red": 3}
