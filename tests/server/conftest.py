"""Fixtures of the server tests: one tiny index for the package, and a copy for a test that
changes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import build_tiny_index, copy_index


@pytest.fixture(scope="package")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_index(tmp_path_factory.mktemp("served"))


@pytest.fixture
def index(built: Path, tmp_path: Path) -> Path:
    """A copy of the built index that the test may change."""
    return copy_index(built, tmp_path / "index")
