"""query --show: the answer drawn as a self-contained HTML page or a PNG contact sheet, and the
attention overlay of a model with an attention module (tiny backbone, colour classes)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrieval
from retrieval.config import ModelSpec
from retrieval.engine.images import load_rgb
from retrieval.faces.visual import (
    PAD,
    PANEL,
    ROW_HEIGHT,
    THUMB,
    AttentionMap,
    heat_colors,
    overlay,
    thumbnail,
)
from retrieval.nets.model import load_model, save_model_dir

from .helpers import COLORS, run, write_image


class Page(HTMLParser):
    """The figures of an answer page: (css class, image src or None, caption texts), and the
    texts of the vote panels."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict] = []
        self.votes: list[dict] = []
        self.sources: list[str] = []
        self._span: str | None = None
        self._in_vote: dict | None = None
        self._vote_part: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        css = a.get("class") or ""
        if tag in ("img", "script", "link", "iframe") and ("src" in a or "href" in a):
            self.sources.append(a.get("src") or a.get("href") or "")
        if tag == "figure":
            self.figures.append({"class": css, "src": None, "label": "", "score": ""})
        elif tag == "img" and self.figures:
            self.figures[-1].update(src=a["src"], title=a.get("title"))
        elif tag == "span" and self.figures and css in ("label", "score"):
            self._span = css
        elif tag == "div" and css.startswith("vote"):
            self._in_vote = {"class": css, "label": "", "detail": ""}
            self.votes.append(self._in_vote)
        elif tag == "div" and self._in_vote is not None and css in ("label", "detail"):
            self._vote_part = css

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._span = None
        if tag == "div":
            self._vote_part = None
        if tag == "section":
            self._in_vote = None

    def handle_data(self, data: str) -> None:
        if self._span:
            self.figures[-1][self._span] += data
        elif self._vote_part and self._in_vote is not None:
            self._in_vote[self._vote_part] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def decode(src: str) -> Image.Image:
    head, data = src.split(",", 1)
    assert head in ("data:image/jpeg;base64", "data:image/png;base64")
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    img.load()
    assert img.format == head.split("/")[1].split(";")[0].upper()
    return img


@pytest.fixture
def built(gallery: Path, tmp_path: Path) -> Path:
    index = tmp_path / "idx"
    run("build-index", gallery, "--index", index, "--model", "tiny")
    return index


def test_heat_colors_run_from_blue_to_red() -> None:
    colours = heat_colors(np.linspace(0, 1, 11)).astype(int)
    assert tuple(colours[0]) == (0, 0, 128) and tuple(colours[-1]) == (128, 0, 0)
    redness = colours[:, 0] - colours[:, 2]
    assert redness[0] < 0 < redness[-1]
    assert (np.diff(redness[2:9]) >= 0).all() and redness[8] > redness[2]  # blue, cyan, yellow, red


def test_overlay_follows_the_map_inside_its_box() -> None:
    image = Image.new("RGB", (80, 40), (120, 120, 120))
    gates = np.array([[0.9, 0.1], [0.9, 0.1]], dtype=np.float32)  # left high, right low
    out = np.asarray(overlay(image, AttentionMap(gates, (0.5, 0.0, 1.0, 1.0))), dtype=int)
    # Outside the box (the left half of the image) nothing changes.
    assert (out[:, :40] == 120).all()
    redness = out[:, :, 0] - out[:, :, 2]
    assert redness[:, 42:50].mean() > 50 > -50 > redness[:, 70:78].mean()


def test_show_html_is_self_contained_with_query_neighbours_and_vote(built: Path, tmp_path: Path):
    q = write_image(tmp_path / "red query.png", COLORS["red"], seed=999)
    out = tmp_path / "answer.html"
    r = run("query", q, "--index", built, "-k", "3", "--json", "--show", out)
    answer = json.loads(r.stdout)  # JSON still alone on stdout
    page = parse(out)
    assert all(src.startswith("data:image/") for src in page.sources)
    query, *neighbours = page.figures
    assert query["class"] == "query" and query["label"] == f"{q.parent.name}/{q.name}"
    assert decode(query["src"]).size == (THUMB, THUMB)
    assert [(f["label"], f["score"], f["title"]) for f in neighbours] == [
        (n["label"], f"{n['score']:.3f}", n["path"]) for n in answer["neighbors"]
    ]
    assert len(neighbours) == 3 and all(decode(f["src"]) for f in neighbours)
    assert all(f["class"] == "neighbor match" for f in neighbours)  # all red, like the vote
    assert retrieval.Retriever(built).attention([q]) is None  # no attention module, no overlay
    (vote,) = page.votes
    assert vote["label"] == answer["label"] == "red"
    assert vote["detail"] == f"confidence {answer['confidence']:.2f}"


