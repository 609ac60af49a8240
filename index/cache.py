"""The FAISS cache of an index folder: ``vectors.faiss``, derived from the records, and its
sidecar ``vectors.faiss.json`` ({generation, sha256}). The cache is used only when the sidecar
names the records' generation and the file has the sidecar's sha256 (checked before FAISS parses
a byte of it); both are written atomically, the file first, always as a pair under the writer
lock."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from index import backend
from index.errors import IndexFormatError
from index.folder import SIDECAR, VECTORS
from index.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's record. FileNotFoundError when it is missing, OSError or ValueError when it
    cannot be read or parsed, IndexFormatError when it is not a {generation: int, sha256: str}
    record."""
    meta = json.loads(path.read_text(encoding="utf-8"))
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("generation"), int)
        or not isinstance(meta.get("sha256"), str)
    ):
        raise IndexFormatError(f"{path.name} is not a {{generation, sha256}} record")
    return meta


class FaissCache:
    """The FAISS file and sidecar of the index folder ``root``."""

    def __init__(self, root: Path) -> None:
        self.vectors = root / VECTORS
        self.sidecar = root / SIDECAR

    def read(self, generation: int, count: int, dim: int) -> Any:
        """The cached index if the sidecar names ``generation`` and the file has its sha256 and
        holds ``count`` ``dim``-d vectors; else None, with the reason logged."""
        try:
            meta = read_sidecar(self.sidecar)
        except FileNotFoundError:
            log.info("%s is missing; rebuilding %s", self.sidecar, self.vectors)
            return None
        except (OSError, ValueError, IndexFormatError) as exc:
            log.warning("%s is unusable (%s); rebuilding %s", self.sidecar, exc, self.vectors)
            return None
        if meta["generation"] != generation:
            log.info(
                "%s is stale (generation %s, records at %d); rebuilding it",
                self.vectors,
                meta["generation"],
                generation,
            )
            return None
        try:
            index = backend.read_index(self.vectors, sha256=meta["sha256"])
        except FileNotFoundError:
            log.info("%s is missing; rebuilding it", self.vectors)
            return None
        except (OSError, IndexFormatError) as exc:
            log.warning("%s cannot be used (%s); rebuilding it", self.vectors, exc)
            return None
        if backend.dim(index) != dim or backend.ntotal(index) != count:
            log.warning(
                "%s holds %d %d-d vectors, records hold %d %d-d; rebuilding it",
                self.vectors,
                backend.ntotal(index),
                backend.dim(index),
                count,
                dim,
            )
            return None
        return index

    def write(self, index: Any, generation: int) -> None:
        """Rewrite the FAISS file, then its sidecar (each atomically); the caller holds the
        writer lock. OSError or RuntimeError (FAISS) when they cannot be written."""
        digest = backend.write_index(index, self.vectors)
        record = {"generation": generation, "sha256": digest}
        atomic_write_bytes(self.sidecar, json.dumps(record).encode("utf-8"))
