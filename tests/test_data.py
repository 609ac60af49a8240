from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrieval.datasets.folders import collect_images, scan_gallery, validate_label
from retrieval.errors import GalleryError, InputError

from .helpers import write_image


def test_scan_labels_and_nested_images(gallery: Path):
    scan = scan_gallery(gallery)
    assert scan.labels == ["blue", "green", "red"]
    assert len(scan.records) == 12
    nested = [r for r in scan.records if r.path.parent.name == "nested"]
    assert {r.label for r in nested} == {"blue", "green", "red"}


def test_missing_and_empty_gallery(tmp_path: Path):
    with pytest.raises(GalleryError, match="does not exist"):
        scan_gallery(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GalleryError, match="no label sub-folders"):
        scan_gallery(tmp_path / "empty")


def test_label_folder_without_images_names_it(gallery: Path):
    (gallery / "hollow").mkdir()
    (gallery / "hollow" / "notes.txt").write_text("x")
    with pytest.raises(GalleryError, match="hollow holds no images"):
        scan_gallery(gallery)


def test_non_image_and_loose_files_are_skipped_with_reason(gallery: Path):
    (gallery / "red" / "readme.txt").write_text("hi")
    (gallery / "loose.png").write_bytes(b"")
    scan = scan_gallery(gallery)
    reasons = dict(scan.skipped)
    assert reasons[str(gallery / "red" / "readme.txt")] == "not an image file type"
    assert reasons[str(gallery / "loose.png")] == "not inside a label folder"
    assert len(scan.records) == 12


def test_symlink_loop_does_not_hang(gallery: Path):
    os.symlink(gallery / "red", gallery / "red" / "loop")
    assert len(scan_gallery(gallery).records) == 12


def test_unicode_labels(tmp_path: Path):
    write_image(tmp_path / "g" / "Mésange bleue" / "ä 1.png", (1, 2, 3), 0)
    assert scan_gallery(tmp_path / "g").labels == ["Mésange bleue"]


@pytest.mark.parametrize("bad", ["", "   ", "a/b", "a\\b", "tab\there", "x" * 201])
def test_bad_labels_refused(bad: str):
    with pytest.raises(InputError):
        validate_label(bad)


def test_collect_images_files_and_folders(gallery: Path, tmp_path: Path):
    scan = collect_images([gallery / "red", gallery / "blue" / "0.png"])
    assert len(scan.records) == 5
    with pytest.raises(InputError, match="does not exist"):
        collect_images([tmp_path / "missing.jpg"])
