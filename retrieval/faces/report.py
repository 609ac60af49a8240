"""The evaluation report: one self-contained HTML page, DIR/index.html, with the Recall@K curve,
the enrolment curve, the most confused label pairs (an example image of each side) and a 2-D map
of the embedding (PCA of the class means), every image embedded as a data URI. Charts are drawn by matplotlib (the
``report`` extra, imported only here, on the Agg backend). Returns or writes; never prints."""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index import atomic_write_bytes
from retrieval.errors import InputError, require_extra
from retrieval.faces.visual import data_uri, html_page, jpeg_uri, load_thumbnail, writable_folder
from retrieval.training.metrics import (
    Confusion,
    OpenSetRun,
    confusions,
    neighbors_leave_one_out,
    recall_curve,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from retrieval.service import Evaluation

REPORT_FILE = "index.html"
TOP_PAIRS = 10
PAIR_THUMB = 120
LEGEND_UP_TO = 20  # classes named in a legend; more are named at their centre on the map

_STYLE = """table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
section { margin-bottom: 2em; }
img.chart { max-width: 100%; }
"""


def require_matplotlib(flag: str = "--report") -> None:
    """InputError with what to install when matplotlib (the report extra) is missing."""
    require_extra("matplotlib", extra="report", flag=flag, what="matplotlib")


def check_report_dir(folder: Path, flag: str = "--report") -> None:
    """Raise an error naming ``flag`` unless a report can be written into ``folder`` (made if
    missing) and matplotlib is installed; called before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {folder} is a file; give a folder")
    if not writable_folder(folder):
        raise InputError(f"{flag} {folder}: folder is not writable")
    require_matplotlib(flag)


def _class_codes(labels: Sequence[str]) -> np.ndarray:
    """Each label's index in the sorted distinct labels."""
    code = {name: i for i, name in enumerate(sorted(set(labels)))}
    return np.array([code[lab] for lab in labels])


def class_plane(x: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """(n, d) -> (n, 2): every row projected on the two principal axes of the class means (the
    plane in which the classes lie farthest apart; plain PCA of all rows is dominated by the
    spread within each class). Each axis is signed so that its largest loading is positive:
    the same data gives the same picture."""
    data = x.astype(np.float64)
    classes = _class_codes(labels)
    means = np.stack([data[classes == i].mean(axis=0) for i in range(classes.max() + 1)])
    centre = means.mean(axis=0)
    _, sv, vt = np.linalg.svd(means - centre, full_matrices=False)
    axes = vt[:2][sv[:2] > 1e-9 * sv[0]]  # k classes span at most k - 1 axes
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    out = (data - centre) @ (axes * signs[:, None]).T
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _curve_chart(xs: Sequence[int], ys: Sequence[float], xlabel: str, ylabel: str) -> bytes:
    fig = _figure(5.5, 3.6)
    ax = fig.subplots()
    ax.plot(xs, ys, marker="o")
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(xs), [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    low = min(ys, default=0.0)
    ax.set_ylim(max(0.0, low - 0.1), 1.02)
    ax.grid(True, alpha=0.3)
    return _png(fig)


def _map_chart(points: np.ndarray, labels: Sequence[str]) -> bytes:
    names = sorted(set(labels))
    classes = _class_codes(labels)
    fig = _figure(9.0, 7.5)
    ax = fig.subplots()
    cmap = "tab20" if len(names) <= 20 else "turbo"
    ax.scatter(
        points[:, 0], points[:, 1], c=classes, cmap=cmap, s=9, alpha=0.75, vmin=0, vmax=len(names)
    )
    if len(names) <= LEGEND_UP_TO:
        colours = ax.collections[0].cmap(ax.collections[0].norm(np.arange(len(names))))
        for name, colour in zip(names, colours, strict=True):
            ax.scatter([], [], color=colour, label=name, s=20)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        for i, name in enumerate(names):
            centre = points[classes == i].mean(axis=0)
            ax.annotate(
                name,
                centre,
                fontsize=6,
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6},
            )
    ax.set_xlabel("principal axis 1 of the class means")
    ax.set_ylabel("principal axis 2 of the class means")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def _chart(png: bytes, alt: str) -> str:
    return f'<img class="chart" src="{data_uri(png, "image/png")}" alt="{html.escape(alt)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def _pair_image(path: str, label: str) -> str:
    thumb = load_thumbnail(path, PAIR_THUMB)
    if thumb is None:
        return f"{html.escape(label)}: image unavailable"
    return (
        f'<figure><img src="{jpeg_uri(thumb)}" alt="{html.escape(label)}" width="{PAIR_THUMB}" '
        f'height="{PAIR_THUMB}"><figcaption>{html.escape(Path(path).name)}</figcaption></figure>'
    )


def _confusion_rows(
    pairs: Sequence[Confusion], labels: Sequence[str], paths: Sequence[str]
) -> list[list[str]]:
    sizes = Counter(labels)
    return [
        [
            str(rank),
            html.escape(c.true),
            html.escape(c.found),
            f"{c.count} of {sizes[c.true]}",
            _pair_image(paths[c.example], c.true),
            _pair_image(paths[c.neighbor], c.found),
        ]
        for rank, c in enumerate(pairs, 1)
    ]


def _section(name: str, title: str, intro: str, *parts: str) -> str:
    body = "\n".join(part for part in parts if part)
    return f'<section id="{name}"><h2>{title}</h2>\n<p>{intro}</p>\n{body}\n</section>'


def _recall_section(x: np.ndarray, labels: np.ndarray) -> str:
    curve = recall_curve(x, labels)
    ks, values = list(curve), list(curve.values())
    return _section(
        "recall",
        "Recall@K",
        "Leave-one-out: each image queries all the others; Recall@K is the share of images "
        "with an image of their own class among their K nearest.",
        _chart(_curve_chart(ks, values, "K", "Recall@K"), "Recall@K curve") if curve else "",
        _table(["K", "Recall@K"], [[str(k), f"{v:.3f}"] for k, v in curve.items()]),
    )


def _enrolment_section(enrollment: dict[str, float | None]) -> str:
    done = [(int(n), acc) for n, acc in enrollment.items() if acc is not None]
    chart = _curve_chart(
        [n for n, _ in done], [a for _, a in done], "images enrolled per class", "top-1 accuracy"
    )
    rows = [
        [n, "n/a (too few images)" if acc is None else f"{acc:.3f}"]
        for n, acc in enrollment.items()
    ]
    return _section(
        "enrolment",
        "Enrolment curve",
        "Top-1 accuracy of the k-NN vote after enrolling a few random images of every class, "
        "the others classified.",
        _chart(chart, "enrolment curve") if done else "",
        _table(["shots per class", "top-1 accuracy"], rows),
    )


def _confusion_section(ev: Evaluation, top: int) -> str:
    nearest = neighbors_leave_one_out(ev.vectors, 1)[:, 0]
    pairs = confusions(ev.labels, nearest, top=top)
    header = ["#", "class", "taken for", "images", "example", "its nearest"]
    return _section(
        "confusions",
        "Most confused pairs",
        "Images whose nearest other image (leave-one-out) is of another class, counted per "
        "(class, class of that neighbour); an example of each: the image and its nearest.",
        _table(header, _confusion_rows(pairs, ev.labels, ev.paths))
        if pairs
        else "<p>No image has a nearest neighbour of another class.</p>",
    )


def _map_section(ev: Evaluation) -> str:
    return _section(
        "map",
        "Embedding map",
        "Every image's embedding projected on the two principal axes of the class means "
        "(PCA), the plane in which the classes lie farthest apart; coloured by class.",
        _chart(_map_chart(class_plane(ev.vectors, ev.labels), ev.labels), "embedding map"),
    )


def _reliability_chart(run: OpenSetRun) -> bytes:
    """Answered queries in 10 confidence bins: the share right against the mean confidence."""
    fig = _figure(4.6, 4.0)
    ax = fig.add_subplot()
    conf, right = run.confidence[run.answered], run.right[run.answered]
    which = np.minimum((conf * 10).astype(int), 9)
    bins = [b for b in range(10) if (which == b).any()]
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=1, label="calibrated")
    ax.bar(
        [(b + 0.5) / 10 for b in bins],
        [right[which == b].mean() for b in bins],
        width=0.09,
        color="#4a7ab5",
        label="share right",
    )
    ax.plot(
        [conf[which == b].mean() for b in bins],
        [right[which == b].mean() for b in bins],
        "o",
        color="#c0392b",
        label="mean confidence",
    )
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="answers right")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _scores_chart(run: OpenSetRun) -> bytes:
    """The decision scores of known and absent queries, and the threshold."""
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot()
    finite = run.scores[np.isfinite(run.scores)]
    edges = np.histogram_bin_edges(finite, bins=30) if len(finite) else 10
    ax.hist(run.scores[run.known], bins=edges, alpha=0.6, color="#4a7ab5", label="known")
    ax.hist(run.scores[~run.known], bins=edges, alpha=0.6, color="#c0392b", label="absent")
    if run.threshold is not None:
        ax.axvline(run.threshold, color="black", linestyle="--", label="threshold")
    ax.set(xlabel="decision score (higher: more like a known label)", ylabel="queries")
    ax.legend(fontsize=8)
    return _png(fig)


