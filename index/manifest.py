"""manifest.json: format version, dimension, metric, index type and the model entry of an index."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeGuard

from index.errors import IndexFormatError
from index.fsutil import atomic_write_bytes
from index.plan import INDEX_TYPES, check_type

FORMAT_VERSION = 1
METRIC = "inner_product"
MAX_MANIFEST_BYTES = 1 << 20


def now_iso() -> str:
    """The current UTC time as ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Manifest:
    """What an index is: its format, its vectors' dimension and metric, the model behind them,
    and the FAISS index type asked for (``index.plan.INDEX_TYPES``; "flat" in manifests written
    before there was a choice)."""

    format_version: int
    dim: int
    metric: str
    model: dict[str, Any]
    created: str
    index_type: str = "flat"

    @classmethod
    def new(cls, dim: int, model: dict[str, Any], index_type: str = "auto") -> Manifest:
        """The manifest of an index created now in the current format."""
        return cls(FORMAT_VERSION, dim, METRIC, model, now_iso(), check_type(index_type))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready object."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any, source: str = "manifest") -> Manifest:
        """Validate a decoded manifest; IndexFormatError (naming ``source``) if it is not one."""
        if not isinstance(obj, dict):
            raise IndexFormatError(f"{source}: expected a JSON object, got {type(obj).__name__}")
        version = obj.get("format_version")
        if not _is_int(version) or version < 1:
            raise IndexFormatError(
                f"{source}: format_version must be a positive integer, not {version!r}"
            )
        if version > FORMAT_VERSION:
            raise IndexFormatError(
                f"{source}: index format {version} is newer than this retrieve supports "
                f"({FORMAT_VERSION}): upgrade retrieve"
            )
        dim = obj.get("dim")
        if not _is_int(dim) or dim < 1:
            raise IndexFormatError(f"{source}: dim must be a positive integer, not {dim!r}")
        if obj.get("metric") != METRIC:
            raise IndexFormatError(
                f"{source}: metric must be {METRIC!r}, not {obj.get('metric')!r}"
            )
        if not isinstance(obj.get("model"), dict):
            raise IndexFormatError(f"{source}: model must be a JSON object")
        if not isinstance(obj.get("created"), str):
            raise IndexFormatError(f"{source}: created must be a string")
        index_type = obj.get("index_type", "flat")
        if index_type not in INDEX_TYPES:
            raise IndexFormatError(
                f"{source}: index_type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}"
            )
        return cls(version, dim, METRIC, obj["model"], obj["created"], index_type)


def write_manifest(path: str | os.PathLike[str], manifest: Manifest) -> None:
    """Write the manifest atomically (temp file, fsync, rename)."""
    text = json.dumps(manifest.to_json(), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest; IndexFormatError naming the file if it is unusable."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise IndexFormatError(
                f"{path} is not a readable index manifest: it is larger than "
                f"{MAX_MANIFEST_BYTES} bytes"
            )
        obj = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise IndexFormatError(f"{path} is not a readable index manifest: {reason}") from exc
    return Manifest.from_json(obj, source=str(path))
