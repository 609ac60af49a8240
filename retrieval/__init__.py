"""retrieve: fine-grained recognition by retrieval.

The public API (``retrieval.api``)::

    import retrieval

    retrieval.build("photos/", "my-index")
    with retrieval.Retriever("my-index") as r:
        answers = r.query(["a.jpg", pil_image])   # one Answer per image
        r.enroll("Snowy Owl", ["owl1.jpg", "owl2.jpg"])

Names are loaded when first used, so that importing a part of the package (the query path)
stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Retriever": "retrieval.api",
    "build": "retrieval.api",
    "evaluate": "retrieval.api",
    "check": "retrieval.api",
    "Answer": "retrieval.results",
    "AttentionMap": "retrieval.results",
    "EnrollReport": "retrieval.results",
    "Info": "retrieval.results",
    "Item": "retrieval.results",
    "Neighbor": "retrieval.results",
    "BuildReport": "retrieval.indexing.build",
    "Evaluation": "retrieval.training.evaluation",
    "CheckReport": "index",
    "DatasetOptions": "retrieval.datasets",
    "RetrieveError": "retrieval.errors",
    "IndexStoreError": "index",
}

__all__ = [
    "Answer",
    "AttentionMap",
    "BuildReport",
    "CheckReport",
    "DatasetOptions",
    "EnrollReport",
    "Evaluation",
    "IndexStoreError",
    "Info",
    "Item",
    "Neighbor",
    "RetrieveError",
    "Retriever",
    "build",
    "check",
    "evaluate",
]

if TYPE_CHECKING:
    from index import CheckReport, IndexStoreError
    from retrieval.api import Retriever, build, check, evaluate
    from retrieval.datasets import DatasetOptions
    from retrieval.errors import RetrieveError
    from retrieval.indexing.build import BuildReport
    from retrieval.results import Answer, AttentionMap, EnrollReport, Info, Item, Neighbor
    from retrieval.training.evaluation import Evaluation


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return [*globals(), *__all__]
