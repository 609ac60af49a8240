"""A sharded index without Ray: built with --shards, searched shard by shard in the process with
the answers of one index, its shards.json checked, an interrupted build resumed shard by shard."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from index import IndexStore
from retrieval.indexing.build import build_index
from retrieval.indexing.shards import SHARDS_FILE

from .helpers import answers, gallery_queries, run, same_answers, shard_sizes, write_gallery


def test_sharded_index_answers_like_one_index(gallery: Path, tmp_path: Path):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    run("build-index", gallery, "--index", one, "--model", "tiny")
    out = run("build-index", gallery, "--index", sharded, "--model", "tiny", "--shards", 2).stdout
    assert "indexed 12 images of 3 labels" in out and "in 2 shards" in out
    queries = gallery_queries(gallery, 6)
    single, split = answers(one, queries), answers(sharded, queries)
    same_answers(single, split)
    with IndexStore.open(one) as store:
        path_of = {item.id: item.path for item in store.items()}
    assert all(path_of[n["id"]] == n["path"] for a in single for n in a["neighbors"])
    assert all(n["id"] is None for a in split for n in a["neighbors"])  # shards' ids overlap
    refused = run("build-index", gallery, "--index", sharded, "--model", "tiny", ok=False)
    assert refused.exit_code == 1 and "already holds an index; pass --force" in refused.output
    run("build-index", gallery, "--index", sharded, "--model", "tiny", "--force")
    assert not (sharded / SHARDS_FILE).exists() and IndexStore.is_index(sharded)


@pytest.mark.parametrize(
    "content, complaint",
    [
        ("{not json", "is unreadable"),
        ('{"format_version": 2, "shards": ["a"]}', "not a shards file of format_version 1"),
        ('{"format_version": 1, "shards": ["../elsewhere"]}', "must be a non-empty list"),
        ('{"format_version": 1, "shards": []}', "must be a non-empty list"),
    ],
)
def test_a_bad_shards_file_is_one_line(gallery: Path, tmp_path: Path, content, complaint):
    index = tmp_path / "sharded"
    run("build-index", gallery, "--index", index, "--model", "tiny", "--shards", 2)
    (index / SHARDS_FILE).write_text(content)
    r = run("query", next(gallery.rglob("*.png")), "--index", index, ok=False)
    assert r.exit_code == 1
    (line,) = r.output.strip().splitlines()
    assert line.startswith(f"retrieve: error: {index / SHARDS_FILE}") and complaint in line


class _StopIn:
    """Progress bars of a build: the ``bar``-th (1-based) raises KeyboardInterrupt once
    ``after`` images were reported, as Ctrl-C would."""

    def __init__(self, bar: int, after: int) -> None:
        self.bar, self.after, self.opened, self.seen = bar, after, 0, 0

    @contextlib.contextmanager
    def __call__(self, total: int, desc: str) -> Iterator[_StopIn]:
        self.opened += 1
        self.seen = 0
        yield self

    def update(self, n: int) -> None:
        self.seen += n
        if self.opened == self.bar and self.seen >= self.after:
            raise KeyboardInterrupt


def test_an_interrupted_sharded_build_resumes_by_shard(tmp_path: Path):
    gallery = write_gallery(tmp_path / "gallery", 3, 200)  # 300 per shard: a chunk of 256 + 44
    index = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):  # in the second shard, after its first chunk
        build_index(gallery, index, model="tiny", shards=2, progress=_StopIn(2, 280))
    assert not index.exists()
    report = build_index(gallery, index, model="tiny", shards=2)
    assert report.resumed == 300 + 256 and report.added == 600
    assert shard_sizes(index) == [300, 300]

    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        build_index(gallery, other, model="tiny", shards=2, progress=_StopIn(2, 280))
    report = build_index(gallery, other, model="tiny", shards=3)  # another dealing
    assert report.resumed == 0 and report.shards == 3
    doc = json.loads((other / SHARDS_FILE).read_text())
    assert doc["shards"] == ["shard-000", "shard-001", "shard-002"]
    assert shard_sizes(other) == [200, 200, 200]
    assert run("check", "--index", other).stdout == "index OK: 600 items, 3 labels\n"
