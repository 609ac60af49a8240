"""The synthetic fine-grained gallery: deterministic, well laid out, and hard but learnable."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.datasets.synthetic import (
    BUILDS,
    N_SPECIES,
    PATTERNS,
    WING_COLOURS,
    SpeciesSpec,
    draw,
    make_gallery,
    species,
)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.int16)


def test_species_are_distinct_readable_and_stable() -> None:
    every = species(N_SPECIES)
    assert len(every) == N_SPECIES == len(WING_COLOURS) * len(PATTERNS) * len(BUILDS)
    assert len({s.name for s in every}) == N_SPECIES
    assert len({(s.wing_colour, s.pattern, s.build) for s in every}) == N_SPECIES
    for s in every:
        assert s.name == f"{s.wing_colour}_{s.pattern}_{s.build}"
        assert s.wing_rgb == WING_COLOURS[s.wing_colour]
        assert s.aspect == BUILDS[s.build]
    assert species(5) == every[:5]
    assert species(8, seed=3) == species(8, seed=3)
    assert species(8, seed=3) != species(8, seed=4)


@pytest.mark.parametrize("n", [0, -1, N_SPECIES + 1])
def test_species_out_of_range(n: int) -> None:
    with pytest.raises(ValueError, match="species"):
        species(n)


@pytest.mark.parametrize("size", [32, 64, 97, 160])
def test_draw_is_rgb_of_the_requested_size(size: int) -> None:
    img = draw(species(1)[0], np.random.default_rng(0), size)
    assert img.mode == "RGB"
    assert img.size == (size, size)


def test_draw_rejects_tiny_sizes() -> None:
    with pytest.raises(ValueError, match="size"):
        draw(species(1)[0], np.random.default_rng(0), 8)


def test_draw_is_deterministic_for_a_seed() -> None:
    spec = species(1)[0]
    a = pixels(draw(spec, np.random.default_rng(7), 64))
    b = pixels(draw(spec, np.random.default_rng(7), 64))
    c = pixels(draw(spec, np.random.default_rng(8), 64))
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 5


@pytest.mark.parametrize("attribute", ["wing_colour", "pattern", "build"])
def test_each_attribute_shows_on_the_bird_only(attribute: str) -> None:
    """Equally seeded, two species that differ in one detail share the scene but not the bird."""
    base = SpeciesSpec("crimson_plain_slender", "crimson", "plain", "slender")
    other_value = {"wing_colour": "azure", "pattern": "striped", "build": "round"}[attribute]
    fields = dataclasses.asdict(base) | {attribute: other_value}
    fields["name"] = f"{fields['wing_colour']}_{fields['pattern']}_{fields['build']}"
    other = SpeciesSpec(**fields)
    for seed in range(3):
        a = pixels(draw(base, np.random.default_rng(seed), 96))
        b = pixels(draw(other, np.random.default_rng(seed), 96))
        changed = (np.abs(a - b) > 12).any(axis=-1).mean()
        assert 0.005 < changed < 0.35, (attribute, seed, changed)


def test_gallery_layout_and_counts(tmp_path: Path) -> None:
    out = make_gallery(tmp_path / "g", n_classes=3, per_class=4, size=48)
    assert list(out) == [s.name for s in species(3)]
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(out)
    for label, paths in out.items():
        assert paths == [tmp_path / "g" / label / f"{j:03d}.jpg" for j in range(4)]
        assert sorted((tmp_path / "g" / label).iterdir()) == paths
        for p in paths:
            with Image.open(p) as img:
                assert img.format == "JPEG"
                assert img.mode == "RGB"
                assert img.size == (48, 48)


def test_gallery_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def contents(folder: str, seed: int) -> list[bytes]:
        out = make_gallery(tmp_path / folder, n_classes=2, per_class=3, seed=seed, size=48)
        return [p.read_bytes() for paths in out.values() for p in paths]

    first, again, other = contents("a", 1), contents("b", 1), contents("c", 2)
    assert first == again
    assert all(x != y for x, y in zip(first, other, strict=True))


def test_start_gives_classes_disjoint_from_a_first_gallery(tmp_path: Path) -> None:
    first = make_gallery(tmp_path / "a", n_classes=4, per_class=1, size=32, seed=5)
    new = make_gallery(tmp_path / "b", n_classes=3, per_class=1, size=32, seed=5, start=4)
    assert not set(first) & set(new)
    assert [*first, *new] == [s.name for s in species(7, seed=5)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_classes": N_SPECIES + 1},
        {"n_classes": 2, "start": N_SPECIES - 1},
        {"n_classes": 0},
        {"per_class": 0},
        {"start": -1},
    ],
)
def test_gallery_rejects_bad_counts(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        make_gallery(tmp_path / "g", size=32, **kwargs)
    assert not (tmp_path / "g").exists()


def hue_histogram(img: Image.Image) -> np.ndarray:
    """Share of the picture in each of 24 hues, counting only vivid pixels."""
    hsv = np.asarray(img.convert("HSV"), np.float32) / 255
    vivid = (hsv[..., 1] > 0.45) & (hsv[..., 2] > 0.25)
    counts = np.histogram(hsv[..., 0][vivid], bins=24, range=(0, 1))[0]
    return counts / vivid.size


def test_classes_are_learnable_but_not_trivial() -> None:
    """A crude colour feature beats chance; raw pixels do not solve it; no two images repeat."""
    n, per = 8, 10
    specs = species(n)
    imgs = [
        [draw(s, np.random.default_rng([0, i, j]), 64) for j in range(per)]
        for i, s in enumerate(specs)
    ]
    labels = np.repeat(np.arange(n), per // 2)

    def split(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gallery = features[:, : per // 2].reshape(n * (per // 2), -1)
        queries = features[:, per // 2 :].reshape(n * (per // 2), -1)
        return gallery, queries

    hues = np.array([[hue_histogram(im) for im in row] for row in imgs])
    gallery, queries = split(hues)
    means = gallery.reshape(n, per // 2, -1).mean(axis=1)
    nearest_mean = ((queries[:, None] - means[None]) ** 2).sum(-1).argmin(axis=1)
    assert (nearest_mean == labels).mean() >= 2.5 / n

    raw = np.array(
        [[np.asarray(im.resize((16, 16)), np.float32).ravel() for im in row] for row in imgs]
    )
    gallery, queries = split(raw)
    nearest = labels[((queries[:, None] - gallery[None]) ** 2).sum(-1).argmin(axis=1)]
    assert (nearest == labels).mean() < 0.9

    flat = raw.reshape(n * per, -1)
    for a, b in itertools.combinations(range(n * per), 2):
        assert not np.array_equal(flat[a], flat[b])
