"""The label of a query from its retrieved neighbours: the k-NN vote (majority or
similarity-weighted, with its share), and the default rule, the vote's labels decided by their
nearest class prototype (``nearest_prototype``), nearness measured by the index
(openset.Scorer.closeness)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

VOTES = ("weighted", "majority")
RULES = ("prototype", *VOTES)  # how a label is chosen; prototype: the default


@dataclass(frozen=True)
class Neighbor:
    """A gallery item near the query; ``id`` is its id in the index, when it has one."""

    path: str
    label: str
    score: float
    id: int | None = None


@dataclass(frozen=True)
class Prediction:
    """``label`` None means unknown; ``confidence`` is the winning label's share of the vote."""

    label: str | None
    confidence: float
    neighbors: tuple[Neighbor, ...]


def vote(
    neighbors: Sequence[Neighbor],
    *,
    k: int = 5,
    method: str = "weighted",
    min_score: float = 0.0,
) -> Prediction:
    """Vote among the first ``k`` neighbours (sorted by descending score).

    weighted: each neighbour adds its cosine score (clipped at 0) to its label; majority: one
    vote each. Ties go to the label with the higher summed score, then the best single score.
    If the best score is below ``min_score`` (or there are no neighbours) the answer is unknown,
    with confidence 0.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if method not in VOTES:
        raise ValueError(f"vote must be one of {', '.join(VOTES)}, not {method!r}")
    top = tuple(sorted(neighbors, key=lambda n: -n.score)[:k])
    if not top or top[0].score < min_score:
        return Prediction(None, 0.0, top)
    weight: dict[str, float] = {}
    total_score: dict[str, float] = {}
    best: dict[str, float] = {}
    for n in top:
        w = max(n.score, 0.0) if method == "weighted" else 1.0
        weight[n.label] = weight.get(n.label, 0.0) + w
        total_score[n.label] = total_score.get(n.label, 0.0) + n.score
        best[n.label] = max(best.get(n.label, n.score), n.score)
    winner = max(weight, key=lambda lab: (weight[lab], total_score[lab], best[lab]))
    total = sum(weight.values())
    confidence = weight[winner] / total if total > 0 else 0.0
    return Prediction(winner, confidence, top)


Closeness = Callable[[str], "float | None"]
"""How near one query a label's prototype (the mean of its vectors) is, higher nearer; None when
the label is not known."""


def nearest_prototype(
    neighbors: Sequence[Neighbor], closeness: Closeness, k: int = 5
) -> str | None:
    """Of the labels of the first ``k`` neighbours, the one whose prototype is nearest the query
    by ``closeness`` (labels without one are passed over; None without neighbours). The
    neighbours make a shortlist, the class means decide: with few photos per label a mean is a
    steadier witness than the photos one by one, and measured in the gallery's own within-class
    shape (openset.Scorer.closeness) it is steadier still (README, "Sharper on species it never
    saw")."""
    best, best_score = None, -np.inf
    for label in dict.fromkeys(n.label for n in sorted(neighbors, key=lambda n: -n.score)[:k]):
        score = closeness(label)
        if score is not None and (best is None or score > best_score):
            best, best_score = label, score
    return best


def share(neighbors: Sequence[Neighbor], label: str | None, k: int = 5) -> float:
    """``label``'s share of the similarity-weighted vote of the first ``k`` neighbours."""
    top = sorted(neighbors, key=lambda n: -n.score)[:k]
    total = sum(max(n.score, 0.0) for n in top)
    mine = sum(max(n.score, 0.0) for n in top if n.label == label)
    return mine / total if total > 0 else 0.0
