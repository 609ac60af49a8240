"""Fixtures for the index tests: a fresh store and a populated one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index import IndexStore

from ..helpers import DIM, MODEL, add_items, unit_rows

LABELS = ["amsel", "buchfink", "kohlmeise"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "idx"


@pytest.fixture
def store(root: Path) -> Iterator[IndexStore]:
    with IndexStore.create(root, DIM, MODEL) as s:
        yield s


@pytest.fixture
def filled(store: IndexStore) -> tuple[IndexStore, np.ndarray, np.ndarray, list[str]]:
    """A store with 30 items, 10 per label; returns (store, ids, vectors, labels)."""
    vectors = unit_rows(30, seed=1)
    labels = [LABELS[i % 3] for i in range(30)]
    ids = add_items(store, vectors, labels)
    return store, ids, vectors, labels
