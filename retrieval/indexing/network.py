"""The network of an index: its own exported copy on ONNX Runtime when it has one (no torch is
imported), else its model re-created in torch from the manifest and checked by fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from index import MANIFEST, IndexFormatError, read_manifest
from retrieval.engine.embed import Embedder
from retrieval.engine.network import ModelEntry
from retrieval.engine.runtime import available, index_embedder
from retrieval.errors import ModelError, ModelMismatchError, RetrieveError

# torch (retrieval.nets.model) takes seconds to import: only the torch path imports it.
if TYPE_CHECKING:
    from retrieval.nets.model import LoadedModel


def read_entry(folder: str | Path) -> ModelEntry:
    """The model entry of the index at ``folder``, checked (ModelError naming its manifest)."""
    manifest = Path(folder) / MANIFEST
    return ModelEntry.parse(read_manifest(manifest).model, str(manifest))


def model_for(
    folder: str | Path,
    entry: ModelEntry,
    model: str | None = None,
    weights: str | None = None,
) -> LoadedModel:
    """The model the index at ``folder`` was built with, re-created in torch and checked
    against its fingerprint. With ``model``, that model is loaded instead and refused unless it
    is the same network."""
    from retrieval.nets.model import load_from_source, load_model

    manifest = Path(folder) / MANIFEST
    if entry.source is None:
        raise IndexFormatError(f"{manifest}: the model entry lacks a valid source")
    if model:
        loaded = load_model(model, weights=weights)
    else:
        try:
            loaded = load_from_source(dict(entry.source))
        except RetrieveError:
            raise
        except Exception as exc:  # a tampered entry can fail anywhere while building the network
            raise IndexFormatError(f"{manifest}: the model entry cannot be used: {exc}") from exc
    if loaded.fingerprint != entry.fingerprint:
        what = f"model {model}" if model else f"the model at {dict(entry.source)}"
        raise ModelMismatchError(
            f"index {folder} was built with model {entry.name} "
            f"(fingerprint {entry.fingerprint}), but {what} has fingerprint "
            f"{loaded.fingerprint}; query with the index's own model or rebuild the index with "
            f"'retrieve build-index GALLERY --model {model or entry.name} --force'"
        )
    return loaded


def embedder_for(
    folder: str | Path,
    entry: ModelEntry,
    model: str | None = None,
    *,
    batch_size: int = 32,
) -> Embedder:
    """The Embedder of the index at ``folder``: its own exported network on ONNX Runtime when
    it has one, else its model re-created in torch (see model_for); with ``model``, that model,
    refused unless it is the index's network. An int8 network runs only on ONNX Runtime."""
    if model is None and entry.onnx_sha256 is not None and available():
        return index_embedder(folder, entry, batch_size=batch_size)
    if model is None and entry.precision != "float32":
        raise ModelError(
            f"index {folder} runs its network in {entry.precision}, which needs onnxruntime: "
            "install it (pip install onnxruntime)"
        )
    return model_for(folder, entry, model).embedder(batch_size=batch_size)
