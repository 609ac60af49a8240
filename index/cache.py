"""The FAISS base of an index folder: ``vectors.faiss``, the records' vectors as a FAISS index at
some generation G, and its sidecar ``vectors.faiss.json``. A store searches the base plus the
records' change log after G (see ``index.live``), so a write changes no file here; the base is
rewritten only when the log has grown past a share of it, or the layout changes.

The file is FAISS's own format followed by a trailer of ``TRAILER_MAGIC`` and a random token;
the sidecar names the generation, the token, the file's size, its sha256, and the sha256 of
everything but its payload (the vectors' codes and ids, which FAISS maps rather than parses:
``backend.payload``). Opening reads the trailer and hashes what FAISS parses, then maps the rest
(``backend.map_index``): the cost does not grow with the vectors. The token pairs the file with
its sidecar: both are written atomically, the file first, under the writer lock, and a reader
that finds a sidecar not of the file it opened (a writer between its two renames) reads the
sidecar again. The full sha256 is checked by ``retrieve check``.

Sidecars of earlier versions ({generation, sha256} of a file without a trailer) are still read:
the whole file is hashed before FAISS parses it, as then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index import backend
from index.errors import IndexFormatError
from index.folder import SIDECAR, VECTORS
from index.fsutil import atomic_write_bytes, replacing

log = logging.getLogger(__name__)

TRAILER_MAGIC = b"RETRIEVE-BASE-1:"
TOKEN_BYTES = 16
TRAILER_BYTES = len(TRAILER_MAGIC) + TOKEN_BYTES
_BLOCK = 1 << 20
_PAIR_TRIES = 20
_PAIR_WAIT = 0.05


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's record. FileNotFoundError when it is missing, OSError or ValueError when it
    cannot be read or parsed, IndexFormatError when it is not a record of this format (or of
    the earlier {generation, sha256} one)."""
    meta = json.loads(path.read_text(encoding="utf-8"))
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("generation"), int)
        or not isinstance(meta.get("sha256"), str)
    ):
        raise IndexFormatError(f"{path.name} is not a {{generation, sha256}} record")
    if "token" in meta:
        ok = (
            isinstance(meta["token"], str)
            and isinstance(meta.get("bytes"), int)
            and isinstance(meta.get("head_sha256"), str)
            and isinstance(meta.get("payload"), list)
            and len(meta["payload"]) == 2
            and all(isinstance(v, int) and v >= 0 for v in meta["payload"])
            and sum(meta["payload"]) <= meta["bytes"] - TRAILER_BYTES
        )
        if not ok:
            raise IndexFormatError(f"{path.name} is not a record of a FAISS base file")
    return meta


def _hash(f: Any, start: int, stop: int, digest: Any) -> None:
    f.seek(start)
    left = stop - start
    while left > 0:
        block = f.read(min(_BLOCK, left))
        if not block:
            raise IndexFormatError(f"{f.name} ended early")
        digest.update(block)
        left -= len(block)


def hashes(f: Any, size: int, payload: tuple[int, int]) -> tuple[str, str]:
    """(sha256 of the whole file, sha256 of all of it but the payload range), reading it once."""
    whole, head = hashlib.sha256(), hashlib.sha256()
    offset, length = payload
    f.seek(0)
    at = 0
    while at < size:
        block = f.read(min(_BLOCK, size - at))
        if not block:
            raise IndexFormatError(f"{f.name} ended early")
        whole.update(block)
        lo, hi = max(at, offset), min(at + len(block), offset + length)
        if lo < hi:
            head.update(block[: lo - at])
            head.update(block[hi - at :])
        else:
            head.update(block)
        at += len(block)
    return whole.hexdigest(), head.hexdigest()


def head_sha256(f: Any, size: int, payload: tuple[int, int]) -> str:
    """sha256 of the file ``f`` of ``size`` bytes without its payload range."""
    digest = hashlib.sha256()
    offset, length = payload
    _hash(f, 0, offset, digest)
    _hash(f, offset + length, size, digest)
    return digest.hexdigest()


class Stale(Exception):
    """The base cannot be used (the reason is the message); the store rebuilds it. ``damaged``:
    a base that was there is damaged or of other vectors (worth a warning once its rebuild
    from the records has worked), not merely missing or being replaced."""

    def __init__(self, reason: str, *, damaged: bool = True) -> None:
        super().__init__(reason)
        self.damaged = damaged


