"""Speed on a CPU: forward-pass variants, build-index against the bare forward pass, query latency
(cold process and warm per image), the approximate index at scale, peak memory.

Every ratio compares figures measured in the same run (the machines are shared and noisy):
build-index images/s over the images/s of the forward pass alone, measured just before and after
the build, of the same exported network at the same batch size.

    python scripts/bench_speed.py            # everything (about 15 minutes on 2 cores)
    python scripts/bench_speed.py --quick    # a smaller run (about 3 minutes)
    python scripts/bench_speed.py --json     # one JSON object instead of the table
    python scripts/bench_speed.py --forward-only  # the forward-pass rows and int8 (about 5 minutes)
    python scripts/bench_speed.py --build-only --trained runs/cub50-model  # build-index rows alone,
        # of the default network and of a trained model folder (mirror-image averaging: 2 passes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.datasets.folders import Record
from retrieval.engine.runtime import OnnxForward
from retrieval.nets.export import export_onnx, sample_batch
from retrieval.nets.model import LoadedModel, TorchForward, load_model
from retrieval.nets.quantize import CALIBRATION_IMAGES, calibration_images, quantize_int8
from retrieval.training.metrics import retrieval_metrics

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import DEFAULT_DATA, split  # noqa: E402

BATCH = 32
RETRIEVE = [sys.executable, "-m", "retrieval"]
Forward = Callable[[np.ndarray], np.ndarray]


def machine() -> dict[str, object]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flag_line = re.search(r"flags\s*:\s*(.*)", info)
    flags = set(flag_line.group(1).split()) if flag_line else set()
    return {
        "cpu": model.group(1) if model else platform.processor(),
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "onnxruntime": _version("onnxruntime"),
        "torch": torch.__version__,
    }


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def images_per_second(forward: Forward, batch: np.ndarray, seconds: float) -> float:
    """Images/s of ``forward`` on ``batch`` after one warm-up call, over at least ``seconds``."""
    forward(batch)
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done < 2:
        forward(batch)
        done += 1
    return done * len(batch) / elapsed


# --- forward-pass variants -------------------------------------------------------------------


def eager(net: torch.nn.Module) -> Forward:
    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(x)).numpy()

    return run


def bf16(net: torch.nn.Module) -> Forward:
    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
        return torch.nn.functional.normalize(out.float(), dim=1).numpy()

    return run


def compiled(net: torch.nn.Module, batch: np.ndarray) -> tuple[Forward, float]:
    fn = torch.compile(net)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return fn(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    start = time.perf_counter()
    run(batch)
    return run, time.perf_counter() - start


def recall_at_1(forward: Forward, loaded: LoadedModel, test: list[Record]) -> float:
    emb = loaded.embedder(batch_size=BATCH, forward=forward, runtime="any")
    result = emb.embed_paths([r.path for r in test])
    labels = np.array([test[i].label for i in result.ok])
    return retrieval_metrics(result.vectors, labels)["recall_at_1"]


def forward_variants(
    loaded: LoadedModel,
    train: list[Record],
    test: list[Record],
    *,
    quick: bool,
    has_bf16: bool,
) -> dict[str, dict[str, object]]:
    net = loaded.net.eval()
    batch = sample_batch(loaded, test[::7], n=BATCH)[:BATCH]
    seconds = 2.0 if quick else 8.0
    onnx = export_onnx(net)
    variants: dict[str, tuple[Forward | None, str]] = {
        "eager": (eager(net), ""),
        "channels_last": (TorchForward(net), ""),
    }
    if quick:
        variants["torch.compile"] = (None, "not run with --quick (compiles for ~2 min)")
    else:
        fn, compile_s = compiled(net, batch)
        variants["torch.compile"] = (fn, f"compilation {compile_s:.0f} s")
    if has_bf16:
        variants["bf16 autocast"] = (bf16(net), "")
    else:
        variants["bf16 autocast"] = (None, "not run: this CPU has no bf16 instructions")
    variants["onnxruntime"] = (OnnxForward(onnx), "the default: 'SAME' padding folded")
    variants["onnxruntime, padding as exported"] = (
        OnnxForward(export_onnx(net, fold_padding=False)),
        "float32, the padding computed at run time (the default before 2026-12-03)",
    )
    # Calibrated as build-index --precision int8 calibrates on its gallery, here on images of
    # the training species only (never the measured ones).
    calibration = calibration_images(loaded.embedder(num_workers=0), train, CALIBRATION_IMAGES)
    variants["onnxruntime int8"] = (
        OnnxForward(quantize_int8(onnx, calibration)),
        f"build-index --precision int8, calibrated on {len(calibration)} training-species images",
    )
    reference = variants["eager"][0](batch)
    exact_r1 = recall_at_1(variants["onnxruntime"][0], loaded, test)
    out: dict[str, dict[str, object]] = {}
    for name, (fn, note) in variants.items():
        if fn is None:
            out[name] = {"img_s": None, "max_abs_diff": None, "recall_at_1": None, "note": note}
            continue
        diff = float(np.abs(fn(batch) - reference).max())
        if quick and diff < 1e-4:  # the same embeddings to 1e-4: the fp32 Recall@1 stands
            r1, note = exact_r1, ", ".join(filter(None, [note, "R@1 of onnxruntime fp32"]))
        else:
            r1 = recall_at_1(fn, loaded, test)
        out[name] = {
            "img_s": round(images_per_second(fn, batch, seconds), 1),
            "max_abs_diff": diff,
            "recall_at_1": round(r1, 4),
            "note": note,
        }
        print(f"  forward {name}: {out[name]}", file=sys.stderr)
    return out


def int8_summary(forward: dict[str, dict[str, object]]) -> dict[str, float]:
    """int8 against the default float32 network on ONNX Runtime, from the same run: images/s
    of both, speedup, and the loss of Recall@1 in points (0.01 of Recall@1 is one point)."""
    f, q = forward["onnxruntime"], forward["onnxruntime int8"]
    return {
        "float32_img_s": f["img_s"],
        "int8_img_s": q["img_s"],
        "speedup": round(q["img_s"] / f["img_s"], 3),
        "recall_at_1_float32": f["recall_at_1"],
        "recall_at_1_int8": q["recall_at_1"],
        "r1_drop": round(100 * (f["recall_at_1"] - q["recall_at_1"]), 2),
    }


# --- build-index and query through the real CLI ------------------------------------------------


def run_child(args: list[object], stdin: str | None = None) -> tuple[str, float]:
    """stderr and wall seconds of one retrieve process."""
    start = time.perf_counter()
    proc = subprocess.run(
        [*RETRIEVE, *map(str, args)], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench_speed: retrieve {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc.stderr, time.perf_counter() - start


def build_vs_forward(
    gallery: Path, index: Path, forward: Forward, batch: np.ndarray, model: str | None = None
) -> dict[str, float]:
    """build-index images/s (its own figure: hashing, decoding, embedding, committing) and the
    bare forward pass of the default network at the same batch size, before and after the build;
    with ``model``, the build runs that model (``--model``) instead of the default."""
    before = images_per_second(forward, batch, 5.0)
    chosen = ["--model", model] if model else []
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            [*RETRIEVE, "build-index", str(gallery), "--index", str(index), "--force", *chosen],
            stdout=stdout,
            stderr=stderr,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if status != 0:
        raise SystemExit(f"bench_speed: build-index of {gallery} failed:\n{err}")
    after = images_per_second(forward, batch, 5.0)
    match = re.search(r"indexed (\d+) images .* \(([\d.]+) images/s\)", out)
    assert match, out
    fwd = (before + after) / 2
    build = float(match.group(2))
    return {
        "images": int(match.group(1)),
        "build_img_s": round(build, 1),
        "forward_img_s": round(fwd, 1),
        "build_over_forward": round(build / fwd, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def large_photos(records: list[Record], n: int, root: Path) -> Path:
    """``n`` 4000x3000 JPEGs (quality 90) upscaled from real photos, one folder per species."""
    for i, r in enumerate(records[:n]):
        path = root / r.label / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(r.path) as im:
            im.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(path, quality=90)
    return root


def query_latency(index: Path, images: list[Path], repeats: int) -> dict[str, float]:
    one = images[0]
    cold = [run_child(["query", one, "--index", index])[1] for _ in range(repeats)]
    torch_cold = run_child(["query", one, "--index", index, "--model", "efficientnet_lite0"])[1]
    err, _ = run_child(
        ["query", "-", "--index", index, "--timing", "--json"],
        stdin="".join(f"{p}\n" for p in images),
    )
    match = re.search(r"p50 ([\d.]+) ms, p95 ([\d.]+) ms", err)
    assert match, err
    return {
        "query_cold_s": round(statistics.median(cold), 3),
        "query_cold_torch_s": round(torch_cold, 3),
        "query_warm_p50_ms": float(match.group(1)),
        "query_warm_p95_ms": float(match.group(2)),
        "query_warm_images": len(images),
    }


def subset_gallery(records: list[Record], root: Path, species: int) -> Path:
    """A gallery of the first ``species`` species as links to their folders (no copies)."""
    root.mkdir(parents=True)
    for label in sorted({r.label for r in records})[:species]:
        (root / label).symlink_to(next(r.path.parent for r in records if r.label == label))
    return root


# --- report ------------------------------------------------------------------------------------


def table(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, AVX2 {m['avx2']}, AVX-512 {m['avx512']}, "
        f"bf16 {m['bf16']}; torch {m['torch']}, onnxruntime {m['onnxruntime']}",
        f"command: {res['command']}",
        "",
    ]
    if "forward" in res:
        lines += [
            f"forward pass, efficientnet_lite0, batch {BATCH} at 224 px:",
            f"  {'variant':<24} {'img/s':>7} {'max |diff|':>11} {'R@1':>7}  note",
        ]
        for name, v in res["forward"].items():
            img_s = f"{v['img_s']:.1f}" if v["img_s"] is not None else "-"
            diff = f"{v['max_abs_diff']:.1e}" if v["max_abs_diff"] is not None else "-"
            r1 = f"{v['recall_at_1']:.4f}" if v["recall_at_1"] is not None else "-"
            lines.append(f"  {name:<24} {img_s:>7} {diff:>11} {r1:>7}  {v['note']}")
        q = res["int8"]
        lines.append(
            f"int8 over float32 (onnxruntime): {q['speedup']:.2f}x the images/s, Recall@1 "
            f"{q['recall_at_1_float32']:.4f} -> {q['recall_at_1_int8']:.4f} ({q['r1_drop']:+.2f} "
            "points lost)"
        )
    if "gallery" not in res:
        return "\n".join(lines)
    lines.append("")
    builds = [("", res["gallery"])]
    if "trained_build_img_s" in res:
        builds.append(("trained_", f"{res['gallery']} with --model {res['trained']}"))
    if "large_gallery" in res:
        builds.append(("large_", res["large_gallery"]))
    for prefix, what in builds:
        lines.append(
            f"build-index {what}: {res[prefix + 'build_img_s']} img/s; bare forward "
            f"{res[prefix + 'forward_img_s']} img/s; ratio {res[prefix + 'build_over_forward']}; "
            f"peak RSS {res[prefix + 'peak_rss_mb']} MiB"
        )
    if "query_cold_s" not in res:
        return "\n".join(lines)
    lines.append(
        f"query: cold {res['query_cold_s']} s (torch path {res['query_cold_torch_s']} s); warm "
        f"p50 {res['query_warm_p50_ms']} ms, p95 {res['query_warm_p95_ms']} ms per image "
        f"({res['query_warm_images']} images)"
    )
    if "ann" in res:
        a = res["ann"]
        lines.append(
            f"index of {a['n']:,} vectors: {a['type']}, build {a['build_s']} s, "
            f"{a['bytes_per_vector']} B/vector, {a['qps']} q/s vs exact {a['exact_qps']} q/s, "
            f"recall@10 {a['recall_at_10']}, peak RSS {a['peak_rss_mb']} MiB"
        )
    return "\n".join(lines)


def build_rows(
    res: dict,
    args: argparse.Namespace,
    loaded: LoadedModel,
    test: list[Record],
    train: list[Record],
    work: Path,
    quick: bool,
) -> tuple[Forward, np.ndarray]:
    """build-index of the gallery with the default network, and with ``--trained`` when given,
    into ``res``; prints the table when ``--build-only``. The reference forward pass and batch."""
    fwd = OnnxForward(export_onnx(loaded.net))
    batch = sample_batch(loaded, test[::5], n=BATCH)[:BATCH]
    gallery = args.data
    if quick:
        gallery = subset_gallery(train + test, work / "gallery", 10)
    res["gallery"] = f"{gallery.name} ({'10 species' if quick else 'all'})"
    res.update(build_vs_forward(gallery, work / "index", fwd, batch))
    if args.trained:
        res["trained"] = args.trained
        trained = build_vs_forward(gallery, work / "trained-index", fwd, batch, args.trained)
        res.update({f"trained_{k}": v for k, v in trained.items()})
    if args.build_only:
        print(json.dumps(res) if args.json else table(res))
    return fwd, batch


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--quick", action="store_true", help="a smaller run, about 3 minutes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--ann-n", type=int, default=None, help="vectors in the index benchmark")
    ap.add_argument(
        "--forward-only", action="store_true", help="only the forward-pass variants (and int8)"
    )
    ap.add_argument(
        "--build-only", action="store_true", help="only build-index of the gallery (and --trained)"
    )
    ap.add_argument(
        "--trained", default=None, help="a model folder: build-index of the gallery with it too"
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench_speed: data folder {args.data} is absent (see ../shared/data/README.md)")
    quick = args.quick
    res: dict = {"machine": machine(), "command": shlex.join([sys.executable, *sys.argv])}
    train, test = split(args.data)
    if quick:
        test = [r for r in test if r.label in sorted({t.label for t in test})[:6]]
    loaded = load_model("efficientnet_lite0")
    work = Path(tempfile.mkdtemp(prefix="bench_speed-"))
    try:
        if args.build_only:
            build_rows(res, args, loaded, test, train, work, quick)
            return
        res["forward"] = forward_variants(
            loaded, train, test, quick=quick, has_bf16=bool(res["machine"]["bf16"])
        )
        res["int8"] = int8_summary(res["forward"])
        if args.forward_only:
            print(json.dumps(res) if args.json else table(res))
            return
        fwd, batch = build_rows(res, args, loaded, test, train, work, quick)
        n_large = 40 if quick else 300
        large = large_photos(test[:: max(1, len(test) // n_large)], n_large, work / "large")
        res["large_gallery"] = f"{n_large} JPEGs of 4000x3000"
        big = build_vs_forward(large, work / "large-index", fwd, batch)
        res.update({f"large_{k}": v for k, v in big.items()})
        shutil.rmtree(large)
        queries = [r.path for r in test[: 50 if quick else 300]]
        res.update(query_latency(work / "index", queries, repeats=3))
        n = args.ann_n or (100_000 if quick else 1_000_000)
        try:
            from bench_ann import measure_ann
        except ImportError:
            print(
                "bench_speed: scripts/bench_ann.py is absent; no index benchmark", file=sys.stderr
            )
        else:
            res["ann"] = measure_ann(n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res) if args.json else table(res))


if __name__ == "__main__":
    main()
