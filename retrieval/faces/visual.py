"""The answer as a picture: each query with its nearest gallery images, their labels and scores
and the vote, as a self-contained HTML page or a PNG contact sheet; a model's spatial attention
blended over the query as a heat map. Pillow and numpy only: returns bytes or writes a file."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from index import atomic_write_bytes
from retrieval.engine.classify import Neighbor
from retrieval.engine.images import load_rgb
from retrieval.errors import ImageError, InputError
from retrieval.results import AttentionMap

SHOW_SUFFIXES = (".html", ".png")
THUMB = 160  # side of a thumbnail, pixels
PAD = 8
CAPTION = 40  # two lines of text under a thumbnail
PANEL = 200  # width of the vote's panel
ROW_HEIGHT = THUMB + CAPTION + PAD  # one query per row in the PNG
ALPHA = 0.5  # weight of the heat map where it is blended over the query
BACKGROUND = (255, 255, 255)
MATCH = (0, 120, 0)  # a neighbour of the voted label
OTHER = (170, 0, 0)
GREY = (110, 110, 110)
# Heat-map colours from low to high (the "jet" scale): dark blue, blue, cyan, yellow, red, dark red.
_HEAT = np.array(
    [[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]],
    dtype=np.float32,
)


class Answered(Protocol):
    """What a query answered (retrieval.results.Answer has this shape)."""

    @property
    def query(self) -> str: ...

    @property
    def label(self) -> str | None: ...

    @property
    def confidence(self) -> float: ...

    @property
    def neighbors(self) -> Sequence[Neighbor]: ...


def writable_folder(folder: Path) -> bool:
    """Whether ``folder`` is, or can be made as, a folder this process can write into."""
    probe = folder.absolute()
    while not probe.exists():
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def check_show_target(path: Path, flag: str = "--show") -> None:
    """Raise InputError (naming ``flag``) unless ``path`` ends in .html or .png and can be
    written: its folder exists and is writable."""
    if path.suffix.lower() not in SHOW_SUFFIXES:
        raise InputError(f"{flag} {path}: the file name must end in .html or .png")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name ending in .html or .png")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: folder {folder} does not exist")
    if not writable_folder(folder):
        raise InputError(f"{flag} {path}: folder {folder} is not writable")


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> RGB uint8 (shape + (3,)) on the jet scale, blue to red."""
    pos = np.clip(values, 0.0, 1.0) * (len(_HEAT) - 1)
    lo = np.minimum(pos.astype(np.int64), len(_HEAT) - 2)
    frac = (pos - lo)[..., None]
    return (_HEAT[lo] * (1.0 - frac) + _HEAT[lo + 1] * frac).round().astype(np.uint8)


def overlay(image: Image.Image, attention: AttentionMap, alpha: float = ALPHA) -> Image.Image:
    """``image`` with the attention map, scaled from its lowest to its highest gate and
    stretched over ``attention.box``, blended in as a heat map (blue low, red high)."""
    gates = np.asarray(attention.gates, dtype=np.float32)
    span = float(gates.max() - gates.min())
    scaled = (gates - gates.min()) / span if span > 1e-6 else np.zeros_like(gates)
    w, h = image.size
    left, top, right, bottom = attention.box
    box = (round(left * w), round(top * h), round(right * w), round(bottom * h))
    size = (max(1, box[2] - box[0]), max(1, box[3] - box[1]))
    stretched = Image.fromarray(scaled).resize(size, Image.Resampling.BILINEAR)
    heat = heat_colors(np.asarray(stretched)).astype(np.float32)
    region = np.asarray(image.convert("RGB").crop(box), dtype=np.float32)
    blended = region * (1.0 - alpha) + heat * alpha
    out = image.convert("RGB")
    out.paste(Image.fromarray(blended.round().astype(np.uint8)), box[:2])
    return out


def thumbnail(image: Image.Image, side: int = THUMB) -> Image.Image:
    """``image`` fitted into a ``side`` x ``side`` square, padded with the background."""
    return ImageOps.pad(image, (side, side), color=BACKGROUND)


def load_thumbnail(path: str | Path, side: int = THUMB) -> Image.Image | None:
    """The image at ``path`` as a thumbnail, or None when it cannot be read (e.g. a gallery
    file moved since it was indexed)."""
    try:
        return thumbnail(load_rgb(path, min_side=side), side)
    except ImageError:
        return None


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg_uri(image: Image.Image) -> str:
    """A photo as a base64 JPEG data URI (far smaller than PNG for photos)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def html_page(title: str, body: str, style: str = "") -> str:
    """A whole HTML document that needs no other file and no network."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_BASE_STYLE}{style}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


_BASE_STYLE = """body { font-family: sans-serif; margin: 1.5em; color: #222; }
figure { margin: 0; display: inline-block; vertical-align: top; }
figcaption { font-size: 0.8em; max-width: 160px; overflow-wrap: anywhere; }
.match { color: rgb(0, 120, 0); }
.other { color: rgb(170, 0, 0); }
"""

_ANSWER_STYLE = """section.answer { display: flex; gap: 8px; align-items: flex-start;
  border-bottom: 1px solid #ccc; padding: 8px 0; }
figure, .vote { flex: 0 0 auto; }
figcaption .score { display: block; color: #666; }
.vote { width: 200px; }
.vote .label { font-size: 1.4em; font-weight: bold; overflow-wrap: anywhere; }
.vote.unknown .label { color: #777; }
.missing { width: 160px; height: 160px; background: #eee; color: #777; display: flex;
  align-items: center; justify-content: center; }
"""


@dataclass(frozen=True)
class _Cell:
    image: Image.Image | None
    title: str
    note: str
    css: str  # "match", "other" or ""
    path: str  # shown on hover in HTML


