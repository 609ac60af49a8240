"""A sharded index searched by Ray actors (one per shard, answers merged): the answers of the
unsharded index; enrolment goes to the smallest shard and the live actors see it at the next
query; removal reaches every shard; each shard is an ordinary index that check accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import retrieval
from retrieval.indexing.shards import SHARDS_FILE, shard_dirs

from ..helpers import answers, gallery_queries, run, same_answers, shard_sizes, write_images

pytestmark = pytest.mark.slow


@pytest.fixture
def sharded(ray_gallery: Path, tmp_path: Path) -> Path:
    index = tmp_path / "sharded"
    out = run("build-index", ray_gallery, "--index", index, "--model", "tiny", "--shards", 3).stdout
    assert "indexed 72 images of 6 labels" in out and "in 3 shards" in out
    return index


def test_sharded_layout_and_answers(cluster, sharded: Path, ray_gallery: Path, local_index: Path):
    doc = json.loads((sharded / SHARDS_FILE).read_text())
    assert doc == {"format_version": 1, "shards": ["shard-000", "shard-001", "shard-002"]}
    assert shard_sizes(sharded) == [24, 24, 24]
    for d in shard_dirs(sharded):
        assert "index OK: 24 items" in run("check", "--index", d).stdout
    assert run("check", "--index", sharded).stdout == "index OK: 72 items, 6 labels\n"
    (shard_dirs(sharded)[1] / "vectors.faiss").write_bytes(b"not faiss")
    broken = run("check", "--index", sharded, ok=False)
    assert broken.exit_code == 1 and "problem: shard-001: " in broken.stdout
    assert "index OK: 72 items" in run("check", "--index", sharded, "--repair").stdout
    info = json.loads(run("info", "--index", sharded, "--json").stdout)
    assert info["count"] == 72 and info["shards"] == 3 and len(info["labels"]) == 6
    queries = gallery_queries(ray_gallery, 8)
    expected = answers(local_index, queries)
    same_answers(expected, answers(sharded, queries, "--ray"))  # the actors' fan-out
    same_answers(expected, answers(sharded, queries))  # in this process


def test_enrolment_goes_to_the_smallest_shard_and_is_seen_next_query(
    cluster, sharded: Path, tmp_path: Path
):
    new = write_images(tmp_path / "new", 5, (10, 10, 10), seed=7)
    probe = new.pop()
    with retrieval.Retriever(sharded, ray="") as served, retrieval.Retriever(sharded) as writer:
        before = served.answer(probe, k=3).neighbors
        assert all(n.label != "dark" for n in before)
        report = writer.enroll("dark", new[:3])
        assert len(report.added) == 3 and report.total_for_label == 3
        assert shard_sizes(sharded) == [27, 24, 24]  # all were 24: the first smallest one
        after = served.answer(probe, k=3).neighbors  # the live actors see it
        assert [n.label for n in after] == ["dark"] * 3
        writer.enroll("dark", new[3:])
        assert shard_sizes(sharded) == [27, 25, 24]
        again = writer.enroll("dark", [new[0]])  # content of another shard: skipped
    assert not again.added and again.duplicates and shard_sizes(sharded) == [27, 25, 24]


def test_removal_reaches_every_shard(cluster, sharded: Path, ray_gallery: Path):
    assert run("remove", "--index", sharded, "--label", "label02").stdout == "removed 12 items\n"
    assert shard_sizes(sharded) == [20, 20, 20]
    one = sorted((ray_gallery / "label03").glob("*.png"))[5]
    assert run("remove", "--index", sharded, "--path", one).stdout == "removed 1 item\n"
    assert sum(shard_sizes(sharded)) == 59
    queries = gallery_queries(ray_gallery, 6)
    for a in answers(sharded, queries, "--ray"):
        paths = {n["path"] for n in a["neighbors"]}
        assert "label02" not in {n["label"] for n in a["neighbors"]} and str(one) not in paths
    missing = run("remove", "--index", sharded, "--label", "label02", ok=False)
    assert missing.exit_code == 1 and "no items with label 'label02'" in missing.output
