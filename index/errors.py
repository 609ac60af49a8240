"""Typed errors of the vector store; all derive from IndexStoreError. A message is one line:
control characters in it (a file name may hold a newline) are shown escaped."""

from __future__ import annotations

import unicodedata

_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})


def one_line(text: str) -> str:
    """``text`` with its control characters and line or paragraph separators escaped as
    Python writes them (a newline as \\n, a NUL as \\x00)."""
    if text.isprintable():
        return text
    return "".join(
        repr(ch)[1:-1] if unicodedata.category(ch) in _LINE_BREAKING else ch for ch in text
    )


class IndexStoreError(Exception):
    """Base of every error the index package raises on purpose."""

    def __str__(self) -> str:
        return one_line(super().__str__())


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
