"""The one place that calls FAISS: inner-product indexes keyed by id (exact flat, or IVF over
flat codes), their search and their files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import ArrayLike

from index.errors import IndexFormatError, VectorError
from index.fsutil import replacing, sha256_file
from index.plan import FLAT, Layout, train_size

_READ_BLOCK = 1 << 20

FaissIndex = Any
"""A FAISS index (SWIG objects, which FAISS's own type hints describe only in part)."""


def as_float32_rows(x: ArrayLike) -> np.ndarray:
    """``x`` as a 2-D, C-contiguous float32 array of finite values, else VectorError."""
    if np.iscomplexobj(x):
        raise VectorError("vectors must be real numbers, not complex")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise VectorError(f"vectors must be numbers convertible to float32: {exc}") from exc
    if arr.ndim != 2:
        raise VectorError(f"vectors must be a 2-D (n, dim) array, not shape {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise VectorError(
            f"vectors must be finite: {bad.size} row(s) hold NaN or infinity "
            f"(first: row {bad[0]}, after conversion to float32)"
        )
    return np.ascontiguousarray(arr)


def new_flat_index(dim: int) -> FaissIndex:
    """An empty exact inner-product index over ``dim``-d vectors, keyed by caller-chosen ids."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def empty_index(layout: Layout, vectors: ArrayLike, *, seed: int = 0) -> FaissIndex:
    """An empty index of ``layout`` for ``vectors``: an IVF index is trained on a sample of
    them drawn with ``seed``, its ``nprobe`` the layout's."""
    rows = as_float32_rows(vectors)
    if layout.type == "flat":
        return new_flat_index(rows.shape[1])
    index: FaissIndex = faiss.index_factory(
        rows.shape[1], f"IVF{layout.nlist},Flat", faiss.METRIC_INNER_PRODUCT
    )
    n = rows.shape[0]
    sample = np.sort(np.random.default_rng(seed).choice(n, train_size(layout, n), replace=False))
    index.train(rows[sample])
    index.nprobe = layout.nprobe
    return index


def build_index(layout: Layout, ids: ArrayLike, vectors: ArrayLike, *, seed: int = 0) -> FaissIndex:
    """An index of ``layout`` holding ``vectors`` under ``ids`` (see ``empty_index``)."""
    index = empty_index(layout, vectors, seed=seed)
    add_with_ids(index, vectors, ids)
    return index


def to_bytes(index: FaissIndex) -> np.ndarray:
    """An index serialised to a uint8 array (to send it to another process)."""
    return faiss.serialize_index(index)


def from_bytes(data: np.ndarray) -> FaissIndex:
    """An index serialised by ``to_bytes``."""
    return faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))


def merge(into: FaissIndex, part: FaissIndex) -> None:
    """Move the vectors of ``part`` into ``into``, an index of the same layout (for IVF, the
    same trained lists); each list keeps ``into``'s entries first, then ``part``'s."""
    into.merge_from(part, 0)


def add_part(blob: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The empty trained index ``blob`` (``to_bytes``) with these vectors added, serialised:
    the work of one process of a parallel build (see ``build_in_parts``)."""
    index = from_bytes(blob)
    add_with_ids(index, vectors, ids)
    return to_bytes(index)


PartsRunner = Callable[[np.ndarray, list[tuple[np.ndarray, np.ndarray]]], Iterable[np.ndarray]]
"""(blob, [(ids, vectors), ...]) -> add_part's result for each part, in order, run anywhere."""


def build_in_parts(
    layout: Layout, ids: ArrayLike, vectors: ArrayLike, parts: int, run: PartsRunner
) -> FaissIndex:
    """``build_index`` with the vectors added by ``run`` in ``parts`` slices (e.g. in parallel
    on a cluster) and merged in order, so that each IVF list holds the same ids in the same
    order as when added in one go. The IVF quantizer is trained here on the usual sample."""
    rows = as_float32_rows(vectors)
    keys = _as_ids(ids)
    index = empty_index(layout, rows)
    slices = [s for s in np.array_split(np.arange(keys.size), parts) if s.size]
    for part in run(to_bytes(index), [(keys[s], rows[s]) for s in slices]):
        merge(index, from_bytes(part))
    return index


def layout(index: FaissIndex) -> Layout:
    """The layout of an index made by ``build_index``."""
    if isinstance(index, faiss.IndexIVF):
        return Layout("ivf", int(index.nlist), int(index.nprobe))
    return FLAT


def dim(index: FaissIndex) -> int:
    return int(index.d)


def ntotal(index: FaissIndex) -> int:
    return int(index.ntotal)


def _as_ids(ids: ArrayLike) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)


