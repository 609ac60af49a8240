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
        self.rejected: str | None = None  # why the last read found the cache unusable

    def read(self, generation: int, count: int, dim: int) -> Any:
        """The cached index if the sidecar names ``generation`` and the file has its sha256 and
        holds ``count`` ``dim``-d vectors; else None. Why a cache that was there is not used
        (damaged, or of other vectors) is kept in ``rejected`` for the caller to log once its
        rebuild from the records has worked: if the records are at fault, their error alone
        is the message."""
        self.rejected = None
        try:
            meta = read_sidecar(self.sidecar)
        except FileNotFoundError:
            log.info("%s is missing; rebuilding %s", self.sidecar, self.vectors)
            return None
        except (OSError, ValueError, IndexFormatError) as exc:
            self.rejected = f"{self.sidecar} is unusable ({exc}); rebuilt {self.vectors}"
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
            self.rejected = f"{self.vectors} could not be used ({exc}); rebuilt it"
            return None
        if backend.dim(index) != dim or backend.ntotal(index) != count:
            self.rejected = (
                f"{self.vectors} held {backend.ntotal(index)} {backend.dim(index)}-d vectors, "
                f"the records {count} {dim}-d; rebuilt it"
            )
            return None
        return index

    def write(self, index: Any, generation: int) -> None:
        """Rewrite the FAISS file, then its sidecar (each atomically); the caller holds the
        writer lock. OSError or RuntimeError (FAISS) when they cannot be written."""
        digest = backend.write_index(index, self.vectors)
        record = {"generation": generation, "sha256": digest}
        atomic_write_bytes(self.sidecar, json.dumps(record).encode("utf-8"))
