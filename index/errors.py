"""Typed errors of the vector store; all derive from IndexStoreError."""

from __future__ import annotations


class IndexStoreError(Exception):
    """Base of every error the index package raises on purpose."""


class NotAnIndexError(IndexStoreError):
    """A folder that is missing or lacks the files of an index."""


class IndexExistsError(IndexStoreError):
    """An index cannot be created where an index or other files already are."""


class IndexFormatError(IndexStoreError):
    """Index files that are corrupt, unreadable, inconsistent or from a newer format."""


class IndexLockedError(IndexStoreError):
    """Another process kept the writer lock of an index longer than this one would wait."""


class VectorError(IndexStoreError, ValueError):
    """Vectors of the wrong shape, type or norm, or not one per label."""
