"""The OpenAPI schema tells the truth (issue 15, defect 9): every status and body `retrieve
serve` answers is documented for its operation, and the rules it enforces are in the schema, so
that a client generated from /openapi.json works. (tests/server/test_schemathesis.py fuzzes the
whole schema; these are the cases the attack found.)"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
from PIL import Image

from retrieval.datasets.folders import validate_label
from retrieval.errors import InputError

from .helpers import running

IMAGE_TYPES = "image/jpeg, image/png, image/bmp, image/gif, image/webp, image/tiff"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), (150, 30, 200)).save(out, format="PNG")
    return out.getvalue()


def documented(schema: dict, path: str, method: str, response: httpx.Response) -> None:
    """``response`` is one of those the schema gives ``method path``, with a body of its shape."""
    operation = schema["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], (method, path, status, response.text)
    content = operation["responses"][status].get("content", {})
    if "application/json" in content:
        body = content["application/json"]["schema"]
        validator = jsonschema_rs.validator_for({**body, "components": schema["components"]})
        validator.validate(response.json())


@pytest.fixture(scope="module")
def served(built: Path):
    with running(built) as url:
        yield url, httpx.get(f"{url}/openapi.json").json()


def test_422_bodies_are_one_line_as_documented(served):
    url, schema = served
    cases = [
        ("/query", "post", {"params": {"k": 0}, "files": {"file": ("p.png", png())}}),
        ("/query", "post", {"params": {"min_score": "nan"}, "files": {"file": ("p.png", png())}}),
        ("/query", "post", {"files": {"file": ("x.jpg", b"not an image")}}),
        ("/query", "post", {}),
        ("/items", "delete", {}),
        ("/enroll", "post", {"data": {"label": "a/b"}, "files": {"files": ("p.png", png())}}),
    ]
    for path, method, request in cases:
        r = httpx.request(method.upper(), f"{url}{path}", **request)
        assert r.status_code == 422, (path, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and "--" not in detail, detail
        documented(schema, path, method, r)


def test_404s_are_documented(served):
    url, schema = served
    documented(schema, "/items/{item_id}/thumb", "get", httpx.get(f"{url}/items/999/thumb"))
    r = httpx.delete(f"{url}/labels", params={"label": "nope"})
    assert r.status_code == 404
    documented(schema, "/labels", "delete", r)
    r = httpx.delete(f"{url}/items", params={"path": "/nope.png"})
    assert r.status_code == 404
    documented(schema, "/items", "delete", r)


def test_successes_match_their_schemas(served):
    url, schema = served
    r = httpx.post(f"{url}/query", files={"file": ("p.png", png())}, params={"k": 3})
    documented(schema, "/query", "post", r)
    documented(schema, "/labels", "get", httpx.get(f"{url}/labels"))
    documented(schema, "/health", "get", httpx.get(f"{url}/health"))


def test_the_rules_are_in_the_schema(served):
    _, schema = served
    paths = schema["paths"]
    assert set(paths) == {
        "/query",
        "/enroll",
        "/items",
        "/labels",
        "/health",
        "/items/{item_id}/thumb",
    }
    remove_path = paths["/items"]["delete"]["parameters"]
    assert [(p["name"], p["required"]) for p in remove_path] == [("path", True)]
    remove_label = paths["/labels"]["delete"]["parameters"]
    assert [(p["name"], p["required"]) for p in remove_label] == [("label", True)]
    for path, field in (("/query", "file"), ("/enroll", "files")):
        body = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]
        assert body["encoding"][field]["contentType"] == IMAGE_TYPES
    k = next(p for p in paths["/query"]["post"]["parameters"] if p["name"] == "k")
    assert k["schema"]["minimum"] == 1 and k["schema"]["maximum"] == 1000
    for operation in (op for item in paths.values() for op in item.values()):
        for status in ("400", "422"):
            if status in operation["responses"]:
                ref = operation["responses"][status]["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/Error"}, operation["summary"]


@pytest.mark.parametrize(
    "label",
    [
        "lead",
        "Snowy Owl",
        "é",
        "a" * 200,
        " lead",
        "lead ",
        "",
        "a/b",
        "a\\b",
        "a\nb",
        "a\u200bb",
        "\U000e0001",
        "\u0378",
        "\ue000",
        "\U000f0000",
        "a\u202eb",
        "a\u2028b",
        "a" * 201,
        "\U0001f989 owl",
        "lead\u3000",
    ],
)
def test_the_label_pattern_is_the_label_rule(served, label: str):
    _, schema = served
    body = schema["paths"]["/enroll"]["post"]["requestBody"]["content"]["multipart/form-data"]
    ref = body["schema"]["$ref"].rsplit("/", 1)[1]
    rule = schema["components"]["schemas"][ref]["properties"]["label"]
    try:
        validate_label(label)
        accepted = True
    except InputError:
        accepted = False
    assert jsonschema_rs.validator_for(rule).is_valid(label) == accepted, label
