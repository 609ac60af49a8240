"""The one place that calls FAISS: indexes keyed by id (exact flat and IVF over whole vectors,
by inner product; compact: PCA, IVF and 8-bit codes, by L2), their search, their files, and
which bytes of a file FAISS parses rather than maps."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import ArrayLike

from index.errors import IndexFormatError, VectorError
from index.fsutil import replacing, sha256_file
from index.plan import FLAT, PCA_MIN_VARIANCE, RERANK, Layout, train_size

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


COMPACT_KMEANS_ITERATIONS = 10
"""k-means iterations training a compact index's lists (FAISS's default is 25): at a million
1280-d vectors its training then takes about a minute, and the recall measured with 10 did not
need more."""


def training_rows(layout: Layout, n: int, *, seed: int = 0) -> np.ndarray:
    """Which of ``n`` vectors (positions, sorted) train an index of ``layout``: a seeded sample
    (none for flat)."""
    if layout.type == "flat":
        return np.empty(0, np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, train_size(layout, n), replace=False)).astype(np.int64)


def _pca_keeps(rows: np.ndarray, dims: int, *, at_most: int = 10_000) -> bool:
    """Whether the ``dims`` principal axes of (at most ``at_most`` evenly spaced) ``rows`` keep
    PCA_MIN_VARIANCE of their variance."""
    x = rows[:: max(1, len(rows) // at_most)].astype(np.float64)
    x -= x.mean(0)
    eig = np.linalg.eigvalsh(x.T @ x)[::-1]
    return bool(eig[:dims].sum() >= PCA_MIN_VARIANCE * max(eig.sum(), 1e-30))


def trained_index(layout: Layout, sample: ArrayLike) -> FaissIndex:
    """An empty index of ``layout`` (not flat) trained on the rows ``sample``, its ``nprobe``
    the layout's."""
    rows = as_float32_rows(sample)
    dim = rows.shape[1]
    index: FaissIndex
    if layout.type == "ivf":
        index = faiss.index_factory(dim, f"IVF{layout.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    elif layout.type == "compact":
        pca = f"PCA{layout.pca}," if layout.pca and _pca_keeps(rows, layout.pca) else ""
        index = faiss.index_factory(dim, f"{pca}IVF{layout.nlist},SQ8", faiss.METRIC_L2)
        faiss.extract_index_ivf(index).cp.niter = COMPACT_KMEANS_ITERATIONS
    else:
        raise ValueError(f"no trained index of type {layout.type!r}")
    index.train(rows)
    faiss.extract_index_ivf(index).nprobe = layout.nprobe
    return index


def empty_index(layout: Layout, vectors: ArrayLike, *, seed: int = 0) -> FaissIndex:
    """An empty index of ``layout`` for ``vectors``: an IVF index is trained on a sample of
    them drawn with ``seed`` (``training_rows``), its ``nprobe`` the layout's."""
    rows = as_float32_rows(vectors)
    if layout.type == "flat":
        return new_flat_index(rows.shape[1])
    return trained_index(layout, rows[training_rows(layout, rows.shape[0], seed=seed)])


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


def _ivf(index: FaissIndex) -> Any:
    """The IVF index inside ``index`` (itself, or under a PCA), or None for flat."""
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else faiss.downcast_index(ivf)


def _pca(index: FaissIndex) -> int:
    if isinstance(index, faiss.IndexPreTransform):
        chain: Any = index.chain
        return int(chain.at(0).d_out)
    return 0


def layout(index: FaissIndex) -> Layout:
    """The layout of an index made by ``build_index``."""
    ivf = _ivf(index)
    if ivf is None:
        return FLAT
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        return Layout("compact", int(ivf.nlist), int(ivf.nprobe), _pca(index), RERANK)
    return Layout("ivf", int(ivf.nlist), int(ivf.nprobe))


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


class Excluded:
    """Ids a search must not return (those removed since an index was saved), as FAISS search
    parameters for an index; kept alive with the selector they point to."""

    def __init__(self, index: FaissIndex, ids: np.ndarray) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._batch = faiss.IDSelectorBatch(self.ids)
        self._not = faiss.IDSelectorNot(self._batch)
        ivf = _ivf(index)
        self.params: Any
        if ivf is None:
            self.params = faiss.SearchParameters()
            self.params.sel = self._not
            return
        self._ivf: Any = faiss.SearchParametersIVF()
        self._ivf.sel = self._not
        self._ivf.nprobe = int(ivf.nprobe)
        if isinstance(index, faiss.IndexPreTransform):
            self.params = faiss.SearchParametersPreTransform()
            self.params.index_params = self._ivf
        else:
            self.params = self._ivf


def search(
    index: FaissIndex, queries: ArrayLike, k: int, excluded: Excluded | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (m, k') float32 and ids (m, k') int64 of the best k' = min(k, ntotal) per query,
    best first (for compact, the scores are L2 distances between codes: lowest first), none of
    ``excluded``. A row with fewer than k' hits (IVF lists searched holding fewer, or excluded
    ids) is padded with id -1."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    rows = as_float32_rows(queries)
    kk = min(k, ntotal(index))
    if kk == 0 or rows.shape[0] == 0:
        return np.empty((rows.shape[0], 0), np.float32), np.empty((rows.shape[0], 0), np.int64)
    params = None if excluded is None else excluded.params
    if rows.shape[0] <= FEW_QUERIES:
        threads = faiss.omp_get_max_threads()  # a setting of the calling thread only
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = index.search(rows, kk, params=params)
        finally:
            faiss.omp_set_num_threads(threads)
    else:
        scores, ids = index.search(rows, kk, params=params)
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


def _list_contents(ivf: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, list numbers, codes (n, code_size) uint8) of an IVF index, list by list."""
    lists = ivf.invlists
    size_of = lists.code_size
    id_parts, list_parts = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    code_parts = [np.empty((0, size_of), np.uint8)]
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * size_of)
            id_parts.append(np.array(ids, dtype=np.int64))
            list_parts.append(np.full(size, list_no, np.int64))
            code_parts.append(np.array(codes, dtype=np.uint8).reshape(size, size_of))
    return np.concatenate(id_parts), np.concatenate(list_parts), np.concatenate(code_parts)


def contents(index: FaissIndex) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (n,), vectors float32 (n, dim)) that a flat or ivf index from
    ``build_index`` holds, in id order (a compact index holds codes: see ``codes``)."""
    ivf = _ivf(index)
    if ivf is not None:
        if layout(index).type != "ivf":
            raise ValueError("a compact index holds codes, not vectors")
        ids, _, codes = _list_contents(ivf)
        vectors = codes.view(np.float32).reshape(ids.size, dim(index))
    else:
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        if ids.size == 0:
            return ids, np.empty((0, dim(index)), np.float32)
        vectors = index.index.reconstruct_n(0, ntotal(index))
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(vectors[order], dtype=np.float32)


def codes(index: FaissIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, list numbers, codes (n, code_size) uint8) that an IVF index holds, in id order."""
    ids, lists, found = _list_contents(_ivf(index))
    order = np.argsort(ids, kind="stable")
    return ids[order], lists[order], found[order]


def encode(index: FaissIndex, vectors: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(list numbers, codes) that an IVF index gives ``vectors`` when they are added: what it
    must hold for them."""
    rows = as_float32_rows(vectors)
    ivf = _ivf(index)
    if rows.shape[0] == 0:
        return np.empty(0, np.int64), np.empty((0, ivf.code_size), np.uint8)
    both = index.sa_encode(rows)
    coarse = int(ivf.coarse_code_size())
    raw = both[:, :coarse].astype(np.int64)
    lists = sum(raw[:, b] << (8 * b) for b in range(coarse))
    return np.asarray(lists, np.int64), np.ascontiguousarray(both[:, coarse:])


def write_file(index: FaissIndex, path: str | os.PathLike[str]) -> None:
    """Write ``index`` to the file at ``path`` (FAISS's format)."""
    faiss.write_index(index, str(path))


def write_index(index: FaissIndex, path: str | os.PathLike[str]) -> str:
    """Replace the file at ``path`` with ``index`` atomically; returns the file's hex sha256."""
    with replacing(path) as tmp:
        write_file(index, tmp)
        digest = sha256_file(tmp)
    return digest


def _u64(f: Any, at: int) -> int:
    f.seek(at)
    raw = f.read(8)
    return int(struct.unpack("<Q", raw)[0]) if len(raw) == 8 else -1


def payload(index: FaissIndex, f: Any, size: int) -> tuple[int, int]:
    """(offset, length) of the vectors' codes in the file ``f`` (open, of ``size`` bytes) that
    ``write_file`` made of ``index``: the bytes FAISS maps as they are and does not parse (for
    IVF, each list's codes and ids; for flat, the vectors). Checked against the index; (size,
    0) when the file is not laid out as expected."""
    n = ntotal(index)
    ivf = _ivf(index)
    if n == 0:
        return size, 0
    if ivf is not None:
        lists = ivf.invlists
        length = n * (lists.code_size + 8)
        offset = size - length
        sizes = [lists.list_size(i) for i in range(ivf.nlist)]
        first = next(i for i, m in enumerate(sizes) if m)
        last = max(i for i, m in enumerate(sizes) if m)
        f.seek(offset)
        head = f.read(sizes[first] * lists.code_size)
        f.seek(size - 8 * sizes[last])
        tail = f.read(8 * sizes[last])
        want_head = faiss.rev_swig_ptr(lists.get_codes(first), sizes[first] * lists.code_size)
        want_tail = faiss.rev_swig_ptr(lists.get_ids(last), sizes[last])
        if head == bytes(want_head) and tail == np.array(want_tail, np.int64).tobytes():
            return offset, length
        return size, 0
    length = n * 4 * dim(index)
    offset = size - 8 * n - 8 - length
    if (
        offset >= 8
        and _u64(f, size - 8 * n - 8) == n
        and _u64(f, offset - 8) in (length, n * dim(index))
    ):
        return offset, length
    return size, 0


def _callback_reader(read: Callable[[int], bytes], block: int) -> Any:
    """A FAISS reader pulling bytes through ``read`` (absent from FAISS's type hints)."""
    reader: Any = getattr(faiss, "PyCallbackIOReader")  # noqa: B009
    return reader(read, block)


def _known(index: FaissIndex, path: str | os.PathLike[str]) -> FaissIndex:
    """``index`` if it is of a type ``build_index`` makes, else IndexFormatError."""
    inner = index
    if isinstance(index, faiss.IndexPreTransform):
        chain: Any = index.chain
        if chain.size() != 1 or not isinstance(
            faiss.downcast_VectorTransform(chain.at(0)), faiss.PCAMatrix
        ):
            inner = None
        else:
            inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIDMap2):
        known = isinstance(faiss.downcast_index(inner.index), faiss.IndexFlat)
        metric = faiss.METRIC_INNER_PRODUCT
    elif type(inner) is faiss.IndexIVFFlat:
        known, metric = True, faiss.METRIC_INNER_PRODUCT
    elif type(inner) is faiss.IndexIVFScalarQuantizer:
        known = inner.sq.qtype == faiss.ScalarQuantizer.QT_8bit
        metric = faiss.METRIC_L2
    else:
        known, metric = False, -1
    if inner is not index and not isinstance(inner, faiss.IndexIVFScalarQuantizer):
        known = False
    if not known or inner.metric_type != metric or index.metric_type != metric:
        raise IndexFormatError(
            f"{path} holds a {type(index).__name__}, not an index of the types retrieve writes "
            "(id-mapped flat or IVF-flat by inner product, IVF-SQ8 by L2)"
        )
    return index


def read_index(path: str | os.PathLike[str], *, sha256: str | None = None) -> FaissIndex:
    """Read an index written by ``write_index`` (into memory). With ``sha256``, the file's
    content must have that hash (checked before FAISS parses it, on the same open file).
    IndexFormatError when it cannot be used."""
    with Path(path).open("rb") as f:
        return read_open(f, path, sha256=sha256)


def read_open(f: Any, path: str | os.PathLike[str], *, sha256: str | None = None) -> FaissIndex:
    """``read_index`` of the open file ``f`` (read from its start)."""
    f.seek(0)
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
    return _known(index, path)


def map_index(path: str | os.PathLike[str]) -> FaissIndex:
    """The index in the file at ``path`` with its vectors' codes mapped from the file, not read:
    pages are read when a search touches them, and shared by every process mapping the file.
    The index must never be changed (FAISS aborts the process): copy it (``copy``) first.
    IndexFormatError when it cannot be used."""
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:
        raise IndexFormatError(f"{path} is not a readable FAISS index: {exc}") from exc
    return _known(index, path)


def copy(index: FaissIndex) -> FaissIndex:
    """A copy of ``index`` in memory of its own (of a mapped index too), free to change."""
    return faiss.deserialize_index(faiss.serialize_index(index))