def _vote_lines(p: Answered) -> tuple[str, str]:
    if p.label is None:
        near = ", ".join(dict.fromkeys(n.label for n in p.neighbors[:3]))
        return "unknown", f"nearest: {near}" if near else "empty index"
    return p.label, f"confidence {p.confidence:.2f}"


def _cells(result: Answered, attention: AttentionMap | None) -> tuple[list[_Cell], list[_Cell]]:
    """(the query's cells: the photo and, with attention, the overlay; the neighbours' cells)."""
    try:
        photo = load_rgb(result.query, min_side=THUMB)
    except ImageError:
        photo = None
    path = Path(result.query)
    name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    query = [_Cell(photo and thumbnail(photo), name, "query", "", str(path))]
    if attention is not None and photo is not None:
        query.append(
            _Cell(thumbnail(overlay(photo, attention)), "attention", "blue low, red high", "", "")
        )
    voted = result.label
    neighbours = [
        _Cell(
            load_thumbnail(n.path),
            n.label,
            f"{n.score:.3f}",
            "" if voted is None else "match" if n.label == voted else "other",
            n.path,
        )
        for n in result.neighbors
    ]
    return query, neighbours


def render_html(
    results: Sequence[Answered],
    attention: Sequence[AttentionMap | None] | None = None,
) -> str:
    """One section per query: the query (and its attention overlay), the vote, and each
    neighbour with its label and score; every image embedded as a data URI."""
    sections = []
    for i, r in enumerate(results):
        query, neighbours = _cells(r, attention[i] if attention else None)
        label, detail = _vote_lines(r)
        unknown = " unknown" if r.label is None else ""
        parts = [_html_figure(c, "query" if j == 0 else "attention") for j, c in enumerate(query)]
        parts.append(
            f'<div class="vote{unknown}"><div class="label">{html.escape(label)}</div>'
            f'<div class="detail">{html.escape(detail)}</div></div>'
        )
        parts.extend(_html_figure(c, f"neighbor {c.css}".strip()) for c in neighbours)
        sections.append('<section class="answer">\n' + "\n".join(parts) + "\n</section>")
    title = "retrieve: " + ", ".join(Path(r.query).name for r in results)
    return html_page(title, "\n".join(sections), _ANSWER_STYLE)


def _html_figure(cell: _Cell, css: str) -> str:
    picture = (
        f'<img src="{jpeg_uri(cell.image)}" alt="{html.escape(cell.title)}" '
        f'title="{html.escape(cell.path)}" width="{THUMB}" height="{THUMB}">'
        if cell.image is not None
        else '<div class="missing">image unavailable</div>'
    )
    return (
        f'<figure class="{css}">{picture}<figcaption><span class="label">'
        f'{html.escape(cell.title)}</span> <span class="score">{html.escape(cell.note)}</span>'
        "</figcaption></figure>"
    )


def render_png(
    results: Sequence[Answered],
    attention: Sequence[AttentionMap | None] | None = None,
) -> bytes:
    """A contact sheet, one row (ROW_HEIGHT pixels) per query: the query (and its attention
    overlay), a panel with the vote, then each neighbour with its label and score."""
    rows = [_cells(r, attention[i] if attention else None) for i, r in enumerate(results)]
    columns = max((len(q) + len(n) for q, n in rows), default=1)
    width = PAD + columns * (THUMB + PAD) + PANEL + PAD
    sheet = Image.new("RGB", (width, PAD + len(rows) * ROW_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    big = ImageFont.load_default(size=18)
    for row, (r, (query, neighbours)) in enumerate(zip(results, rows, strict=True)):
        top = PAD + row * ROW_HEIGHT
        x = PAD
        for cell in query:
            _draw_cell(sheet, draw, font, cell, x, top)
            x += THUMB + PAD
        label, detail = _vote_lines(r)
        colour = GREY if r.label is None else (0, 0, 0)
        # A long label gets the smaller font before it is cut short.
        face = big if draw.textlength(label, font=big) <= PANEL - PAD else font
        draw.text((x, top + THUMB // 3), _fit(draw, label, face, PANEL - PAD), colour, face)
        draw.text((x, top + THUMB // 3 + 26), _fit(draw, detail, font, PANEL - PAD), GREY, font)
        x += PANEL + PAD
        for cell in neighbours:
            _draw_cell(sheet, draw, font, cell, x, top)
            x += THUMB + PAD
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _draw_cell(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    cell: _Cell,
    x: int,
    top: int,
) -> None:
    if cell.image is None:
        draw.rectangle((x, top, x + THUMB - 1, top + THUMB - 1), fill=(235, 235, 235))
        draw.text((x + 8, top + THUMB // 2), "image unavailable", GREY, font)
    else:
        sheet.paste(cell.image, (x, top))
    colour = {"match": MATCH, "other": OTHER}.get(cell.css, (0, 0, 0))
    draw.text((x, top + THUMB + 3), _fit(draw, cell.title, font, THUMB), colour, font)
    draw.text((x, top + THUMB + 20), _fit(draw, cell.note, font, THUMB), GREY, font)


def _fit(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
) -> str:
    """``text``, cut short with an ellipsis if it is wider than ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def write_answer(
    out: Path,
    results: Sequence[Answered],
    attention: Sequence[AttentionMap | None] | None = None,
) -> Path:
    """Write the answer sheet to ``out``: HTML or PNG after its suffix (see check_show_target)."""
    if out.suffix.lower() == ".html":
        data = render_html(results, attention).encode("utf-8")
    else:
        data = render_png(results, attention)
    atomic_write_bytes(out, data)
    return out
