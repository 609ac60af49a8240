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
from index.store import Hit, IndexStore, Item

__all__ = [
    "FORMAT_VERSION",
    "Hit",
    "IndexExistsError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexStore",
    "IndexStoreError",
    "Item",
    "Manifest",
    "NotAnIndexError",
    "VectorError",
]
