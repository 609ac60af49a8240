"""Refusals: create over existing files, open of non-indexes and broken files, bad vectors."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from index import (
    IndexExistsError,
    IndexFormatError,
    IndexStore,
    IndexStoreError,
    NotAnIndexError,
    VectorError,
)

from ..helpers import DIM, MODEL, add_items, unit_rows


def _snapshot(store: IndexStore, root: Path) -> tuple:
    ids, vectors = store.vectors()
    return (
        len(store),
        store.label_counts(),
        ids.tolist(),
        vectors.tobytes(),
        (root / "vectors.faiss.json").read_bytes(),
        (root / "vectors.faiss").read_bytes(),
    )


# --- create ---------------------------------------------------------------------------------


def test_create_refuses_existing_index(store: IndexStore, root: Path) -> None:
    add_items(store, unit_rows(3), ["a"] * 3)
    with pytest.raises(IndexExistsError, match="already holds an index"):
        IndexStore.create(root, DIM, MODEL)
    assert len(store) == 3


def test_create_overwrite_replaces_only_index_files(root: Path) -> None:
    with IndexStore.create(root, DIM, MODEL) as store:
        add_items(store, unit_rows(3), ["a"] * 3)
    (root / "notes.txt").write_text("mine")
    (root / "sub").mkdir()
    with IndexStore.create(root, 8, {"name": "other"}, overwrite=True) as store:
        assert len(store) == 0
        assert store.dim == 8
        assert store.model == {"name": "other"}
    assert (root / "notes.txt").read_text() == "mine"
    assert (root / "sub").is_dir()
    with IndexStore.open(root) as store:
        assert store.dim == 8 and len(store) == 0


@pytest.mark.parametrize("overwrite", [False, True])
def test_create_refuses_non_empty_non_index_folder(tmp_path: Path, overwrite: bool) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(IndexExistsError, match="not an index") as err:
        IndexStore.create(folder, DIM, MODEL, overwrite=overwrite)
    assert str(folder) in str(err.value)
    assert [p.name for p in folder.iterdir()] == ["cat.jpg"]


def test_create_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(IndexExistsError, match="not a folder"):
        IndexStore.create(target, DIM, MODEL, overwrite=True)


def test_create_in_empty_folder_and_with_parents(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    IndexStore.create(tmp_path / "empty", DIM, MODEL).close()
    IndexStore.create(tmp_path / "a" / "b" / "c", DIM, MODEL).close()
    assert IndexStore.is_index(tmp_path / "empty")
    assert IndexStore.is_index(tmp_path / "a" / "b" / "c")


def test_create_over_incomplete_index_needs_overwrite(root: Path) -> None:
    IndexStore.create(root, DIM, MODEL).close()
    (root / "manifest.json").unlink()
    assert not IndexStore.is_index(root)
    with pytest.raises(IndexExistsError, match="incomplete index"):
        IndexStore.create(root, DIM, MODEL)
    IndexStore.create(root, DIM, MODEL, overwrite=True).close()
    assert IndexStore.is_index(root)


@pytest.mark.parametrize("dim", [0, -3, 2.5, True])
def test_create_rejects_bad_dim(root: Path, dim) -> None:
    with pytest.raises(ValueError, match="dim"):
        IndexStore.create(root, dim, MODEL)
    assert not root.exists()


def test_create_rejects_bad_model(root: Path) -> None:
    with pytest.raises(TypeError):
        IndexStore.create(root, DIM, ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        IndexStore.create(root, DIM, {"weights": object()})
    assert not root.exists()


# --- open -----------------------------------------------------------------------------------


def test_open_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(NotAnIndexError, match="does not exist") as err:
        IndexStore.open(missing)
    assert str(missing) in str(err.value)


def test_open_folder_with_random_files(tmp_path: Path) -> None:
    folder = tmp_path / "random"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(NotAnIndexError) as err:
        IndexStore.open(folder)
    message = str(err.value)
    assert str(folder) in message
    assert "manifest.json" in message and "records.sqlite" in message
    assert not IndexStore.is_index(folder)


def test_open_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotAnIndexError, match="not a folder"):
        IndexStore.open(target)


def test_open_without_records(store: IndexStore, root: Path) -> None:
    store.close()
    for name in ("records.sqlite", "records.sqlite-wal", "records.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    with pytest.raises(NotAnIndexError, match="records.sqlite"):
        IndexStore.open(root)


def _edit_manifest(root: Path, **changes) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_future_format_version_refused(store: IndexStore, root: Path) -> None:
    store.close()
    _edit_manifest(root, format_version=2)
    with pytest.raises(IndexFormatError) as err:
        IndexStore.open(root)
    assert "index format 2 is newer than this retrieve supports (1): upgrade retrieve" in str(
        err.value
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"format_version": "1"},
        {"format_version": 0},
        {"dim": 0},
        {"dim": "16"},
        {"metric": "l2"},
        {"model": "tiny"},
        {"created": 5},
    ],
)
def test_invalid_manifest_fields_refused(store: IndexStore, root: Path, changes) -> None:
    store.close()
    _edit_manifest(root, **changes)
    with pytest.raises(IndexFormatError, match="manifest.json"):
        IndexStore.open(root)


@pytest.mark.parametrize("content", [b"{broken", b"[1, 2]", b"\xff\xfe\x00"])
def test_corrupt_manifest_refused(store: IndexStore, root: Path, content: bytes) -> None:
    store.close()
    (root / "manifest.json").write_bytes(content)
    with pytest.raises(IndexFormatError, match="manifest.json"):
        IndexStore.open(root)


def test_manifest_dim_mismatch_with_records_refused(store: IndexStore, root: Path) -> None:
    add_items(store, unit_rows(3), ["a"] * 3)
    store.close()
    _edit_manifest(root, dim=DIM * 2)
    with pytest.raises(IndexFormatError, match="vector"):
        IndexStore.open(root)


def test_corrupt_records_refused(store: IndexStore, root: Path) -> None:
    store.close()
    for name in ("records.sqlite-wal", "records.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    (root / "records.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexFormatError, match="records.sqlite"):
        IndexStore.open(root)


def test_records_without_tables_refused(store: IndexStore, root: Path) -> None:
    store.close()
    with closing(sqlite3.connect(root / "records.sqlite")) as conn:
        conn.execute("DROP TABLE meta")
        conn.commit()
    with pytest.raises(IndexFormatError, match="meta"):
        IndexStore.open(root)


def test_errors_share_a_base() -> None:
    for cls in (NotAnIndexError, IndexExistsError, IndexFormatError, VectorError):
        assert issubclass(cls, IndexStoreError)
    assert issubclass(VectorError, ValueError)


# --- bad vectors ----------------------------------------------------------------------------


def _nan_rows() -> np.ndarray:
    x = unit_rows(3)
    x[1, 2] = np.nan
    return x


def _inf_rows() -> np.ndarray:
    x = unit_rows(3)
    x[0, 0] = np.inf
    return x


BAD_VECTORS = {
    "wrong dim": (unit_rows(3, dim=DIM + 1), "dimensions"),
    "1-D": (unit_rows(1)[0], "2-D"),
    "3-D": (unit_rows(3)[None], "2-D"),
    "NaN": (_nan_rows(), "finite"),
    "inf": (_inf_rows(), "finite"),
    "not normalised": (unit_rows(3) * 1.01, "normalised"),
    "zero row": (np.zeros((3, DIM), np.float32), "normalised"),
    "complex": (unit_rows(3).astype(np.complex64), "complex"),
    "strings": (np.full((3, DIM), "a"), "float32"),
    "overflow": (np.full((3, DIM), 1e300), "finite"),
}


@pytest.mark.parametrize("case", list(BAD_VECTORS))
def test_bad_vectors_refused_and_index_unchanged(filled, root: Path, case: str) -> None:
    store, _, _, _ = filled
    vectors, match = BAD_VECTORS[case]
    before = _snapshot(store, root)
    with pytest.raises(VectorError, match=match):
        store.add(vectors, ["x"] * 3, ["/x"] * 3, ["s"] * 3)
    assert _snapshot(store, root) == before


@pytest.mark.parametrize("which", ["labels", "paths", "sha256s"])
def test_length_mismatch_refused_and_index_unchanged(filled, root: Path, which: str) -> None:
    store, _, _, _ = filled
    before = _snapshot(store, root)
    args = {"labels": ["x"] * 3, "paths": ["/x"] * 3, "sha256s": ["s"] * 3}
    args[which] = args[which][:2]
    with pytest.raises(VectorError, match=f"3 vectors but 2 {which}"):
        store.add(unit_rows(3), **args)
    assert _snapshot(store, root) == before


def test_non_string_labels_refused(filled, root: Path) -> None:
    store, _, _, _ = filled
    before = _snapshot(store, root)
    with pytest.raises(TypeError):
        store.add(unit_rows(2), ["a", 3], ["/a", "/b"], ["s", "t"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.add(unit_rows(2), "ab", ["/a", "/b"], ["s", "t"])
    assert _snapshot(store, root) == before


def test_nearly_unit_vectors_accepted(store: IndexStore) -> None:
    x = unit_rows(2) * np.float32(1 + 5e-4)
    assert len(add_items(store, x, ["a", "b"])) == 2


@pytest.mark.parametrize("case", ["wrong dim", "1-D", "NaN"])
def test_bad_queries_refused(filled, case: str) -> None:
    store, _, _, _ = filled
    with pytest.raises(VectorError):
        store.search(BAD_VECTORS[case][0], 3)


def test_queries_need_not_be_unit(filled) -> None:
    store, ids, vectors, _ = filled
    hits = store.search(vectors[:1] * 2, 1)
    assert hits[0][0].id == ids[0]
    assert hits[0][0].score == pytest.approx(2.0, abs=1e-4)
