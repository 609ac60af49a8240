"""Miners and losses on hand-built unit-circle embeddings whose right answers are written down."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retrieval.training.losses import (
    ContrastiveLoss,
    MetricLoss,
    MultiSimilarityLoss,
    ProxyAnchorLoss,
    TripletLoss,
    make_loss,
)
from retrieval.training.miners import (
    BatchHardMiner,
    HardPairMiner,
    Miner,
    MultiSimilarityMiner,
    SemiHardMiner,
    make_miner,
)

SQRT3_2 = math.sqrt(3) / 2


def circle(degrees: list[float]) -> torch.Tensor:
    """(n, 2) float32 unit rows at the given angles: sim(i, j) = cos(angle_i - angle_j)."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


# Seven points: class 0 at 0°, 30°, 100°; class 1 at 45°, 160°, 215°; class 2 (one point) at 300°.
# Similarities used below (cosines of angle gaps), row by row:
#   0: 1 .866  2 -.174  3 .707  4 -.940  5 -.819  6 .500
#   1: 0 .866  2 .342   3 .966  4 -.643  5 -.996  6 .000
#   2: 0 -.174 1 .342   3 .574  4 .500   5 -.423  6 -.940
#   3: 0 .707  1 .966   2 .574  4 -.423  5 -.985  6 -.259
#   4: 0 -.940 1 -.643  2 .500  3 -.423  5 .574   6 -.766
#   5: 0 -.819 1 -.996  2 -.423 3 -.985  4 .574   6 .087
CIRCLE = circle([0, 30, 100, 45, 160, 215, 300])
CIRCLE_LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 2])

# Four points, two classes: class 0 at 0° and 60°, class 1 at 90° and 180°.
# sim: 0-1 .5, 0-2 0, 0-3 -1, 1-2 √3/2, 1-3 -.5, 2-3 0.
SMALL = circle([0, 60, 90, 180])
SMALL_LABELS = torch.tensor([0, 0, 1, 1])


def as_lists(indices: tuple[torch.Tensor, ...]) -> list[list[int]]:
    return [t.tolist() for t in indices]


