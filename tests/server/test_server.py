"""`retrieve serve`: the real server (uvicorn on loopback) over a tiny index, talked to with
httpx."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from PIL import Image

from retrieval.indexing.build import build_index

from ..helpers import COLORS, run, write_image
from .helpers import running

PURPLE = (150, 30, 200)


def post_image(client: httpx.Client, url: str, path: Path, **params: object) -> httpx.Response:
    with path.open("rb") as f:
        return client.post(url, files={"file": (path.name, f, "image/png")}, params=params)


def enroll(client: httpx.Client, url: str, label: str, *paths: Path) -> httpx.Response:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    return client.post(f"{url}/enroll", data={"label": label}, files=files)


def test_query_equals_the_cli_json(built: Path, tmp_path: Path, monkeypatch):
    q = write_image(tmp_path / "q" / "red query.png", COLORS["red"], seed=999)
    with running(built) as url, httpx.Client() as client:
        response = post_image(client, f"{url}/query", q, k=3, min_score=0.5)
        assert response.status_code == 200, response.text
        served = response.json()
    monkeypatch.chdir(q.parent)
    expected = json.loads(
        run("query", q.name, "--index", built, "-k", "3", "--min-score", "0.5", "--json").output
    )
    assert served == expected
    assert served["query"] == "red query.png" and served["label"] == "red"
    assert len(served["neighbors"]) == 3


def test_enroll_query_delete(index: Path, tmp_path: Path):
    shots = [
        write_image(tmp_path / "p" / f"purple {j}.png", PURPLE, seed=700 + j) for j in range(3)
    ]
    probe = write_image(tmp_path / "probe.png", PURPLE, seed=799)
    with running(index) as url, httpx.Client() as client:
        assert post_image(client, f"{url}/query", probe).json()["label"] != "purple"
        r = enroll(client, url, "purple", *shots)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "label": "purple",
            "added": [p.name for p in shots],
            "duplicates": [],
            "skipped": [],
            "count": 3,
        }
        again = enroll(client, url, "purple", shots[0]).json()
        assert again["added"] == [] and again["count"] == 3
        assert [d["file"] for d in again["duplicates"]] == [shots[0].name]

        answer = post_image(client, f"{url}/query", probe, k=3).json()
        assert answer["label"] == "purple"
        kept = [Path(n["path"]) for n in answer["neighbors"]]
        assert all(p.is_file() and p.parent.parent == index.resolve() / "uploads" for p in kept)
        thumb = client.get(f"{url}/items/{answer['neighbors'][0]['id']}/thumb")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 160

        r = client.delete(f"{url}/labels", params={"label": "purple"})
        assert r.status_code == 200 and r.json()["removed"] == 3
        assert not any(p.exists() for p in kept)
        assert "purple" not in client.get(f"{url}/labels").json()
        assert post_image(client, f"{url}/query", probe).json()["label"] != "purple"

        answer_path = post_image(client, f"{url}/query", probe).json()["neighbors"][0]["path"]
        r = client.delete(f"{url}/items", params={"path": answer_path})
        assert r.status_code == 200 and r.json()["removed"] == 1
        assert Path(answer_path).is_file()  # a gallery photo is never deleted, only its item
        assert sum(client.get(f"{url}/labels").json().values()) == 11
        assert client.delete(f"{url}/labels", params={"label": "nope"}).status_code == 404
    assert "index OK: 11 items" in run("check", "--index", index).output


def test_labels_health_docs(built: Path):
    with running(built) as url, httpx.Client() as client:
        assert client.get(f"{url}/labels").json() == {"blue": 4, "green": 4, "red": 4}
        assert client.get(f"{url}/health").json() == {
            "ok": True,
            "count": 12,
            "model": "tiny",
            "index": str(built.resolve()),
        }
        docs = client.get(f"{url}/docs")
        assert docs.status_code == 200 and "/openapi.json" in docs.text
        assets = re.findall(r'(?:href|src)="([^"]+)"', docs.text)
        assert len(assets) >= 3 and all(a.startswith("/docs-static/") for a in assets)
        assert all(client.get(f"{url}{a}").status_code == 200 for a in assets)
        paths = client.get(f"{url}/openapi.json").json()["paths"]
        assert {"/query", "/enroll", "/items", "/labels", "/health"} <= set(paths)
        page = client.get(f"{url}/")
        assert page.status_code == 200 and 'id="file"' in page.text
        assert client.get(f"{url}/static/app.js").status_code == 200
        assert client.get(f"{url}/items/999/thumb").status_code == 404
        assert client.get(f"{url}/items/..%2Fetc%2Fpasswd/thumb").status_code in (404, 422)


def test_upload_over_the_limit_is_413(index: Path, tmp_path: Path):
    big = write_image(tmp_path / "big.png", PURPLE, seed=1, size=256)  # ~190 kB of noise
    assert big.stat().st_size > 100_000
    with running(index, max_upload_mb=0.05) as url, httpx.Client() as client:
        assert post_image(client, f"{url}/query", big).status_code == 413
        assert enroll(client, url, "purple", big).status_code == 413
        assert client.get(f"{url}/health").json()["count"] == 12
    assert not (index / "uploads").exists()


def test_text_file_named_jpg_is_refused_by_name(index: Path, tmp_path: Path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("not a photo at all\n")
    with running(index) as url, httpx.Client() as client:
        r = post_image(client, f"{url}/query", fake)
        assert r.status_code == 422
        assert r.json()["detail"].startswith("holiday.jpg: not a readable image")
        r = enroll(client, url, "purple", fake)
        assert r.status_code == 422 and "nothing enrolled" in r.json()["detail"]
        r = enroll(client, url, "bad/label", write_image(tmp_path / "ok.png", PURPLE, seed=3))
        assert r.status_code == 422 and "path separator" in r.json()["detail"]
        assert client.get(f"{url}/labels").json() == {"blue": 4, "green": 4, "red": 4}
    assert not any((index / "uploads").rglob("*"))


def test_concurrent_queries_during_enrolment(index: Path, tmp_path: Path):
    probes = [
        write_image(tmp_path / f"{c}.png", COLORS[c], seed=900 + i) for i, c in enumerate(COLORS)
    ]
    batches = [
        [
            write_image(tmp_path / "new" / f"{b}-{j}.png", PURPLE, seed=1000 + 10 * b + j)
            for j in range(4)
        ]
        for b in range(3)
    ]
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client_loop(url: str, probe: Path, label: str) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                # the closed-set answer: concurrency is tested here, not the open-set rule
                r = post_image(client, f"{url}/query", probe, min_score=0)
                if r.status_code != 200 or r.json()["label"] != label:
                    failures.append(f"{r.status_code} {r.text}")
                answered[0] += 1

    with running(index) as url, httpx.Client(timeout=60) as client:
        threads = [threading.Thread(target=client_loop, args=(url, p, p.stem)) for p in probes * 2]
        for t in threads:
            t.start()
        try:
            for batch in batches:
                r = enroll(client, url, "purple", *batch)
                assert r.status_code == 200 and len(r.json()["added"]) == 4, r.text
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert client.get(f"{url}/labels").json()["purple"] == 12
    assert not failures, failures[:3]
    assert answered[0] >= len(threads)
    assert "index OK: 24 items" in run("check", "--index", index).output


def test_an_enrolment_by_another_process_is_seen(index: Path, tmp_path: Path):
    shots = [write_image(tmp_path / "p" / f"{j}.png", PURPLE, seed=600 + j) for j in range(2)]
    probe = write_image(tmp_path / "probe.png", PURPLE, seed=699)
    with running(index) as url, httpx.Client() as client:
        assert post_image(client, f"{url}/query", probe).json()["label"] != "purple"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "retrieval",
                "enroll",
                "purple",
                *map(str, shots),
                "--index",
                str(index),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert client.get(f"{url}/health").json()["count"] == 14
        assert post_image(client, f"{url}/query", probe, k=2).json()["label"] == "purple"


def test_serve_without_the_extra_says_so(built: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "retrieval.faces.server", raising=False)
    result = run("serve", "--index", built, ok=False)
    assert result.exit_code == 1
    assert "needs the 'serve' extra (fastapi is not installed)" in result.output


def test_serve_refuses_a_folder_that_is_not_an_index(tmp_path: Path):
    result = run("serve", "--index", tmp_path / "none", ok=False)
    assert result.exit_code == 1
    assert "is not an index" in result.output


def test_an_index_rebuilt_in_place_is_reopened(index: Path, tmp_path: Path):
    gallery = tmp_path / "other"
    for j in range(3):
        write_image(gallery / "purple" / f"{j}.png", PURPLE, seed=400 + j)
        write_image(gallery / "red" / f"{j}.png", COLORS["red"], seed=410 + j)
    probe = write_image(tmp_path / "probe.png", PURPLE, seed=499)
    with running(index) as url, httpx.Client() as client:
        assert client.get(f"{url}/health").json()["count"] == 12
        build_index(gallery, index, model="tiny", force=True)
        assert client.get(f"{url}/labels").json() == {"purple": 3, "red": 3}
        assert post_image(client, f"{url}/query", probe).json()["label"] == "purple"
        r = enroll(client, url, "green", write_image(tmp_path / "g.png", COLORS["green"], seed=7))
        assert r.status_code == 200 and r.json()["count"] == 1
    assert "index OK: 7 items" in run("check", "--index", index).output
