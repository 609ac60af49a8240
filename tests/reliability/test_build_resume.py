"""Chunked, resumable build-index and chunked enroll, interrupted in-process at a known point
(a progress bar that raises KeyboardInterrupt, as Ctrl-C does)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import retrieval
from index import IndexLockedError, IndexStore, aside_name, sha256_file
from retrieval.indexing.build import build_index, staging_dir
from retrieval.nets.model import load_model, save_model_dir

from ..helpers import run, write_gallery, write_image, write_images
from .helpers import hold_lock, stray_files

N_LABELS, PER_LABEL = 3, 200  # 600 images: two whole chunks of 256 and a rest of 88


class _Interrupt:
    """A progress bar that raises KeyboardInterrupt once ``after`` images were reported."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0

    def update(self, n: int) -> None:
        self.seen += n
        if self.seen >= self.after:
            raise KeyboardInterrupt

    def set_postfix_str(self, s: str) -> None:
        return None


def interrupt_after(after: int):
    @contextlib.contextmanager
    def factory(total: int, desc: str) -> Iterator[_Interrupt]:
        yield _Interrupt(after)

    return factory


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gallery(tmp_path_factory.mktemp("g") / "gallery", N_LABELS, PER_LABEL)


@pytest.fixture(scope="module")
def reference(gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """path -> vector of an uninterrupted build."""
    root = tmp_path_factory.mktemp("ref") / "idx"
    build_index(gallery, root, model="tiny")
    return contents(root)


def contents(root: Path) -> dict[str, np.ndarray]:
    with IndexStore.open(root) as store:
        ids, vectors = store.vectors()
        items = store.items()
    assert [it.id for it in items] == ids.tolist()
    return {it.path: vec for it, vec in zip(items, vectors, strict=True)}


def labelled(root: Path) -> set[tuple[str, str, str]]:
    with IndexStore.open(root) as store:
        return {(it.path, it.sha256, it.label) for it in store.items()}


def plan(gallery: Path) -> list[str]:
    """The gallery's images in the order build-index embeds them."""
    return [str(p.resolve()) for p in sorted(gallery.glob("*/*.png"))]


def old_index(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """An existing index (of other images) for the build to replace, and its files' bytes."""
    other = write_gallery(tmp_path / "old_gallery", 2, 3, seed=777)
    target = tmp_path / "idx"
    build_index(other, target, model="tiny")
    return target, {p.name: p.read_bytes() for p in target.iterdir() if p.name != ".lock"}


def test_interrupted_build_keeps_whole_chunks_and_the_old_index(
    gallery: Path, reference: dict[str, np.ndarray], tmp_path: Path
):
    target, before = old_index(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        build_index(gallery, target, model="tiny", force=True, progress=interrupt_after(300))
    staging = staging_dir(target)
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.name != ".lock"} == before
    staged = contents(staging)
    assert list(staged) == plan(gallery)[:256]
    for path, vector in staged.items():
        np.testing.assert_allclose(vector, reference[path], atol=1e-5)

    again = build_index(gallery, target, model="tiny", force=True)
    assert (again.resumed, again.added) == (256, 600)
    assert not staging.exists()
    after = contents(target)
    assert sorted(after) == sorted(reference)
    for path, vector in after.items():
        np.testing.assert_allclose(vector, reference[path], atol=1e-5)
    assert stray_files(tmp_path) == []
    assert retrieval.check(target).ok


def test_resume_follows_changes_to_the_gallery(gallery: Path, tmp_path: Path):
    changed = Path(shutil.copytree(gallery, tmp_path / "gallery"))
    target = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(changed, target, model="tiny", progress=interrupt_after(300))
    staged = plan(changed)[:256]
    write_image(Path(staged[0]), (0, 0, 0), seed=1, size=24)  # content changed
    Path(staged[1]).unlink()  # removed
    write_image(changed / "label00" / "0000a.png", (9, 9, 9), seed=2, size=24)  # added
    (staging_dir(target) / ".vectors.faiss.0123456789abcdef.tmp").write_bytes(b"x")
    again = build_index(changed, target, model="tiny")
    assert again.resumed == 254 and again.added == 600
    fresh = tmp_path / "fresh"
    build_index(changed, fresh, model="tiny")
    assert labelled(target) == labelled(fresh)
    assert stray_files(tmp_path) == []


def test_another_model_starts_over(gallery: Path, tmp_path: Path):
    target = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(gallery, target, model="tiny", progress=interrupt_after(300))
    folder = save_model_dir(load_model("tiny").net, tmp_path / "tiny_folder").parent
    again = build_index(gallery, target, model=str(folder))
    assert (again.resumed, again.added) == (0, 600)
    with IndexStore.open(target) as store:
        assert store.model["source"]["kind"] == "dir"


def test_a_build_killed_before_its_staging_manifest_starts_over(gallery: Path, tmp_path: Path):
    """What a kill leaves while the staging index is created: its records and exported network
    (the network is written before the manifest, and half of it as a temp file), no manifest."""
    target = tmp_path / "idx"
    staging = staging_dir(target)
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(b"half a network")
    (staging / ".model.onnx.0123456789abcdef.tmp").write_bytes(b"half")
    (staging / "records.sqlite").write_bytes(b"")
    again = build_index(gallery, target, model="tiny")
    assert (again.resumed, again.added) == (0, 600)
    assert retrieval.check(target).ok
    assert stray_files(tmp_path) == []


def test_a_staged_network_file_that_differs_starts_over(gallery: Path, tmp_path: Path):
    target = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(gallery, target, model="tiny", progress=interrupt_after(300))
    staging = staging_dir(target)
    assert retrieval.check(staging).ok
    (staging / "model.onnx").write_bytes(b"not the network the manifest names")
    assert not retrieval.check(staging).ok
    again = build_index(gallery, target, model="tiny")
    assert (again.resumed, again.added) == (0, 600)
    assert retrieval.check(target).ok


def test_a_second_build_into_the_same_index_is_refused(gallery: Path, tmp_path: Path):
    target = tmp_path / "idx"
    staging = staging_dir(target)
    staging.mkdir()
    holder = hold_lock(staging, 30)  # as a running build holds it
    try:
        with pytest.raises(IndexLockedError) as err:
            build_index(gallery, target, model="tiny")
    finally:
        holder.kill()
        holder.wait()
    assert f"another build-index into {target} is running (pid {holder.pid})" in str(err.value)
    assert not target.exists()


def test_a_parked_old_index_is_reported_and_removed(tmp_path: Path):
    """A swap by three renames (no renameat2) cut short before its last one leaves the old index
    parked beside the new one: check notes it (and a resumable staging folder beside it), check
    --repair and the next build-index remove it and keep the staging folder."""
    gallery = write_gallery(tmp_path / "g", 2, 3)
    target = tmp_path / "idx"
    build_index(gallery, target, model="tiny")
    parked = aside_name(target)
    shutil.copytree(target, parked)
    with IndexStore.create(staging_dir(target), 4, {"name": "x"}):
        pass
    out = run("check", "--index", target).output
    assert f"note: {parked} was left by an interrupted build-index" in out
    assert f"note: {staging_dir(target)} holds an interrupted build-index" in out
    fixed = run("check", "--index", target, "--repair").output
    assert f"repaired: removed {parked}" in fixed
    assert not parked.exists()
    assert staging_dir(target).exists()
    shutil.copytree(target, parked)
    build_index(gallery, target, model="tiny", force=True)
    assert stray_files(tmp_path) == []


def test_a_build_killed_while_deleting_the_old_index_leaves_no_half_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The old index swapped out by --force is deleted under the parked name, not the staging
    one: cut short mid-delete (one file gone), the next build-index runs, removes the stray and
    leaves nothing beside the index."""
    gallery = write_gallery(tmp_path / "g", 2, 3)
    target = tmp_path / "idx"
    build_index(gallery, target, model="tiny")
    real_rmtree = shutil.rmtree

    def cut_short(path, *args, **kwargs):
        if Path(path) == aside_name(target) and Path(path).exists():
            next(Path(path).glob("*.sqlite")).unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt):
        build_index(gallery, target, model="tiny", force=True)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert not staging_dir(target).exists()
    assert aside_name(target).is_dir() and IndexStore.is_index(target)
    build_index(gallery, target, model="tiny", force=True)
    assert stray_files(tmp_path) == []


def test_interrupted_enroll_keeps_a_prefix_of_whole_chunks(tmp_path: Path):
    gallery = write_gallery(tmp_path / "g", 2, 3)
    target = tmp_path / "idx"
    build_index(gallery, target, model="tiny")
    before = labelled(target)
    new = write_images(tmp_path / "new", 600, (200, 200, 40), seed=5000)
    with pytest.raises(KeyboardInterrupt):
        retrieval.Retriever(target).enroll(
            "yellow", [tmp_path / "new"], progress=interrupt_after(520)
        )
    with IndexStore.open(target) as store:
        enrolled = [it.path for it in store.items() if it.label == "yellow"]
    assert enrolled == [str(p.resolve()) for p in new[:512]]
    assert before <= labelled(target)
    again = retrieval.Retriever(target).enroll("yellow", [tmp_path / "new"])
    assert (len(again.added), len(again.duplicates), again.total_for_label) == (88, 512, 600)
    shas = {sha256_file(p) for p in new}
    assert {sha for _, sha, label in labelled(target) if label == "yellow"} == shas
    assert retrieval.check(target).ok