def _open_set_section(ev: Evaluation) -> str:
    run = ev.open_set
    if run is None:
        return ""
    o = ev.metrics["open_set"]
    rows = [
        [
            f"{o['auroc']:.3f}",
            "–" if o["known_right"] is None else f"{o['known_right']:.3f}",
            "–" if o["absent_rejected"] is None else f"{o['absent_rejected']:.3f}",
            f"{ev.metrics['ece']:.3f}",
            f"{ev.metrics['ece_at_absent_share']:.3f}",
        ]
    ]
    return _section(
        "open-set",
        "The open world",
        f"Half the classes in a gallery (60 % of their images) calibrated from itself, as an "
        f"index is; {int(run.known.sum())} queries of its classes (known) and "
        f"{int((~run.known).sum())} of the other classes (absent, the right answer is unknown), "
        "one at a time. The confidence assumes "
        f"{run.absent_share:.0%} of queries absent; the last column weighs the known and absent "
        "queries to that share.",
        _table(
            [
                "AUROC known vs absent",
                "known answered right",
                "absent answered unknown",
                "ECE",
                f"ECE at {run.absent_share:.0%} absent",
            ],
            rows,
        ),
        _chart(_scores_chart(run), "decision scores of known and absent queries"),
        _chart(_reliability_chart(run), "reliability diagram"),
    )


def render_report(ev: Evaluation, source: str, top: int = TOP_PAIRS) -> str:
    """The report of an evaluation of ``source`` (the data folder) as one HTML document."""
    m = ev.metrics
    summary = [
        html.escape(source),
        html.escape(str(m["model"])),
        str(m["n_images"]),
        str(m["n_classes"]),
        f"{m['map_at_r']:.3f}",
    ]
    sections = [
        f"<h1>retrieve evaluate: {html.escape(source)}</h1>",
        _table(["data", "model", "images", "classes", "MAP@R"], [summary]),
        _recall_section(ev.vectors, np.array(ev.labels)),
        _enrolment_section(m["enrollment"]),
        _open_set_section(ev),
        _confusion_section(ev, top),
        _map_section(ev),
    ]
    return html_page(f"retrieve evaluate: {source}", "\n".join(sections), _STYLE)


def write_report(folder: Path, ev: Evaluation, source: str) -> Path:
    """Write ``folder``/index.html (the folder is made if missing); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / REPORT_FILE
    atomic_write_bytes(out, render_report(ev, source).encode("utf-8"))
    return out
