"""Which triplets and pairs of a batch to train on: miners returning index tuples, no gradients."""

from __future__ import annotations

import torch
from torch import Tensor

MINERS = ("batch-hard", "semi-hard", "hard-pairs", "multi-similarity", "none")

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_UNIT_TOLERANCE = 1e-2


def check_batch(embeddings: Tensor, labels: Tensor) -> None:
    """Raise ``ValueError`` unless ``embeddings`` is (n, d) float, rows L2-normalised (to 1e-2),
    and ``labels`` is (n,) integer on the same device."""
    if embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise ValueError(
            f"embeddings must be a float (n, d) tensor, got {embeddings.dtype} "
            f"{tuple(embeddings.shape)}"
        )
    if labels.dim() != 1 or labels.dtype not in _INTEGER_DTYPES:
        raise ValueError(
            f"labels must be an integer (n,) tensor, got {labels.dtype} {tuple(labels.shape)}: "
            "map class names to ids first"
        )
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"{embeddings.shape[0]} embeddings but {labels.shape[0]} labels: one label per row"
        )
    if labels.device != embeddings.device:
        raise ValueError(f"embeddings on {embeddings.device} but labels on {labels.device}")
    if embeddings.shape[0]:
        norms = embeddings.detach().norm(dim=1)
        worst = float((norms - 1).abs().max())
        if worst > _UNIT_TOLERANCE:
            raise ValueError(
                "embeddings must be unit rows (cosine similarity); a row norm is off by "
                f"{worst:.3g}: apply torch.nn.functional.normalize(x, dim=1) first"
            )


def pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, negative) (n, n) bool masks: same label off the diagonal, other label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def to_pairs(indices: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pair indices (a1, p, a2, n) from triplets (a, p, n) (one pair each) or from pairs."""
    if len(indices) == 4:
        return indices[0], indices[1], indices[2], indices[3]
    if len(indices) == 3:
        a, p, n = indices
        return a, p, a, n
    raise ValueError(f"indices must be (a, p, n) or (a1, p, a2, n), got {len(indices)} tensors")


def to_triplets(indices: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Triplet indices (a, p, n) from triplets, or from pairs: every (a, p) with every (a, n)."""
    if len(indices) == 3:
        return indices[0], indices[1], indices[2]
    if len(indices) == 4:
        a1, p, a2, n = indices
        i, j = torch.where(a1[:, None] == a2[None, :])
        return a1[i], p[i], n[j]
    raise ValueError(f"indices must be (a, p, n) or (a1, p, a2, n), got {len(indices)} tensors")


class Miner:
    """``miner(embeddings, labels) -> index tuple``, mined under ``torch.no_grad()``.

    ``embeddings`` is (n, d) float with unit rows, ``labels`` (n,) integer. Subclasses implement
    ``mine(sim, labels)`` on ``sim = embeddings @ embeddings.T`` ((n, n), cosine similarity) and
    return int64 index tensors: triplets ``(a, p, n)`` or pairs ``(a1, p, a2, n)``.
    """

    def __call__(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        check_batch(embeddings, labels)
        with torch.no_grad():
            emb = embeddings.detach()
            return self.mine(emb @ emb.T, labels)

    def mine(self, sim: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError


class BatchHardMiner(Miner):
    """One triplet per anchor that has a positive and a negative: its hardest of each.

    Hardest positive = lowest similarity among same-label others, hardest negative = highest
    similarity among other-label items; ties go to the lowest index. Returns (a, p, n), each (t,).
    """

    def mine(self, sim: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pos, neg = pair_masks(labels)
        anchors = torch.where(pos.any(dim=1) & neg.any(dim=1))[0]
        hardest_pos = sim.masked_fill(~pos, float("inf")).argmin(dim=1)
        hardest_neg = sim.masked_fill(~neg, float("-inf")).argmax(dim=1)
        return anchors, hardest_pos[anchors], hardest_neg[anchors]


class SemiHardMiner(Miner):
    """For every ordered positive pair (a, p), a != p, the hardest semi-hard negative.

    Semi-hard in similarity terms: ``sim_ap - margin < sim_an < sim_ap`` (inside the margin but
    not more similar than the positive). The one with the highest ``sim_an`` is kept (ties: lowest
    index); pairs without any are dropped. Returns (a, p, n), each (t,).
    """

    def __init__(self, margin: float) -> None:
        self.margin = margin

    def mine(self, sim: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pos, neg = pair_masks(labels)
        a, p = torch.where(pos)
        sim_ap = sim[a, p][:, None]
        sim_an = sim[a]
        semi = neg[a] & (sim_an > sim_ap - self.margin) & (sim_an < sim_ap)
        keep = semi.any(dim=1)
        n = sim_an.masked_fill(~semi, float("-inf")).argmax(dim=1)
        return a[keep], p[keep], n[keep]


class HardPairMiner(Miner):
    """Pairs for a contrastive loss, all ordered pairs (both (i, j) and (j, i), i != j).

    Keeps positive pairs with ``sim < pos_margin`` and negative pairs with ``sim > neg_margin``.
    Returns (a1, p, a2, n): positive pairs (a1, p), negative pairs (a2, n).
    """

    def __init__(self, pos_margin: float, neg_margin: float) -> None:
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def mine(self, sim: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pos, neg = pair_masks(labels)
        a1, p = torch.where(pos & (sim < self.pos_margin))
        a2, n = torch.where(neg & (sim > self.neg_margin))
        return a1, p, a2, n


class MultiSimilarityMiner(Miner):
    """Multi-similarity pair mining (Wang et al. 2019), over all ordered pairs.

    For anchor a: keep negative (a, n) when ``sim_an + epsilon > min_p sim_ap`` and positive
    (a, p) when ``sim_ap - epsilon < max_n sim_an``. An anchor without positives keeps no
    negatives and one without negatives keeps no positives. Returns (a1, p, a2, n).
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = epsilon

    def mine(self, sim: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pos, neg = pair_masks(labels)
        min_pos = sim.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
        max_neg = sim.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
        a1, p = torch.where(pos & (sim - self.epsilon < max_neg))
        a2, n = torch.where(neg & (sim + self.epsilon > min_pos))
        return a1, p, a2, n


def make_miner(name: str) -> Miner | None:
    """The miner for a CLI name in ``MINERS``; ``"none"`` gives None (the loss uses all pairs).

    ``"hard-pairs"`` uses pos_margin 0.8 and neg_margin 0.6: with the contrastive defaults
    (1.0, 0.5) every positive below 1.0 and negative above 0.5 already has a non-zero loss, so the
    miner keeps a strictly harder subset of those.
    """
    if name == "batch-hard":
        return BatchHardMiner()
    if name == "semi-hard":
        return SemiHardMiner(margin=0.1)
    if name == "hard-pairs":
        return HardPairMiner(pos_margin=0.8, neg_margin=0.6)
    if name == "multi-similarity":
        return MultiSimilarityMiner(epsilon=0.1)
    if name == "none":
        return None
    raise ValueError(f"unknown miner {name!r}; choose one of {', '.join(MINERS)}")
