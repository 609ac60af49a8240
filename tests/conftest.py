"""The fixture every test package may use: a tiny synthetic gallery (helpers.py holds the
shared helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import COLORS, build_tiny_index, copy_index, write_image


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    """Three colour classes x 4 images, one nested a level deeper."""
    root = tmp_path / "gallery"
    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(4):
            sub = root / label / ("nested" if j == 3 else "")
            write_image(sub / f"{j}.png", color, seed=ci * 10 + j)
    return root


@pytest.fixture
def tiny_index(tmp_path: Path) -> Path:
    """An index of the tiny network over 4 noisy images of each of COLORS, built through the
    public API (tmp_path/g the gallery, tmp_path/idx the index)."""
    import retrieval

    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(4):
            write_image(tmp_path / "g" / label / f"{j}.png", color, seed=10 * ci + j)
    retrieval.build(tmp_path / "g", tmp_path / "idx", model="tiny")
    return tmp_path / "idx"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny index for the session (build_tiny_index): never changed; ``index`` copies it."""
    return build_tiny_index(tmp_path_factory.mktemp("served"))


@pytest.fixture
def index(built: Path, tmp_path: Path) -> Path:
    """A copy of the built index that the test may change."""
    return copy_index(built, tmp_path / "index")
