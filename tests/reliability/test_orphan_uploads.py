"""Uploads orphaned by a crash (issue 15, defect 7): a server killed mid-enrolment leaves the
photos it had written in INDEX/uploads with no item recording them; ``check`` notes them and
``check --repair`` removes them: only files no item records, only inside uploads/, never those
of an enrolment still running."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from retrieval.api import Retriever, check
from retrieval.indexing import uploads

from ..server.helpers import serve_process
from .helpers import hold_lock, retrieve

N = 120


def photo(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 24), (i % 256, (7 * i) % 256, 200)).save(out, format="PNG")
    return out.getvalue()


def files_in(index: Path) -> list[Path]:
    return sorted(p for p in (index / "uploads").rglob("*") if p.is_file())


def post_many(url: str) -> None:
    """POST /enroll of N photos; the server is killed before it answers."""
    with contextlib.suppress(httpx.TransportError):
        httpx.post(
            f"{url}/enroll",
            data={"label": "many"},
            files=[("files", (f"{i}.png", photo(i), "image/png")) for i in range(N)],
            timeout=120,
        )


def test_uploads_of_a_server_killed_mid_enrolment_are_noted_and_repaired(index: Path):
    with Retriever(index) as r:
        kept = r.enroll("kept", [photo(9999)]).added  # a recorded upload: it must stay
    server, url = serve_process(index)
    try:
        lock = hold_lock(index, 120)  # the enrolment waits for the writer lock: its files are out
        posting = threading.Thread(target=post_many, args=(url,), daemon=True)
        posting.start()
        deadline = time.monotonic() + 60
        while len(files_in(index)) < N + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(files_in(index)) == N + 1
        os.kill(server.pid, signal.SIGKILL)
    finally:
        server.kill()
        server.wait()
        lock.kill()
        lock.wait()

    done = retrieve("check", "--index", index)
    assert done.returncode == 0, done.stdout
    uploads_dir = index.resolve() / "uploads"
    assert f"note: {N} files in {uploads_dir} that no item records" in done.stdout, done.stdout
    repaired = retrieve("check", "--repair", "--index", index)
    assert repaired.returncode == 0, repaired.stdout
    assert f"repaired: removed {N} files from {uploads_dir} that no item records" in repaired.stdout
    assert [str(p) for p in files_in(index)] == list(kept)
    again = retrieve("check", "--index", index)
    assert "no item records" not in again.stdout and "index OK: 13 items" in again.stdout


def test_repair_keeps_the_files_of_an_enrolment_in_progress(index: Path):
    stray = uploads.store(index, "stray.png", photo(1))
    with uploads.pending(index):  # as an enrolment between writing its copies and committing
        report = check(index, repair=True)
        assert stray.path.is_file()
        assert any("an enrolment is in progress" in note for note in report.notes), report.notes
    report = check(index, repair=True)
    assert not stray.path.exists() and not stray.path.parent.exists()
    assert report.repaired[-1].startswith("removed 1 file from ")


def test_repair_leaves_what_the_index_did_not_write(index: Path, tmp_path: Path):
    (index / "uploads").mkdir()
    (index / "uploads" / "README").write_text("not the index's")
    (index / "uploads" / "0123456789abcdef").symlink_to(tmp_path)
    (tmp_path / "victim.png").write_bytes(photo(2))
    report = check(index, repair=True)
    assert report.ok and not any("no item records" in n for n in report.notes), report.notes
    assert (tmp_path / "victim.png").is_file() and (index / "uploads" / "README").is_file()