def test_show_html_says_unknown(built: Path, tmp_path: Path):
    q = write_image(tmp_path / "q.png", COLORS["blue"], seed=5)
    out = tmp_path / "answer.html"
    run("query", q, "--index", built, "--min-score", "1.01", "--show", out)
    (vote,) = parse(out).votes
    assert vote["class"] == "vote unknown" and vote["label"] == "unknown"
    assert vote["detail"] == "nearest: blue"


def test_show_png_one_row_per_query(built: Path, tmp_path: Path):
    queries = [
        write_image(tmp_path / f"{label}.png", COLORS[label], seed=7) for label in ("red", "blue")
    ]
    out = tmp_path / "answer.png"
    r = run("query", *queries, "--index", built, "-k", "4", "--show", out)
    assert f"wrote {out}" in r.stderr
    sheet = Image.open(out)
    assert sheet.format == "PNG"
    assert sheet.size == (PAD + 5 * (THUMB + PAD) + PANEL + PAD, PAD + 2 * ROW_HEIGHT)
    pixels = np.asarray(sheet.convert("RGB"), dtype=float)
    for row, label in enumerate(("red", "blue")):
        top = PAD + row * ROW_HEIGHT
        query_cell = pixels[top + 10 : top + THUMB - 10, PAD + 10 : PAD + THUMB - 10]
        last_neighbour = pixels[top + 10 : top + THUMB - 10, -PAD - THUMB + 10 : -PAD - 10]
        for cell in (query_cell, last_neighbour):
            assert np.abs(cell.mean(axis=(0, 1)) - COLORS[label]).max() < 25


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("answer.jpg", "must end in .html or .png"),
        ("missing/answer.png", "does not exist"),
        ("folder.png", "is a folder"),
    ],
)
def test_show_bad_target_fails_before_any_work(tmp_path: Path, target: str, message: str):
    q = write_image(tmp_path / "q.png", COLORS["red"], seed=1)
    (tmp_path / "folder.png").mkdir()
    out = tmp_path / target
    r = run("query", q, "--index", tmp_path / "no-index", "--show", out, ok=False)
    assert r.exit_code == 1
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"retrieve: error: --show {out}") and message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png", "q.png"]


def test_attention_overlay_of_a_model_with_attention(gallery: Path, tmp_path: Path):
    import torch

    torch.manual_seed(0)
    net = load_model("tiny", spec=ModelSpec(backbone="tiny", attention=True)).net
    model = tmp_path / "att-model"
    save_model_dir(net, model)
    index = tmp_path / "idx"
    run("build-index", gallery, "--index", index, "--model", model)
    q = write_image(tmp_path / "q.png", COLORS["green"], seed=3)
    out = tmp_path / "answer.html"
    run("query", q, "--index", index, "--show", out)
    query, attention, *_ = parse(out).figures
    assert attention["class"] == "attention"
    plain = np.asarray(decode(query["src"]).convert("RGB"), dtype=float)
    shown = np.asarray(decode(attention["src"]).convert("RGB"), dtype=float)
    assert np.abs(shown - plain).mean() > 20
    (maps,) = retrieval.Retriever(index).attention([q])
    gates = np.asarray(
        Image.fromarray(maps.gates).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    )
    heat_redness = (shown[..., 0] - shown[..., 2]) - 0.5 * (plain[..., 0] - plain[..., 2])
    assert np.corrcoef(heat_redness.ravel(), gates.ravel())[0, 1] > 0.75
    # Exactly the map of that image blended over it (up to the page's JPEG compression).
    expected = thumbnail(overlay(load_rgb(q, min_side=THUMB), maps))
    assert np.abs(shown - np.asarray(expected, dtype=float)).mean() < 3


def test_show_without_attention_never_imports_torch(built: Path, tmp_path: Path):
    q = write_image(tmp_path / "q.png", COLORS["red"], seed=5)
    out = tmp_path / "answer.png"
    script = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from retrieval.faces.cli import main\n"
        f"r = CliRunner().invoke(main, ['query', {str(q)!r}, '--index', {str(built)!r}, "
        f"'--show', {str(out)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'mpl': 'matplotlib' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"torch": False, "mpl": False}
    assert Image.open(out).format == "PNG"
