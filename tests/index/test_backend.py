"""The FAISS wrapper (padding stripped, ids kept, files checked); `import index` loads no torch."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import IndexFormatError, VectorError, backend, plan

from ..helpers import unit_rows

REPO = Path(__file__).resolve().parents[2]


def _index(n: int, dim: int = 8) -> tuple[object, np.ndarray, np.ndarray]:
    index = backend.new_flat_index(dim)
    vectors = unit_rows(n, dim=dim, seed=5)
    ids = np.arange(100, 100 + 7 * n, 7, dtype=np.int64)
    backend.add_with_ids(index, vectors, ids)
    return index, ids, vectors


def test_search_strips_padding() -> None:
    index, ids, _ = _index(3)
    scores, got = backend.search(index, unit_rows(2, dim=8), 10)
    assert scores.shape == got.shape == (2, 3)
    assert scores.dtype == np.float32 and got.dtype == np.int64
    assert (got >= 0).all()
    assert set(got[0].tolist()) == set(ids.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()


def test_few_queries_search_like_many_and_leave_the_thread_count() -> None:
    index, _, _ = _index(500)
    queries = unit_rows(backend.FEW_QUERIES + 1, dim=8, seed=9)
    threads = faiss.omp_get_max_threads()
    many = backend.search(index, queries, 5)
    for row in range(len(queries)):
        scores, ids = backend.search(index, queries[row : row + 1], 5)
        np.testing.assert_array_equal(ids[0], many[1][row])
        np.testing.assert_allclose(scores[0], many[0][row], atol=1e-6)
    assert faiss.omp_get_max_threads() == threads


def test_search_empty_index() -> None:
    index = backend.new_flat_index(8)
    scores, ids = backend.search(index, unit_rows(4, dim=8), 5)
    assert scores.shape == ids.shape == (4, 0)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_search_k_below_one() -> None:
    index, _, _ = _index(3)
    with pytest.raises(ValueError):
        backend.search(index, unit_rows(1, dim=8), 0)


def test_remove_ids_keeps_other_ids() -> None:
    index, ids, vectors = _index(5)
    assert backend.remove_ids(index, [ids[1], ids[3], 99999]) == 2
    assert backend.remove_ids(index, []) == 0
    assert backend.ntotal(index) == 3
    _, got = backend.search(index, vectors[[0, 2, 4]], 1)
    assert got[:, 0].tolist() == [ids[0], ids[2], ids[4]]


def test_add_with_ids_length_mismatch() -> None:
    index = backend.new_flat_index(8)
    with pytest.raises(VectorError):
        backend.add_with_ids(index, unit_rows(3, dim=8), [1, 2])


def test_as_float32_rows() -> None:
    x = backend.as_float32_rows(np.asfortranarray(np.ones((3, 4), np.float64)))
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (3, 4)
    assert backend.as_float32_rows([[1, 2], [3, 4]]).dtype == np.float32
    big_endian = np.ones((2, 2), dtype=">f4")
    assert backend.as_float32_rows(big_endian).dtype == np.dtype(np.float32)
    for bad in (np.ones(3), np.ones((1, 2, 3)), [[np.nan, 1.0]], [["a", "b"]]):
        with pytest.raises(VectorError):
            backend.as_float32_rows(bad)


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    index, ids, vectors = _index(6)
    path = tmp_path / "v.faiss"
    digest = backend.write_index(index, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["v.faiss"]
    again = backend.read_index(path, sha256=digest)
    assert backend.ntotal(again) == 6 and backend.dim(again) == 8
    _, got = backend.search(again, vectors, 1)
    assert got[:, 0].tolist() == ids.tolist()


def test_read_index_checks_hash_and_content(tmp_path: Path) -> None:
    index, _, _ = _index(2)
    path = tmp_path / "v.faiss"
    backend.write_index(index, path)
    with pytest.raises(IndexFormatError, match="sha256"):
        backend.read_index(path, sha256="0" * 64)
    path.write_bytes(os.urandom(100))
    with pytest.raises(IndexFormatError, match="not a readable FAISS index"):
        backend.read_index(path)


def test_import_index_does_not_load_torch_or_pil() -> None:
    code = (
        "import sys, index, index.store, index.backend, index.records, index.manifest\n"
        "heavy = sorted(m for m in ('torch', 'PIL', 'torchvision') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=60)


def test_read_index_refuses_other_faiss_indexes(tmp_path: Path) -> None:
    path = tmp_path / "v.faiss"
    l2_ivf = faiss.index_factory(8, "IVF2,Flat", faiss.METRIC_L2)
    dedup = faiss.index_factory(8, "IVF2,FlatDedup", faiss.METRIC_INNER_PRODUCT)
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(8, 4))
    for other in (faiss.IndexFlatIP(8), hnsw, l2_ivf, dedup):
        faiss.write_index(other, str(path))
        with pytest.raises(IndexFormatError, match="not an index of the types retrieve writes"):
            backend.read_index(path)


def test_ivf_contents_and_remove_keep_ids() -> None:
    vectors = unit_rows(200, dim=8, seed=6)
    ids = np.arange(1000, 1200, dtype=np.int64)
    index = backend.build_index(plan.choose("ivf", 200), ids[::-1], vectors[::-1])
    assert backend.layout(index).type == "ivf"
    assert backend.remove_ids(index, ids[:50]) == 50
    got_ids, got_vectors = backend.contents(index)
    np.testing.assert_array_equal(got_ids, ids[50:])
    np.testing.assert_array_equal(got_vectors, vectors[50:])
