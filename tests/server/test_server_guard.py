"""A server a browser or a network can reach (issue 15, defect 5): a cross-origin form post is
refused, a Host header other than the service's names is refused (DNS rebinding), and with an
access token (--token / RETRIEVE_TOKEN) writes need it; bound beyond loopback, the service does
not start without one."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from retrieval.faces import guard
from retrieval.faces.cli import main

from .helpers import running

TOKEN = "correct horse battery staple"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), (150, 30, 200)).save(out, format="PNG")
    return out.getvalue()


def enroll(url: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/enroll",
        data={"label": "purple"},
        files={"files": ("p.png", png(), "image/png")},
        headers=headers,
    )


def count(url: str) -> int:
    return httpx.get(f"{url}/health").json()["count"]


def test_a_cross_origin_form_post_is_refused(index: Path):
    with running(index) as url:
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "https://" + url[7:]):
            r = enroll(url, Origin=origin)
            assert r.status_code == 403, (origin, r.text)
            assert "cross-origin" in r.json()["detail"]
        r = enroll(url, **{"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403, r.text
        r = httpx.delete(f"{url}/labels", params={"label": "red"}, headers={"Origin": "http://e.x"})
        assert r.status_code == 403
        r = httpx.post(
            f"{url}/query", files={"file": ("p.png", png())}, headers={"Origin": "http://e.x"}
        )
        assert r.status_code == 403
        assert count(url) == 12
        assert enroll(url, Origin=url).status_code == 200  # the page itself
        assert enroll(url, **{"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert count(url) == 13


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io", ""])
def test_a_foreign_host_header_is_refused(index: Path, host: str):
    with running(index) as url:
        for method, path in (("GET", "/labels"), ("GET", "/"), ("GET", "/openapi.json")):
            r = httpx.request(method, f"{url}{path}", headers={"Host": host})
            assert r.status_code == 400, (path, r.text)
            assert "Host" in r.json()["detail"]
        assert enroll(url, Host=host).status_code == 400
        assert count(url) == 12


def test_the_service_answers_to_its_own_names(index: Path):
    with running(index) as url:
        port = url.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST", f"[::1]:{port}"):
            assert httpx.get(f"{url}/labels", headers={"Host": host}).status_code == 200, host
    with running(index, allowed_hosts=["photos.example"]) as url:
        assert httpx.get(f"{url}/labels", headers={"Host": "photos.example"}).status_code == 200
        assert httpx.get(f"{url}/labels", headers={"Host": "other.example"}).status_code == 400
    with running(index, allowed_hosts=["*"]) as url:
        assert httpx.get(f"{url}/labels", headers={"Host": "any.example"}).status_code == 200


def test_with_a_token_writes_need_it_and_reads_do_not(index: Path):
    with running(index, token=TOKEN) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = enroll(url, **headers)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.delete(f"{url}/labels", params={"label": "red"})
        assert r.status_code == 401
        assert count(url) == 12
        assert httpx.get(f"{url}/labels").status_code == 200
        assert httpx.post(f"{url}/query", files={"file": ("p.png", png())}).status_code == 200
        assert enroll(url, Authorization=f"Bearer {TOKEN}").status_code == 200
        r = httpx.delete(
            f"{url}/labels", params={"label": "red"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 200
        schema = httpx.get(f"{url}/openapi.json").json()
        assert schema["components"]["securitySchemes"] == {
            "token": {"type": "http", "scheme": "bearer", "description": guard.TOKEN_HELP}
        }


def test_bound_beyond_loopback_it_does_not_start_without_a_token(built: Path, monkeypatch):
    monkeypatch.delenv("RETRIEVE_TOKEN", raising=False)
    for host in ("0.0.0.0", "::", "192.0.2.7"):
        result = CliRunner().invoke(main, ["serve", "--index", str(built), "--host", host])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [
            f"retrieve: error: --host {host} is reachable from the network: give --token TOKEN "
            "or set RETRIEVE_TOKEN (writes then need it)"
        ]
    result = CliRunner().invoke(
        main, ["serve", "--index", str(built), "--host", "0.0.0.0", "--token", ""]
    )
    assert result.exit_code != 0 and "--token" in result.output


def test_the_default_hosts_are_the_bound_address_and_loopback():
    assert guard.default_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert guard.default_hosts("192.0.2.7") == {"192.0.2.7", "127.0.0.1", "localhost", "::1"}
    assert guard.needs_token("192.0.2.7") and guard.needs_token("0.0.0.0")
    assert not guard.needs_token("127.0.0.1") and not guard.needs_token("localhost")
    assert not guard.needs_token("::1")
