"""evaluate --report: the confused pairs, the Recall@K curve and the 2-D map as functions, then
the whole self-contained page through the CLI (tiny backbone, colour classes)."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.faces.report import class_plane
from retrieval.training.metrics import (
    Confusion,
    confusions,
    neighbors_leave_one_out,
    recall_at_k,
    recall_curve,
)

from .helpers import COLORS, EVALUATE_JSON_KEYS, run, write_image


def unit(angles_deg: list[float]) -> np.ndarray:
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_confusions_by_hand():
    labels = ["a", "a", "a", "b", "b", "c"]
    nearest = np.array([1, 3, 3, 4, 0, 3])
    assert confusions(labels, nearest) == [
        Confusion("a", "b", 2, example=1, neighbor=3),
        Confusion("b", "a", 1, example=4, neighbor=0),
        Confusion("c", "b", 1, example=5, neighbor=3),
    ]
    assert confusions(labels, nearest, top=1) == [Confusion("a", "b", 2, 1, 3)]
    assert confusions(["a", "a"], np.array([1, 0])) == []


def test_confusions_of_embeddings_where_two_classes_overlap():
    # "gull" and "tern" interleave around 0 deg; "crow" sits far away at 180 deg.
    x = unit([0, 4, 8, 2, 6, 10, 180, 184, 188])
    labels = ["gull"] * 3 + ["tern"] * 3 + ["crow"] * 3
    nearest = neighbors_leave_one_out(x, 1)[:, 0]
    found = confusions(labels, nearest)
    assert {(c.true, c.found) for c in found} == {("gull", "tern"), ("tern", "gull")}
    assert sum(c.count for c in found) == 6  # every gull and tern, no crow
    for c in found:
        assert labels[c.example] == c.true and labels[c.neighbor] == c.found
        assert nearest[c.example] == c.neighbor


def test_recall_curve_keeps_k_below_n_and_agrees_with_recall_at_k():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 5)
    curve = recall_curve(x, labels)
    assert list(curve) == [1, 2, 4, 8, 16]
    idx = neighbors_leave_one_out(x, 16)
    assert curve == recall_at_k(labels, labels[idx], [1, 2, 4, 8, 16])
    assert list(curve.values()) == sorted(curve.values()) and curve[16] == 1.0


def test_class_plane_spreads_the_classes_and_is_deterministic():
    # Three classes whose means lie on one line in 16-d, each with a wide spread along another
    # direction: plain PCA would show the spread, the plane of the class means the classes.
    rng = np.random.default_rng(2)
    along, spread = np.eye(16)[0], np.eye(16)[1]
    labels = [name for name in ("a", "b", "c") for _ in range(50)]
    centres = {"a": -1.0, "b": 0.0, "c": 1.0}
    x = np.stack(
        [
            centres[lab] * along + 5 * rng.normal() * spread + 0.01 * rng.normal(size=16)
            for lab in labels
        ]
    )
    points = class_plane(x, labels)
    assert points.shape == (150, 2)
    first = {lab: points[[i for i, m in enumerate(labels) if m == lab], 0] for lab in centres}
    assert first["a"].max() < first["b"].min() and first["b"].max() < first["c"].min()
    np.testing.assert_allclose(class_plane(x[::-1], labels[::-1])[::-1], points, atol=1e-9)
    two = class_plane(x[:100], labels[:100])  # two classes: one axis
    assert two.shape == (100, 2) and np.allclose(two[:, 1], 0)


def decode_all(page: str) -> list[Image.Image]:
    images = []
    for mime, data in re.findall(r'src="data:image/(png|jpeg);base64,([^"]+)"', page):
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.load()
        assert img.format == mime.upper()
        images.append(img)
    return images


def test_report_page(gallery: Path, tmp_path: Path):
    # "crimson" is red under another name: every confusion is between the two.
    for j in range(3):
        write_image(gallery / "crimson" / f"{j}.png", COLORS["red"], seed=80 + j)
    out = tmp_path / "report"
    r = run("evaluate", gallery, "--model", "tiny", "--json", "--report", out)
    assert set(json.loads(r.stdout)) == EVALUATE_JSON_KEYS
    page = (out / "index.html").read_text(encoding="utf-8")
    for section in ("recall", "enrolment", "open-set", "confusions", "map"):
        assert f'<section id="{section}">' in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page
    images = decode_all(page)
    charts = [img for img in images if img.format == "PNG"]
    assert len(charts) == 5 and all(img.width > 300 for img in charts)
    table = page.split('<section id="confusions">')[1].split("</section>")[0]
    rows = re.findall(r"<tr><td>\d+</td><td>([^<]+)</td><td>([^<]+)</td>", table)
    assert rows and all({a, b} == {"red", "crimson"} for a, b in rows)
    assert len(re.findall(r'src="data:image/jpeg', table)) == 2 * len(rows)
    assert "K</th>" in page and "<td>8</td>" in page and "<td>16</td>" not in page  # 15 images


def test_report_target_errors_before_any_work(gallery: Path, tmp_path: Path):
    file = tmp_path / "report.html"
    file.write_text("")
    r = run("evaluate", tmp_path / "nothing", "--report", file, ok=False)
    assert r.exit_code == 1
    assert r.stderr.strip() == f"retrieve: error: --report {file} is a file; give a folder"


def test_report_without_matplotlib_says_what_to_install(
    gallery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    r = run("evaluate", gallery, "--model", "tiny", "--report", tmp_path / "r", ok=False)
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1
    assert (
        "--report needs matplotlib, which is not installed: pip install 'retrieve[report]'"
        in r.stderr
    )
    assert not (tmp_path / "r").exists()
