"""Persistent vector store: SQLite records plus a derived FAISS inner-product index.

Everything outside this package uses the names below and no module of it directly."""

from __future__ import annotations

from index.backend import PartsRunner, add_part, build_in_parts
from index.backend import build_index as build_faiss
from index.check import CheckReport, check_index, repair_index
from index.errors import (
    IndexExistsError,
    IndexFormatError,
    IndexLockedError,
    IndexStoreError,
    NotAnIndexError,
    VectorError,
    one_line,
)
from index.folder import MANIFEST, RECORDS, VECTORS
from index.fsutil import (
    NotRegularFileError,
    aside_name,
    atomic_write_bytes,
    exchange,
    not_regular,
    open_regular,
    replacing,
    sha256_file,
)
from index.lock import LOCK_FILE, writer_lock
from index.manifest import FORMAT_VERSION, Manifest, read_manifest
from index.plan import AUTO_COMPACT_ABOVE, INDEX_TYPES, Layout
from index.store import Builder, Hit, IndexStore, Item

__all__ = [
    "AUTO_COMPACT_ABOVE",
    "FORMAT_VERSION",
    "INDEX_TYPES",
    "LOCK_FILE",
    "MANIFEST",
    "RECORDS",
    "VECTORS",
    "Builder",
    "CheckReport",
    "Hit",
    "IndexExistsError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexStore",
    "IndexStoreError",
    "Item",
    "Layout",
    "Manifest",
    "NotAnIndexError",
    "NotRegularFileError",
    "PartsRunner",
    "VectorError",
    "add_part",
    "aside_name",
    "atomic_write_bytes",
    "build_faiss",
    "build_in_parts",
    "check_index",
    "exchange",
    "not_regular",
    "one_line",
    "open_regular",
    "read_manifest",
    "repair_index",
    "sha256_file",
    "writer_lock",
    "replacing",
]
