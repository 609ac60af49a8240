"""Paths from a tampered index are not trusted (issue 15, defect 6): every file the service or
the API writes or deletes lies in the index's own ``uploads/`` folder, whatever the records say
or that folder has been replaced by; thumbnails say the same 404 for every unreadable path."""

from __future__ import annotations

import io
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from PIL import Image

from retrieval.api import Retriever
from retrieval.indexing import uploads

from .helpers import running


def png(color: tuple[int, int, int] = (150, 30, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(out, format="PNG")
    return out.getvalue()


def set_path(index: Path, item: int, path: str) -> None:
    with closing(sqlite3.connect(index / "records.sqlite")) as conn:
        conn.execute("UPDATE items SET path = ? WHERE id = ?", (path, item))
        conn.commit()


def enroll(url: str, label: str, data: bytes, name: str = "p.png") -> httpx.Response:
    return httpx.post(
        f"{url}/enroll", data={"label": label}, files={"files": (name, data, "image/png")}
    )


def test_a_record_path_climbing_out_of_uploads_is_not_deleted(index: Path):
    canary = index / "canary"
    canary.write_text("keep me")
    (index / "uploads").mkdir()
    climbing = f"{index.resolve()}/uploads/../canary"
    set_path(index, 1, climbing)
    set_path(index, 2, f"{index.resolve()}/uploads/0123456789abcdef/../../canary")
    with running(index) as url:
        r = httpx.delete(f"{url}/items", params={"path": climbing})
        assert r.status_code == 200 and r.json()["removed"] == 1, r.text
        label = r.json()["items"][0]["label"]
        assert httpx.delete(f"{url}/labels", params={"label": label}).status_code == 200
    assert canary.read_text() == "keep me"


def test_uploads_replaced_by_a_symbolic_link_is_not_written_through(index: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (index / "uploads").symlink_to(elsewhere)
    with running(index) as url:
        r = enroll(url, "purple", png())
        assert r.status_code == 500, r.text
        assert "uploads" in r.json()["detail"] and "symbolic link" in r.json()["detail"]
        assert httpx.get(f"{url}/health").json()["count"] == 12
    with Retriever(index) as r, pytest.raises(Exception, match="symbolic link"):
        r.enroll("purple", [png()])
    assert list(elsewhere.iterdir()) == []


def test_a_prefix_folder_replaced_by_a_symbolic_link_is_not_used(index: Path, tmp_path: Path):
    data = png()
    elsewhere = tmp_path / "elsewhere"
    with running(index) as url:
        assert enroll(url, "purple", data).status_code == 200
        stored = next((index / "uploads").rglob("p.png"))
        stored.parent.rename(elsewhere)  # the photo's folder moved away, a link in its place
        stored.parent.symlink_to(elsewhere)
        r = httpx.delete(f"{url}/labels", params={"label": "purple"})
        assert r.status_code == 200 and r.json()["removed"] == 1, r.text
        assert (elsewhere / "p.png").read_bytes() == data  # not deleted through the link
        r = enroll(url, "purple", data)
        assert r.status_code == 500 and "symbolic link" in r.json()["detail"], r.text
    assert sorted(p.name for p in elsewhere.iterdir()) == ["p.png"]


def test_a_copy_replaced_by_other_bytes_is_written_again(index: Path):
    with running(index) as url:
        enroll(url, "purple", png())
        copy = next((index / "uploads").rglob("p.png"))
        httpx.delete(f"{url}/labels", params={"label": "purple"})
        copy.parent.mkdir(parents=True)
        copy.write_bytes(b"planted")
        r = enroll(url, "purple", png())
        assert r.status_code == 200 and r.json()["added"] == ["p.png"], r.text
    assert copy.read_bytes() == png()


def test_thumbnails_say_the_same_404_for_every_unreadable_path(index: Path, tmp_path: Path):
    (tmp_path / "not-an-image.txt").write_text("secret")
    paths = {
        1: "/etc/shadow",
        2: str(tmp_path / "missing.png"),
        3: str(tmp_path / "not-an-image.txt"),
        4: str(tmp_path),
        5: "/dev/zero",
    }
    for item, path in paths.items():
        set_path(index, item, path)
    with running(index) as url:
        answers = {item: httpx.get(f"{url}/items/{item}/thumb", timeout=30) for item in paths}
    assert {a.status_code for a in answers.values()} == {404}
    details = {a.json()["detail"].replace(str(item), "N") for item, a in answers.items()}
    assert details == {"item N has no readable image"}, details


def test_uploads_names_only_a_file_two_levels_below_uploads(index: Path):
    root = index.resolve() / "uploads"
    assert uploads.own_copy(index, str(root / "0123456789abcdef" / "a.png")) is not None
    for path in (
        root / ".." / "canary",
        root / "0123456789abcdef" / ".." / "x",
        root / "0123456789abcdef" / "sub" / "a.png",
        root / "a.png",
        root / "not-a-prefix" / "a.png",
        index.resolve() / "elsewhere" / "0123456789abcdef" / "a.png",
    ):
        assert uploads.own_copy(index, str(path)) is None, path
