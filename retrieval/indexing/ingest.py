"""Images into an open index, a chunk at a time: their content hashes, the duplicates set aside,
the embedding and one committed transaction per chunk. Shared by build-index (retrieval/build.py)
and enrolment (retrieval/service.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index import IndexStore, NotRegularFileError, sha256_file
from retrieval.datasets.folders import Record
from retrieval.engine.embed import Embedder, EmbedResult
from retrieval.progress import ProgressFactory

CHUNK = 256  # images per commit of build-index and enroll (rounded up to whole batches)


def hash_records(
    records: Sequence[Record],
) -> tuple[list[Record], list[str], list[tuple[str, str]]]:
    """The records whose files can be read, the sha256 of each one's content, and (path,
    reason) for the others (gone, unreadable, or not a regular file: a FIFO or a device is
    never read)."""
    kept: list[Record] = []
    shas: list[str] = []
    failures: list[tuple[str, str]] = []
    for r in records:
        try:
            shas.append(sha256_file(r.path))
        except NotRegularFileError as exc:
            failures.append((str(r.path), exc.why))
        except OSError as exc:
            failures.append((str(r.path), f"cannot be read ({exc.strerror or exc})"))
        else:
            kept.append(r)
    return kept, shas, failures


def dedupe(
    records: Sequence[Record], shas: Sequence[str], known: dict[str, Any]
) -> tuple[list[int], list[tuple[str, str]]]:
    """Indices of records to index, and (path, reason) for content already present."""
    keep: list[int] = []
    dupes: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for i, (r, sha) in enumerate(zip(records, shas, strict=True)):
        if sha in known:
            dupes.append(
                (str(r.path), f"already indexed as {known[sha].path} ({known[sha].label})")
            )
        elif sha in seen:
            dupes.append((str(r.path), f"same content as {seen[sha]}"))
        else:
            seen[sha] = str(r.path)
            keep.append(i)
    return keep, dupes


@dataclass
class Embedded:
    added: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)


Committed = Callable[[int, np.ndarray, np.ndarray, list[str]], None]
"""Called after each commit, the writer lock still held: (the store's generation before it, the
ids of the items added, their vectors, their labels)."""


def commit_parts(
    store: IndexStore,
    records: Sequence[Record],
    shas: Sequence[str],
    parts: Iterable[EmbedResult],
    committed: Committed | None = None,
) -> Embedded:
    """Commit embedded ``parts`` (their ``ok`` indexes ``records``) one transaction each under
    the writer lock. Content another writer committed meanwhile is then skipped as a
    duplicate, so an image never lands twice. Killed midway, the index holds the readable
    images of the parts committed so far and nothing of the others."""
    out = Embedded()
    for part in parts:
        out.failures.extend(part.failures)
        with store.writing():
            present = store.find_sha256([shas[i] for i in part.ok])
            rows = [row for row, i in enumerate(part.ok) if shas[i] not in present]
            new = [part.ok[row] for row in rows]
            before = store.generation
            labels = [records[i].label for i in new]
            ids = store.add(
                part.vectors[rows],
                labels,
                [str(Path(records[i].path).resolve()) for i in new],
                [shas[i] for i in new],
            )
            if committed is not None and new:
                committed(before, ids, part.vectors[rows], labels)
        out.added.extend(str(records[i].path) for i in new)
        out.duplicates.extend(
            (str(records[i].path), f"already indexed as {item.path} ({item.label})")
            for i in part.ok
            if (item := present.get(shas[i])) is not None
        )
    return out


def local_parts(
    embedder: Embedder, records: Sequence[Record], progress: Callable[[int], None]
) -> Iterator[EmbedResult]:
    """``records`` embedded in this process, a chunk of CHUNK images at a time."""
    return embedder.iter_paths(
        [r.path for r in records], boxes=[r.box for r in records], chunk=CHUNK, progress=progress
    )


def embed_into(
    store: IndexStore,
    embedder: Embedder,
    records: Sequence[Record],
    shas: Sequence[str],
    progress: ProgressFactory,
    desc: str,
    committed: Committed | None = None,
) -> Embedded:
    """Embed ``records`` in order and commit them a chunk of CHUNK images at a time (see
    commit_parts)."""
    with progress(len(records), desc) as bar:
        parts = local_parts(embedder, records, bar.update)
        return commit_parts(store, records, shas, parts, committed)
