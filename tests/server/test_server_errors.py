"""What the attack of issue 15 sent to `retrieve serve` (defect 4 and kin): every odd request
gets a 4xx with ``{"detail": "one line"}``, never a 500."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .helpers import running

PURPLE = (150, 30, 200)


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), PURPLE).save(out, format="PNG")
    return out.getvalue()


def multipart(field: bytes, filename: bytes, content: bytes, *, label: bytes | None = None):
    """A multipart body written byte for byte (httpx would escape a NUL in a file name)."""
    body = b""
    if label is not None:
        body += b'--XX\r\nContent-Disposition: form-data; name="label"\r\n\r\n' + label + b"\r\n"
    body += (
        b'--XX\r\nContent-Disposition: form-data; name="'
        + field
        + b'"; filename="'
        + filename
        + b'"\r\nContent-Type: image/png\r\n\r\n'
        + content
        + b"\r\n--XX--\r\n"
    )
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=XX"}}


def one_line_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    return detail


@pytest.mark.parametrize("item", ["99999999999999999999999", "-9223372036854775809", "-1"])
def test_a_thumbnail_of_an_id_out_of_range_is_404(built: Path, item: str):
    with running(built) as url:
        detail = one_line_error(httpx.get(f"{url}/items/{item}/thumb"), 404)
    assert f"no item with id {item}" in detail


def test_delete_of_a_path_with_a_nul_is_404(index: Path):
    with running(index) as url:
        r = httpx.delete(f"{url}/items", params={"path": "a\x00b"})
        one_line_error(r, 404)
        assert httpx.get(f"{url}/health").json()["count"] == 12


def test_delete_of_an_unknown_label_is_404(index: Path):
    with running(index) as url:
        detail = one_line_error(httpx.delete(f"{url}/labels", params={"label": "nope"}), 404)
    assert detail == f"no items with label 'nope' in {index}"


@pytest.mark.parametrize(
    "filename", [b"a.j\x00pg", b"a." + b"x" * 300, b"../../a\npng.png", b"/etc/passwd"]
)
def test_odd_file_names_are_only_names(index: Path, filename: bytes):
    with running(index) as url:
        r = httpx.post(f"{url}/query", **multipart(b"file", filename, png()))
        assert r.status_code == 200, r.text
        assert r.json()["query"] == filename.decode()
        r = httpx.post(f"{url}/query", **multipart(b"file", filename, b"not an image"))
        assert one_line_error(r, 422).startswith(repr(filename.decode())[1:-1][:20])
        r = httpx.post(f"{url}/enroll", **multipart(b"files", filename, png(), label=b"purple"))
        assert r.status_code == 200, r.text
        assert r.json()["added"] == [filename.decode()]
    stored = [p for p in (index / "uploads").rglob("*") if p.is_file()]
    assert len(stored) == 1 and stored[0].parent.parent == index.resolve() / "uploads"
