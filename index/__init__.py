"""Persistent vector store: SQLite records plus a derived FAISS inner-product index."""

from __future__ import annotations

from index.errors import (
    IndexExistsError,
    IndexFormatError,
    IndexLockedError,
    IndexStoreError,
    NotAnIndexError,
    VectorError,
)
from index.manifest import FORMAT_VERSION, Manifest
from index.plan import AUTO_IVF_ABOVE, INDEX_TYPES, Layout
from index.store import Hit, IndexStore, Item

__all__ = [
    "AUTO_IVF_ABOVE",
    "FORMAT_VERSION",
    "Hit",
    "IndexExistsError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexStore",
    "IndexStoreError",
    "INDEX_TYPES",
    "Item",
    "Layout",
    "Manifest",
    "NotAnIndexError",
    "VectorError",
]
