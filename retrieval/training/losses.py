"""Metric-learning losses on the cosine similarity of unit embeddings (loss math, not pairs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retrieval.training.miners import check_batch, pair_masks, to_pairs, to_triplets

LOSSES = ("triplet", "contrastive", "multi-similarity", "proxy-anchor")


class MetricLoss(nn.Module):
    """``loss(embeddings, labels, indices=None) -> scalar``.

    ``embeddings`` is (n, d) float with unit rows, ``labels`` (n,) integer. ``indices`` is a
    miner's output, triplets ``(a, p, n)`` or pairs ``(a1, p, a2, n)`` (each loss converts the one
    it does not use: a triplet gives the pairs (a, p) and (a, n); pairs give every (a, p) × (a, n)
    with a shared anchor). ``None`` means every valid triplet or pair of the batch. When
    ``indices`` is given but empty (nothing mined) the loss is ``embeddings.sum() * 0``: a zero
    that keeps the graph, so ``backward()`` still works and gives zero gradients.

    Subclasses implement ``compute_loss(sim, labels, indices)``; ``sim`` comes from
    ``similarity(embeddings)``, by default ``embeddings @ embeddings.T`` ((n, n) cosine).
    """

    def forward(
        self, embeddings: Tensor, labels: Tensor, indices: tuple[Tensor, ...] | None = None
    ) -> Tensor:
        check_batch(embeddings, labels)
        if indices is not None and all(t.numel() == 0 for t in indices):
            return embeddings.sum() * 0
        return self.compute_loss(self.similarity(embeddings), labels, indices)

    def similarity(self, embeddings: Tensor) -> Tensor:
        """(n, n) cosine similarity of the unit rows of ``embeddings`` (n, d)."""
        return embeddings @ embeddings.T

    def compute_loss(
        self, sim: Tensor, labels: Tensor, indices: tuple[Tensor, ...] | None
    ) -> Tensor:
        raise NotImplementedError


def _mean(terms: Tensor, sim: Tensor) -> Tensor:
    """Mean of ``terms``, or a graph-keeping zero when there are none."""
    return terms.mean() if terms.numel() else sim.sum() * 0


def _mean_nonzero(terms: Tensor) -> Tensor:
    """Sum of ``terms`` over the number of terms > 0 (0 when none are), as AvgNonZeroReducer."""
    return terms.sum() / (terms > 0).sum().clamp(min=1)


def _log1p_sum_exp(logits: Tensor, dim: int) -> Tensor:
    """``log(1 + sum(exp(logits)))`` along ``dim``, stable; masked entries are -inf."""
    shape = list(logits.shape)
    shape[dim] = 1
    return torch.logsumexp(torch.cat([logits, logits.new_zeros(shape)], dim=dim), dim=dim)


class TripletLoss(MetricLoss):
    """Mean over triplets of ``relu(sim_an - sim_ap + margin)`` (zero terms included).

    Without ``indices`` every valid triplet of the batch counts (an (n, n, n) tensor: fine for
    P×K batches of a few hundred).
    """

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        self.margin = margin

    def compute_loss(
        self, sim: Tensor, labels: Tensor, indices: tuple[Tensor, ...] | None
    ) -> Tensor:
        if indices is None:
            pos, neg = pair_masks(labels)
            valid = pos[:, :, None] & neg[:, None, :]
            terms = F.relu(sim[:, None, :] - sim[:, :, None] + self.margin)[valid]
        else:
            a, p, n = to_triplets(indices)
            terms = F.relu(sim[a, n] - sim[a, p] + self.margin)
        return _mean(terms, sim)


class ContrastiveLoss(MetricLoss):
    """Positive terms ``relu(pos_margin - sim_ap)`` plus negative ``relu(sim_an - neg_margin)``.

    Reduction as pytorch-metric-learning's ContrastiveLoss with AvgNonZeroReducer: the positive
    terms are averaged over the positive terms that are > 0, the negative terms over the negative
    terms that are > 0, and the two averages are added (a part with no non-zero term adds 0).
    Without ``indices`` all ordered pairs (i, j), i != j, count.
    """

    def __init__(self, pos_margin: float = 1.0, neg_margin: float = 0.5) -> None:
        super().__init__()
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def compute_loss(
        self, sim: Tensor, labels: Tensor, indices: tuple[Tensor, ...] | None
    ) -> Tensor:
        if indices is None:
            pos, neg = pair_masks(labels)
            sim_pos, sim_neg = sim[pos], sim[neg]
        else:
            a1, p, a2, n = to_pairs(indices)
            sim_pos, sim_neg = sim[a1, p], sim[a2, n]
        pos_terms = F.relu(self.pos_margin - sim_pos)
        neg_terms = F.relu(sim_neg - self.neg_margin)
        return _mean_nonzero(pos_terms) + _mean_nonzero(neg_terms)


class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss (Wang et al. 2019), per anchor i, averaged over anchors with pairs:

    ``(1/alpha) log(1 + sum_p exp(-alpha (s_ip - base))) + (1/beta) log(1 + sum_n exp(beta (s_in
    - base)))``. Without ``indices`` all ordered pairs count; with mined pairs (a1, p, a2, n)
    only those do (a pair mined twice counts once).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.base = base

    def compute_loss(
        self, sim: Tensor, labels: Tensor, indices: tuple[Tensor, ...] | None
    ) -> Tensor:
        if indices is None:
            pos, neg = pair_masks(labels)
        else:
            a1, p, a2, n = to_pairs(indices)
            pos = torch.zeros_like(sim, dtype=torch.bool)
            neg = torch.zeros_like(sim, dtype=torch.bool)
            pos[a1, p] = True
            neg[a2, n] = True
        anchors = pos.any(dim=1) | neg.any(dim=1)
        if not bool(anchors.any()):
            return sim.sum() * 0
        pos_logits = (-self.alpha * (sim - self.base)).masked_fill(~pos, float("-inf"))
        neg_logits = (self.beta * (sim - self.base)).masked_fill(~neg, float("-inf"))
        per_anchor = (
            _log1p_sum_exp(pos_logits, dim=1) / self.alpha
            + _log1p_sum_exp(neg_logits, dim=1) / self.beta
        )
        return per_anchor[anchors].mean()


class ProxyAnchorLoss(MetricLoss):
    """Proxy-anchor loss (Kim et al. 2020) with one learnable proxy per class; ignores ``indices``.

    ``proxies`` is a (num_classes, dim) parameter (kaiming-normal, fan-out), L2-normalised in
    forward; ``s(x, c)`` is cosine similarity. With P+ the proxies of classes in the batch::

        1/|P+| sum_{c in P+} log(1 + sum_{x of class c} exp(-alpha (s(x, c) - margin)))
        + 1/C sum_c log(1 + sum_{x not of class c} exp(alpha (s(x, c) + margin)))

    Labels must be class ids in ``[0, num_classes)``. Add the loss's parameters to the optimiser.
    """

    def __init__(
        self, num_classes: int, dim: int, margin: float = 0.1, alpha: float = 32.0
    ) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1 (got {num_classes}, {dim})")
        self.num_classes = num_classes
        self.margin = margin
        self.alpha = alpha
        self.proxies = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(
        self, embeddings: Tensor, labels: Tensor, indices: tuple[Tensor, ...] | None = None
    ) -> Tensor:
        if embeddings.dim() == 2 and embeddings.shape[1] != self.proxies.shape[1]:
            raise ValueError(
                f"embeddings are {embeddings.shape[1]}-d but the proxies {self.proxies.shape[1]}-d:"
                " build the loss with dim = the model's embedding size"
            )
        return super().forward(embeddings, labels)

    def similarity(self, embeddings: Tensor) -> Tensor:
        """(n, num_classes) cosine similarity of ``embeddings`` (n, d) to the proxies."""
        return embeddings @ F.normalize(self.proxies, dim=1).T

    def compute_loss(
        self, sim: Tensor, labels: Tensor, indices: tuple[Tensor, ...] | None
    ) -> Tensor:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must be class ids in [0, {self.num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]: "
                "map labels to ids or raise num_classes"
            )
        if not labels.numel():
            return sim.sum() * 0
        member = F.one_hot(labels.long(), self.num_classes).bool()
        pos_logits = (-self.alpha * (sim - self.margin)).masked_fill(~member, float("-inf"))
        neg_logits = (self.alpha * (sim + self.margin)).masked_fill(member, float("-inf"))
        in_batch = member.any(dim=0)
        pos_term = _log1p_sum_exp(pos_logits, dim=0)[in_batch].mean()
        neg_term = _log1p_sum_exp(neg_logits, dim=0).mean()
        return pos_term + neg_term


def make_loss(name: str, *, num_classes: int | None = None, dim: int | None = None) -> MetricLoss:
    """The loss for a CLI name in ``LOSSES``, with default settings.

    ``"proxy-anchor"`` needs ``num_classes`` (training classes) and ``dim`` (embedding size).
    """
    if name == "triplet":
        return TripletLoss()
    if name == "contrastive":
        return ContrastiveLoss()
    if name == "multi-similarity":
        return MultiSimilarityLoss()
    if name == "proxy-anchor":
        if num_classes is None or dim is None:
            raise ValueError("the proxy-anchor loss needs num_classes and dim")
        return ProxyAnchorLoss(num_classes, dim)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
