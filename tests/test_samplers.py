"""PKSampler: batch composition, reproducibility, small classes and early failures."""

from __future__ import annotations

from collections import Counter

import pytest

from retrieval.training.samplers import PKSampler


def _labels(sizes: dict[str, int]) -> list[str]:
    return [name for name, size in sizes.items() for _ in range(size)]


def test_every_batch_has_p_classes_times_k_images() -> None:
    labels = _labels({f"c{i}": 6 + i for i in range(10)})
    sampler = PKSampler(labels, p=4, k=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) == 12
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 4
        assert set(counts.values()) == {3}
        assert len(set(batch)) == 12, "classes with >= k images give k distinct images"
        assert all(isinstance(i, int) and 0 <= i < len(labels) for i in batch)


def test_len_defaults_to_one_pass_and_honours_batches() -> None:
    labels = _labels({f"c{i}": 5 for i in range(8)}) + ["lonely"]
    assert len(PKSampler(labels, p=2, k=4)) == 40 // 8
    assert len(PKSampler(labels, p=8, k=8)) == 1
    sampler = PKSampler(labels, p=2, k=2, batches=7)
    assert len(sampler) == 7
    assert len(list(sampler)) == 7


def test_one_epoch_covers_images_without_replacement_as_far_as_possible() -> None:
    labels = _labels({f"c{i}": 4 for i in range(6)})
    batches = list(PKSampler(labels, p=2, k=4, seed=3))
    assert len(batches) == 3
    assert sorted(i for batch in batches for i in batch) == list(range(24))


def test_same_seed_and_epoch_reproduce_and_set_epoch_changes() -> None:
    labels = _labels({f"c{i}": 7 for i in range(12)})
    a = PKSampler(labels, p=3, k=4, seed=5)
    b = PKSampler(labels, p=3, k=4, seed=5)
    assert list(a) == list(b)
    assert list(a) == list(a)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PKSampler(labels, p=3, k=4, seed=6)) != first


def test_small_classes_fill_up_with_replacement() -> None:
    labels = ["a", "a", "b", "b", "b", "c", "c"]
    sampler = PKSampler(labels, p=3, k=5, batches=4)
    for batch in sampler:
        counts = Counter(labels[i] for i in batch)
        assert counts == {"a": 5, "b": 5, "c": 5}
        assert {i for i in batch if labels[i] == "a"} == {0, 1}
        assert {i for i in batch if labels[i] == "b"} == {2, 3, 4}


def test_single_image_classes_are_dropped_and_counted() -> None:
    labels = ["a", "a", "b", "b", "x", "y", "z"]
    sampler = PKSampler(labels, p=2, k=2, batches=5)
    assert sampler.dropped_classes == 3
    assert all(labels[i] in {"a", "b"} for batch in sampler for i in batch)


def test_integer_labels_work() -> None:
    labels = [0, 0, 1, 1, 2, 2, 2]
    for batch in PKSampler(labels, p=2, k=2, batches=3):
        assert len({labels[i] for i in batch}) == 2


@pytest.mark.parametrize(("p", "k"), [(1, 4), (4, 1), (0, 0)])
def test_p_or_k_below_two_fails(p: int, k: int) -> None:
    with pytest.raises(ValueError, match=r"p >= 2 .* k >= 2"):
        PKSampler(_labels({f"c{i}": 5 for i in range(8)}), p=p, k=k)


def test_too_few_usable_classes_fails_with_counts() -> None:
    labels = _labels({f"c{i}": 3 for i in range(5)}) + ["x", "y", "z"]
    with pytest.raises(ValueError) as err:
        PKSampler(labels, p=8, k=2)
    message = str(err.value)
    expected = "at least 8 classes with >= 2 images; the data has 5 (3 classes have a single image)"
    assert expected in message
    assert "lower p" in message


def test_only_single_image_classes_fails() -> None:
    with pytest.raises(ValueError, match=r"the data has 0 \(4 classes have a single image\)"):
        PKSampler(["a", "b", "c", "d"], p=2, k=2)


def test_bad_batches_fails() -> None:
    with pytest.raises(ValueError, match="batches must be >= 1"):
        PKSampler(_labels({"a": 2, "b": 2}), p=2, k=2, batches=0)
