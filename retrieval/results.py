"""What the public API returns: frozen, typed results with the fields of the CLI's ``--json``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index import Item
from retrieval.engine.classify import Neighbor


@dataclass(frozen=True)
class Answer:
    """What a query image is: ``label`` (None: unknown, and ``unknown_because`` says why),
    ``confidence`` (the estimated probability that the label is right; for an unknown answer,
    that the best label would be wrong), the ``neighbors``, best first (re-ranked by
    ``rerank``: their scores are then the re-ranked ones), and the winning label's share of
    the vote of the nearest ones by raw cosine score (``vote_share``); ``decision`` is the
    open-set score the index compared with its threshold (higher: more like its labels).
    ``query`` names the image; ``seconds`` is its own time (decode, embed, search, vote,
    re-ranking)."""

    query: str
    label: str | None
    confidence: float
    neighbors: tuple[Neighbor, ...]
    seconds: float = 0.0
    vote_share: float = 0.0
    decision: float = 0.0
    unknown_because: str | None = None
    rerank: str = "none"

    @property
    def suggestions(self) -> list[str]:
        """The labels of the neighbours, nearest first, each once (for an unknown answer: what
        it is most like)."""
        return list(dict.fromkeys(n.label for n in self.neighbors))

    def to_json(self) -> dict[str, Any]:
        """The object ``retrieve query --json`` prints."""
        return {
            "query": self.query,
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "vote_share": round(self.vote_share, 6),
            "decision": round(self.decision, 6) if math.isfinite(self.decision) else None,
            "unknown_because": self.unknown_because,
            "rerank": self.rerank,
            "neighbors": [
                {"path": n.path, "label": n.label, "score": round(n.score, 6), "id": n.id}
                for n in self.neighbors
            ],
        }


@dataclass(frozen=True)
class EnrollReport:
    """What ``enroll`` did: the images ``added`` (as given), those already indexed
    (``duplicates``: image, reason) and those ``skipped`` (unreadable: image, reason), and how
    many items ``label`` now has."""

    label: str
    added: tuple[str, ...]
    duplicates: tuple[tuple[str, str], ...]
    skipped: tuple[tuple[str, str], ...]
    total_for_label: int


@dataclass(frozen=True)
class Info:
    """What an index holds (``retrieve info --json``)."""

    index: Path
    count: int
    labels: dict[str, int]
    model: str
    dim: int
    format_version: int
    fingerprint: str
    index_type: str
    layout: dict[str, Any]
    shards: int = 1
    open_set: dict[str, Any] | None = None
    flip: bool = False
    precision: str = "float32"
    rerank: str = "none"
    input_size: int = 224

    def to_json(self) -> dict[str, Any]:
        out = {
            "count": self.count,
            "labels": self.labels,
            "model": self.model,
            "dim": self.dim,
            "format_version": self.format_version,
            "index_type": self.index_type,
            "faiss": self.layout,
            "open_set": self.open_set,
            "flip": self.flip,
            "precision": self.precision,
            "rerank": self.rerank,
            "input_size": self.input_size,
        }
        if self.shards > 1:
            out["shards"] = self.shards
        return out


@dataclass(frozen=True)
class AttentionMap:
    """A model's spatial attention gates (h, w) over the part of the query image it saw:
    ``box`` = (left, top, right, bottom) as fractions of the image's width and height."""

    gates: np.ndarray
    box: tuple[float, float, float, float]


__all__ = ["Answer", "AttentionMap", "EnrollReport", "Info", "Item", "Neighbor"]