@dataclass
class Base:
    """A FAISS base read from the folder: the index (mapped), its generation and token."""

    index: Any
    generation: int
    token: str


class FaissCache:
    """The FAISS base file and sidecar of the index folder ``root``."""

    def __init__(self, root: Path) -> None:
        self.vectors = root / VECTORS
        self.sidecar = root / SIDECAR

    def read(self, dim: int) -> Base:
        """The base (mapped) if the sidecar describes the file and what FAISS parses of it is
        intact and of ``dim`` dimensions; else Stale, with the reason."""
        for _ in range(_PAIR_TRIES):
            meta = self._meta()
            try:
                f = self.vectors.open("rb")
            except FileNotFoundError as exc:
                raise Stale(f"{self.vectors} is missing", damaged=False) from exc
            with f:
                if "token" not in meta:
                    index = self._read_old(f, meta)
                    token = ""
                else:
                    index = self._map(f, meta)
                    if index is None:  # the sidecar is not this file's: a writer in between
                        time.sleep(_PAIR_WAIT)
                        continue
                    token = str(meta["token"])
            if backend.dim(index) != dim:
                raise Stale(f"{self.vectors} holds {backend.dim(index)}-d vectors, not {dim}-d")
            return Base(index, int(meta["generation"]), str(token))
        raise Stale(f"{self.vectors} is not the file {self.sidecar.name} describes", damaged=False)

    def _meta(self) -> dict[str, Any]:
        try:
            return read_sidecar(self.sidecar)
        except FileNotFoundError as exc:
            raise Stale(f"{self.sidecar} is missing", damaged=False) from exc
        except (OSError, ValueError, IndexFormatError) as exc:
            raise Stale(f"{self.sidecar} is unusable ({exc})") from exc

    def _read_old(self, f: Any, meta: dict[str, Any]) -> Any:
        try:
            return backend.read_open(f, self.vectors, sha256=meta["sha256"])
        except (OSError, IndexFormatError) as exc:
            raise Stale(f"{self.vectors} cannot be used ({exc})") from exc

    def _map(self, f: Any, meta: dict[str, Any]) -> Any:
        """The file ``f`` mapped if ``meta`` describes it; None if it describes another file of
        the same name (a writer between its renames)."""
        st = os.fstat(f.fileno())
        if st.st_size != meta["bytes"] or token_of(f, st.st_size) != meta["token"]:
            return None
        payload = (meta["payload"][0], meta["payload"][1])
        try:
            head = head_sha256(f, st.st_size, payload)
        except (OSError, IndexFormatError) as exc:
            raise Stale(f"{self.vectors} cannot be read ({exc})") from exc
        if head != meta["head_sha256"]:
            raise Stale(f"{self.vectors} does not have the sha256 recorded in {self.sidecar.name}")
        try:
            index = backend.map_index(self.vectors)
        except IndexFormatError as exc:
            raise Stale(str(exc)) from exc
        try:
            now = self.vectors.stat()
        except FileNotFoundError:
            return None
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return None  # replaced while it was mapped: map the new one
        return index

    def write(self, index: Any, generation: int) -> str:
        """Rewrite the base file, then its sidecar (each atomically); the caller holds the
        writer lock. Returns the file's token. OSError or RuntimeError (FAISS) when they cannot
        be written."""
        token = secrets.token_hex(TOKEN_BYTES // 2)
        with replacing(self.vectors) as tmp:
            backend.write_file(index, tmp)
            size = tmp.stat().st_size
            with tmp.open("rb") as f:
                payload = backend.payload(index, f, size)
            with tmp.open("ab") as f:
                f.write(TRAILER_MAGIC + token.encode("ascii"))
            with tmp.open("rb") as f:
                whole, head = hashes(f, size + TRAILER_BYTES, payload)
        record = {
            "generation": generation,
            "token": token,
            "bytes": size + TRAILER_BYTES,
            "sha256": whole,
            "head_sha256": head,
            "payload": list(payload),
        }
        atomic_write_bytes(self.sidecar, json.dumps(record).encode("utf-8"))
        return token


def token_of(f: Any, size: int) -> str:
    """The token in the trailer of the open base file ``f`` of ``size`` bytes, or ''."""
    if size < TRAILER_BYTES:
        return ""
    f.seek(size - TRAILER_BYTES)
    trailer = bytes(f.read(TRAILER_BYTES))
    if not trailer.startswith(TRAILER_MAGIC):
        return ""
    return trailer[len(TRAILER_MAGIC) :].decode("ascii", "replace")