def add_with_ids(index: FaissIndex, vectors: ArrayLike, ids: ArrayLike) -> None:
    """Add one vector per id."""
    rows = as_float32_rows(vectors)
    keys = _as_ids(ids)
    if rows.shape[0] != keys.shape[0]:
        raise VectorError(f"{rows.shape[0]} vectors but {keys.shape[0]} ids")
    if keys.size:
        index.add_with_ids(rows, keys)


def remove_ids(index: FaissIndex, ids: ArrayLike) -> int:
    """Remove the vectors under ``ids``; returns how many were there."""
    keys = _as_ids(ids)
    if not keys.size:
        return 0
    return int(index.remove_ids(keys))


FEW_QUERIES = 8
"""Up to this many queries are searched by the calling thread alone: FAISS's OpenMP team costs
more than it gains on so few (one query of 2,949 1280-d vectors: 1.3 ms alone, 5-6 ms with 2
threads on a busy 2-core machine), and a server's requests each bring one query anyway."""


def search(index: FaissIndex, queries: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (m, k') float32 and ids (m, k') int64 of the best k' = min(k, ntotal) per query,
    best first. An IVF index pads with id -1 a row whose searched lists hold fewer than k'."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    rows = as_float32_rows(queries)
    kk = min(k, ntotal(index))
    if kk == 0 or rows.shape[0] == 0:
        return np.empty((rows.shape[0], 0), np.float32), np.empty((rows.shape[0], 0), np.int64)
    if rows.shape[0] <= FEW_QUERIES:
        threads = faiss.omp_get_max_threads()  # a setting of the calling thread only
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = index.search(rows, kk)
        finally:
            faiss.omp_set_num_threads(threads)
    else:
        scores, ids = index.search(rows, kk)
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


def _ivf_contents(index: FaissIndex) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of an IVF index over flat codes, list by list."""
    lists = index.invlists
    id_parts, vector_parts = [np.empty(0, np.int64)], [np.empty((0, dim(index)), np.float32)]
    for list_no in range(index.nlist):
        size = lists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * lists.code_size)
            id_parts.append(np.array(ids, dtype=np.int64))
            vector_parts.append(np.frombuffer(codes, dtype=np.float32).reshape(size, -1).copy())
    return np.concatenate(id_parts), np.concatenate(vector_parts)


def contents(index: FaissIndex) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (n,), vectors float32 (n, dim)) that an index from ``build_index`` holds,
    in id order."""
    if isinstance(index, faiss.IndexIVF):
        ids, vectors = _ivf_contents(index)
    else:
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        if ids.size == 0:
            return ids, np.empty((0, dim(index)), np.float32)
        vectors = index.index.reconstruct_n(0, ntotal(index))
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(vectors[order], dtype=np.float32)


def write_index(index: FaissIndex, path: str | os.PathLike[str]) -> str:
    """Replace the file at ``path`` with ``index`` atomically; returns the file's hex sha256."""
    with replacing(path) as tmp:
        faiss.write_index(index, str(tmp))
        digest = sha256_file(tmp)
    return digest


def _callback_reader(read: Callable[[int], bytes], block: int) -> Any:
    """A FAISS reader pulling bytes through ``read`` (absent from FAISS's type hints)."""
    reader: Any = getattr(faiss, "PyCallbackIOReader")  # noqa: B009
    return reader(read, block)


def read_index(path: str | os.PathLike[str], *, sha256: str | None = None) -> FaissIndex:
    """Read an index written by ``write_index``. With ``sha256``, the file's content must have
    that hash (checked before FAISS parses it, on the same open file). IndexFormatError when it
    cannot be used."""
    with Path(path).open("rb") as f:
        if sha256 is not None:
            digest = hashlib.sha256()
            while block := f.read(_READ_BLOCK):
                digest.update(block)
            if digest.hexdigest() != sha256:
                raise IndexFormatError(f"{path} does not have the expected sha256 {sha256}")
            f.seek(0)
        try:
            index = faiss.read_index(_callback_reader(f.read, _READ_BLOCK))
        except RuntimeError as exc:
            raise IndexFormatError(f"{path} is not a readable FAISS index: {exc}") from exc
    if isinstance(index, faiss.IndexIDMap2):
        known = isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)
    else:
        known = type(index) is faiss.IndexIVFFlat
    if not known or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFormatError(
            f"{path} holds a {type(index).__name__}, not an id-mapped flat or IVF-flat IP index"
        )
    return index