def random_batch(seed: int, n: int = 40, classes: int = 8, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return embeddings, labels


# ---- miners ----------------------------------------------------------------------------------


def test_batch_hard_picks_hardest_positive_and_negative_per_anchor() -> None:
    # Anchor 6 has no positive and is skipped; anchor 5's hardest negative is the lone point 6.
    assert as_lists(BatchHardMiner()(CIRCLE, CIRCLE_LABELS)) == [
        [0, 1, 2, 3, 4, 5],
        [2, 2, 0, 5, 3, 3],
        [3, 3, 3, 1, 2, 6],
    ]


def test_semi_hard_keeps_hardest_negative_inside_the_margin() -> None:
    # margin .4: (0,1) s=.866 window (.466, .866) holds 3 (.707) and 6 (.5) -> 3;
    # (1,0) drops 3 (.966, harder than the positive); (4,3) s=-.423 holds 1 (-.643), 6 (-.766) -> 1.
    assert as_lists(SemiHardMiner(margin=0.4)(CIRCLE, CIRCLE_LABELS)) == [
        [0, 1, 2, 4, 4, 5],
        [1, 2, 0, 3, 5, 3],
        [3, 6, 5, 1, 2, 1],
    ]


def test_hard_pairs_are_ordered_pairs_beyond_the_margins() -> None:
    a1, p, a2, n = as_lists(HardPairMiner(pos_margin=0.6, neg_margin=0.4)(CIRCLE, CIRCLE_LABELS))
    # Every positive pair except 0-1 (.866) has sim < .6, in both orders.
    assert list(zip(a1, p, strict=True)) == [
        (0, 2), (1, 2), (2, 0), (2, 1), (3, 4), (3, 5), (4, 3), (4, 5), (5, 3), (5, 4),
    ]  # fmt: skip
    # Negative pairs with sim > .4: 0-3, 0-6, 1-3, 2-3, 2-4, in both orders.
    assert list(zip(a2, n, strict=True)) == [
        (0, 3), (0, 6), (1, 3), (2, 3), (2, 4), (3, 0), (3, 1), (3, 2), (4, 2), (6, 0),
    ]  # fmt: skip


def test_multi_similarity_mining_by_hand() -> None:
    a1, p, a2, n = as_lists(MultiSimilarityMiner(epsilon=0.1)(CIRCLE, CIRCLE_LABELS))
    # Positives with s - .1 < the anchor's max negative: (0,1) .766 !< .707 and (5,4)
    # .474 !< .087 go; the rest stay.
    assert list(zip(a1, p, strict=True)) == [
        (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (3, 5), (4, 3), (4, 5), (5, 3),
    ]  # fmt: skip
    # Negatives with s + .1 > the anchor's min positive (0: -.174, 1: .342, 2: -.174, 3: -.985,
    # 4: -.423, 5: -.985); anchor 6 has no positive and keeps nothing.
    assert list(zip(a2, n, strict=True)) == [
        (0, 3), (0, 6), (1, 3), (2, 3), (2, 4), (3, 0), (3, 1), (3, 2), (3, 6), (4, 2),
        (5, 0), (5, 1), (5, 2), (5, 6),
    ]  # fmt: skip


MINERS: list[Miner] = [
    BatchHardMiner(),
    SemiHardMiner(margin=0.3),
    HardPairMiner(pos_margin=0.8, neg_margin=0.0),
    MultiSimilarityMiner(epsilon=0.1),
]


def _check(ok: torch.Tensor, what: str, where: torch.Tensor) -> None:
    if not bool(ok.all()):
        bad = int(torch.where(~ok)[0][0])
        raise AssertionError(f"{what} (first offending entry {bad}: index {int(where[bad])})")


def _check_lengths(*tensors: torch.Tensor) -> None:
    lengths = {tuple(t.shape) for t in tensors}
    if len(lengths) != 1 or any(t.dim() != 1 for t in tensors):
        raise AssertionError(f"index tensors must be 1-D of one length, got shapes {lengths}")


def check_triplets(labels: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> None:
    """Raise ``AssertionError`` unless each (a, p, n) has a != p, label a = p and label a != n."""
    _check_lengths(a, p, n)
    _check(a != p, "anchor equals its positive", a)
    _check(labels[a] == labels[p], "positive has another label than its anchor", p)
    _check(labels[a] != labels[n], "negative has the anchor's label", n)


def check_pairs(
    labels: torch.Tensor, a1: torch.Tensor, p: torch.Tensor, a2: torch.Tensor, n: torch.Tensor
) -> None:
    """Raise ``AssertionError`` unless positive (a1, p) and negative (a2, n) pairs are valid."""
    _check_lengths(a1, p)
    _check_lengths(a2, n)
    _check(a1 != p, "anchor equals its positive", a1)
    _check(labels[a1] == labels[p], "positive has another label than its anchor", p)
    _check(labels[a2] != labels[n], "negative has the anchor's label", n)


@pytest.mark.parametrize("miner", MINERS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mined_indices_are_valid_on_random_data(miner: Miner, seed: int) -> None:
    embeddings, labels = random_batch(seed)
    indices = miner(embeddings, labels)
    assert all(t.dtype == torch.int64 for t in indices)
    assert indices[0].numel() > 0
    if len(indices) == 3:
        check_triplets(labels, *indices)
    else:
        check_pairs(labels, *indices)


@pytest.mark.parametrize("miner", MINERS, ids=lambda m: type(m).__name__)
def test_mining_runs_without_grad(miner: Miner) -> None:
    raw, labels = random_batch(3)
    raw.requires_grad_(True)
    embeddings = F.normalize(raw, dim=1)
    for t in miner(embeddings, labels):
        assert t.grad_fn is None
        assert not t.requires_grad


def test_checkers_reject_bad_tuples() -> None:
    labels = torch.tensor([0, 0, 1])
    idx = torch.tensor
    check_triplets(labels, idx([0]), idx([1]), idx([2]))
    with pytest.raises(AssertionError, match="anchor equals its positive"):
        check_triplets(labels, idx([0]), idx([0]), idx([2]))
    with pytest.raises(AssertionError, match="positive has another label"):
        check_triplets(labels, idx([0]), idx([2]), idx([2]))
    with pytest.raises(AssertionError, match="negative has the anchor's label"):
        check_triplets(labels, idx([0]), idx([1]), idx([1]))
    with pytest.raises(AssertionError, match="1-D of one length"):
        check_triplets(labels, idx([0, 1]), idx([1]), idx([2]))
    check_pairs(labels, idx([0, 1]), idx([1, 0]), idx([2]), idx([0]))
    with pytest.raises(AssertionError, match="negative has the anchor's label"):
        check_pairs(labels, idx([0]), idx([1]), idx([0]), idx([1]))


def test_miner_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="one label per row"):
        BatchHardMiner()(SMALL, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        BatchHardMiner()(SMALL, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="unit rows"):
        BatchHardMiner()(SMALL * 2, SMALL_LABELS)


def test_make_miner() -> None:
    assert isinstance(make_miner("batch-hard"), BatchHardMiner)
    semi = make_miner("semi-hard")
    assert isinstance(semi, SemiHardMiner) and semi.margin == 0.1
    pairs = make_miner("hard-pairs")
    assert isinstance(pairs, HardPairMiner)
    assert pairs.pos_margin <= 1.0 and pairs.neg_margin >= 0.5
    assert isinstance(make_miner("multi-similarity"), MultiSimilarityMiner)
    assert make_miner("none") is None
    with pytest.raises(ValueError, match="unknown miner 'hardest'"):
        make_miner("hardest")


# ---- losses ----------------------------------------------------------------------------------


def test_triplet_loss_over_all_triplets_by_hand() -> None:
    # 8 triplets; non-zero: a1 p0 n2: √3/2 - .5 + .1, a2 p3 n0: 0 - 0 + .1, a2 p3 n1: √3/2 + .1.
    expected = (2 * SQRT3_2 - 0.2) / 8
    loss = TripletLoss(margin=0.1)(SMALL, SMALL_LABELS)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_triplet_loss_on_batch_hard_triplets_by_hand() -> None:
    indices = BatchHardMiner()(SMALL, SMALL_LABELS)
    assert as_lists(indices) == [[0, 1, 2, 3], [1, 0, 3, 2], [2, 2, 1, 1]]
    # (0,1,2): relu(0 - .5 + .1) = 0; (1,0,2): √3/2 - .4; (2,3,1): √3/2 + .1; (3,2,1): 0.
    expected = (2 * SQRT3_2 - 0.3) / 4
    loss = TripletLoss(margin=0.1)(SMALL, SMALL_LABELS, indices)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_loss_averages_non_zero_terms_by_hand() -> None:
    # Positives (both orders): 1 - .5 twice, 1 - 0 twice -> mean .75. Negatives: only 1-2
    # (√3/2 > .5) is non-zero, both orders -> mean √3/2 - .5 (the six zero terms do not count).
    expected = 0.75 + SQRT3_2 - 0.5
    loss = ContrastiveLoss(pos_margin=1.0, neg_margin=0.5)(SMALL, SMALL_LABELS)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def _ms_anchor(pos: list[float], neg: list[float], alpha=2.0, beta=50.0, base=0.5) -> float:
    return (
        math.log1p(sum(math.exp(-alpha * (s - base)) for s in pos)) / alpha
        + math.log1p(sum(math.exp(beta * (s - base)) for s in neg)) / beta
    )


def test_multi_similarity_loss_by_hand() -> None:
    expected = (
        _ms_anchor([0.5], [0.0, -1.0])
        + _ms_anchor([0.5], [SQRT3_2, -0.5])
        + _ms_anchor([0.0], [0.0, SQRT3_2])
        + _ms_anchor([0.0], [-1.0, -0.5])
    ) / 4
    loss = MultiSimilarityLoss()(SMALL, SMALL_LABELS)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_multi_similarity_loss_on_mined_pairs_by_hand() -> None:
    # Positive pair (0, 1), negative pair (1, 2): anchors 0 and 1 count, only with those pairs.
    t = torch.tensor
    indices = (t([0]), t([1]), t([1]), t([2]))
    expected = (_ms_anchor([0.5], []) + _ms_anchor([], [SQRT3_2])) / 2
    loss = MultiSimilarityLoss()(SMALL, SMALL_LABELS, indices)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_multi_similarity_loss_is_stable_for_large_beta() -> None:
    loss = MultiSimilarityLoss(beta=5000.0)(SMALL, SMALL_LABELS)
    assert torch.isfinite(loss)


def test_proxy_anchor_loss_by_hand() -> None:
    loss_fn = ProxyAnchorLoss(num_classes=2, dim=2, margin=0.1, alpha=32.0)
    with torch.no_grad():
        loss_fn.proxies.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
    # Normalised proxies (1, 0), (0, 1); x0 = (1, 0) class 0, x1 = (0, 1) class 1: sim = I.
    # Per proxy: log(1 + e^{-32 (1 - .1)}) + log(1 + e^{32 (0 + .1)}).
    expected = math.log1p(math.exp(-32 * 0.9)) + math.log1p(math.exp(32 * 0.1))
    loss = loss_fn(torch.eye(2), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_proxy_anchor_loss_decreases_on_separable_data() -> None:
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 16), dim=1)
    labels = torch.arange(4).repeat_interleave(6)
    embeddings = F.normalize(centres[labels] + 0.05 * torch.randn(24, 16), dim=1)
    loss_fn = ProxyAnchorLoss(num_classes=4, dim=16)
    assert isinstance(loss_fn.proxies, torch.nn.Parameter)
    optimiser = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        optimiser.zero_grad()
        loss = loss_fn(embeddings, labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_proxy_anchor_ignores_indices_and_checks_labels_and_dim() -> None:
    loss_fn = ProxyAnchorLoss(num_classes=2, dim=2)
    empty = (torch.empty(0, dtype=torch.long),) * 3
    assert loss_fn(SMALL, SMALL_LABELS, empty).item() == pytest.approx(
        loss_fn(SMALL, SMALL_LABELS).item()
    )
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        loss_fn(SMALL, torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="2-d"):
        loss_fn(F.normalize(torch.ones(4, 3), dim=1), SMALL_LABELS)


def _by_hand(loss_fn: MetricLoss, sim: torch.Tensor, indices: tuple[torch.Tensor, ...]):
    if isinstance(loss_fn, TripletLoss):
        a, p, n = indices
        return F.relu(sim[a, n] - sim[a, p] + loss_fn.margin).mean()
    a1, p, a2, n = indices
    pos = F.relu(loss_fn.pos_margin - sim[a1, p])
    neg = F.relu(sim[a2, n] - loss_fn.neg_margin)
    return pos[pos > 0].mean() + neg[neg > 0].mean()


@pytest.mark.parametrize(
    ("loss_fn", "miner"),
    [
        (TripletLoss(margin=0.2), BatchHardMiner()),
        (TripletLoss(margin=0.2), SemiHardMiner(margin=0.3)),
        (ContrastiveLoss(), HardPairMiner(pos_margin=0.8, neg_margin=0.0)),
        (ContrastiveLoss(), MultiSimilarityMiner()),
    ],
    ids=["triplet-batch-hard", "triplet-semi-hard", "contrastive-hard-pairs", "contrastive-ms"],
)
def test_loss_on_mined_indices_equals_loss_by_hand(loss_fn: MetricLoss, miner: Miner) -> None:
    embeddings, labels = random_batch(4)
    indices = miner(embeddings, labels)
    expected = _by_hand(loss_fn, embeddings @ embeddings.T, indices)
    assert loss_fn(embeddings, labels, indices).item() == pytest.approx(expected.item(), rel=1e-5)


def test_triplet_loss_accepts_pairs_as_triplets_sharing_an_anchor() -> None:
    t = torch.tensor
    pairs = (t([1, 2]), t([0, 3]), t([1, 1, 2]), t([2, 3, 1]))
    # Triplets (1,0,2), (1,0,3), (2,3,1).
    triplets = (t([1, 1, 2]), t([0, 0, 3]), t([2, 3, 1]))
    loss_fn = TripletLoss()
    assert loss_fn(SMALL, SMALL_LABELS, pairs).item() == pytest.approx(
        loss_fn(SMALL, SMALL_LABELS, triplets).item()
    )


LOSSES: list[MetricLoss] = [
    TripletLoss(),
    ContrastiveLoss(),
    MultiSimilarityLoss(),
    ProxyAnchorLoss(num_classes=8, dim=8),
]


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda m: type(m).__name__)
def test_gradients_flow_to_embeddings(loss_fn: MetricLoss) -> None:
    raw, labels = random_batch(5)
    raw.requires_grad_(True)
    loss = loss_fn(F.normalize(raw, dim=1), labels)
    loss.backward()
    assert loss.item() > 0
    assert raw.grad is not None
    assert torch.isfinite(raw.grad).all()
    assert raw.grad.abs().sum() > 0


@pytest.mark.parametrize("loss_fn", LOSSES[:3], ids=lambda m: type(m).__name__)
def test_nothing_mined_gives_a_zero_that_backpropagates(loss_fn: MetricLoss) -> None:
    raw, labels = random_batch(6)
    raw.requires_grad_(True)
    embeddings = F.normalize(raw, dim=1)
    indices = HardPairMiner(pos_margin=-2.0, neg_margin=2.0)(embeddings, labels)
    assert all(t.numel() == 0 for t in indices)
    loss = loss_fn(embeddings, labels, indices)
    assert loss.item() == 0.0
    loss.backward()
    assert raw.grad is not None
    assert torch.equal(raw.grad, torch.zeros_like(raw))


def test_no_valid_triplet_in_batch_gives_a_graph_keeping_zero() -> None:
    raw = SMALL.clone().requires_grad_(True)
    loss = TripletLoss()(raw, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(raw.grad, torch.zeros_like(raw))


def test_make_loss() -> None:
    assert isinstance(make_loss("triplet"), TripletLoss)
    assert isinstance(make_loss("contrastive"), ContrastiveLoss)
    assert isinstance(make_loss("multi-similarity"), MultiSimilarityLoss)
    proxy = make_loss("proxy-anchor", num_classes=5, dim=3)
    assert isinstance(proxy, ProxyAnchorLoss)
    assert proxy.proxies.shape == (5, 3)
    with pytest.raises(ValueError, match="needs num_classes and dim"):
        make_loss("proxy-anchor")
    with pytest.raises(ValueError, match="unknown loss 'arcface'"):
        make_loss("arcface")
