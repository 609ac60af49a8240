"""The index at scale: a million realistic vectors on one machine, and the old synthetic set.

"million" (the default): the statistics of real embeddings are measured on a gallery index
built with the default network (``retrieval.build`` of ``--data``, ../shared/data/cub50-dev,
into a temp folder, unless ``--gallery-index`` names one already built from it), and a seeded
gallery of ``--n`` vectors with them is drawn (scripts/realistic_vectors.py: thousands of
classes, class 0 of exactly 100 images). First, real and synthetic sets of the real size are
compared (nearest-neighbour accuracy, cosines, recall@10 of the approximate index types at
their default settings against exact search). Then the million is built through IndexStore
into an index folder holding the gallery index's network (records, then the FAISS index
``--index-type`` calls for: auto) and calibrated for the open world (``retrieve calibrate``, as
build-index ends; its time is part of ``build_s``), and measured through the real CLI:
``retrieve query`` of one
photo (whole process, cold), ``retrieve query -`` of 300 photos (per image, warm), ``retrieve
enroll`` of 5 new photos (minus the time the network takes to embed them, measured in this
process) and ``retrieve remove`` of the 100-item label, with the peak RSS of the query
processes; in a process of its own, recall@10 and the k-NN vote (k = 5, weighted) of 1,000
synthetic queries against exact search, and the search's own time per query.

"ann" (the earlier benchmark, ``--synthetic-n``, 0 to skip): seeded clustered 512-d vectors
(2,000 isotropic clusters), built and searched the same way, with queries/s and recall@10.

    python scripts/bench_ann.py                    # the million and the synthetic row
    python scripts/bench_ann.py --n 100000 --synthetic-n 0 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realistic_vectors import (  # noqa: E402
    Gallery,
    calibrate,
    describe,
    exact_top,
    measure,
)

from index import INDEX_TYPES, RECORDS, VECTORS, IndexStore, backend  # noqa: E402
from index.plan import FLAT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RETRIEVE = [sys.executable, "-m", "retrieval"]
CENTRES = 2000
NOISE = 1.5
"""Norm of the gaussian noise added to a unit centre: a vector's cosine to its centre is about
0.55, to another of its cluster about 0.3, to other clusters about 0 (± 0.05)."""
CHUNK = 10_000
K = 10
VOTE_K = 5
NPROBE_SWEEP = (4, 8, 16, 32, 64)
MODEL = {"name": "bench-ann", "source": "synthetic", "fingerprint": "0" * 16}
_OPEN_AND_SEARCH = """
import sys, numpy as np
from pathlib import Path
from index import IndexStore
with IndexStore.open(sys.argv[1]) as store:
    store.search(np.load(sys.argv[2]), int(sys.argv[3]))
status = Path("/proc/self/status").read_text().splitlines()
print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""
_WARM_SEARCH = """
import json, sys, time, numpy as np
from pathlib import Path
from index import IndexStore
queries = np.load(sys.argv[2])
start = time.perf_counter()
store = IndexStore.open(sys.argv[1])
opened = time.perf_counter() - start
found, seconds = [], []
for q in queries:
    t = time.perf_counter()
    (row,) = store.search(q[None, :], int(sys.argv[3]))
    seconds.append(time.perf_counter() - t)
    found.append([[h.id, h.score, h.label] for h in row])
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
kb = {k: int(status[k].split()[0]) for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
print(json.dumps({"open_s": opened, "seconds": seconds, "found": found, "kb": kb,
                  "layout": store.layout.to_json()}))
"""


# --- the earlier synthetic set ---------------------------------------------------------------


def clustered_unit_vectors(n: int, dim: int, *, seed: int) -> np.ndarray:
    """``n`` float32 unit rows: one of ``CENTRES`` random unit centres plus gaussian noise of
    norm about ``NOISE``, normalised; the same for the same seed."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, CHUNK):
        rows = out[start : start + CHUNK]
        rows[:] = centres[rng.integers(0, CENTRES, len(rows))]
        rows += rng.standard_normal(rows.shape, dtype=np.float32) * (NOISE / np.sqrt(dim))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def _recall(found: list[list[int]] | np.ndarray, exact: np.ndarray, k: int = K) -> float:
    return float(
        np.mean(
            [
                len(set(list(f)[:k]) & set(e[:k].tolist())) / k
                for f, e in zip(found, exact, strict=True)
            ]
        )
    )


def _store_search_ids(store: IndexStore, queries: np.ndarray, k: int) -> list[list[int]]:
    return [[h.id for h in row] for row in store.search(queries, k)]


def _build(root: Path, vectors: np.ndarray, index_type: str) -> tuple[np.ndarray, float, float]:
    """Fill a new store at ``root``; (ids, seconds to the last commit, seconds to the FAISS
    file written)."""
    start = time.perf_counter()
    ids = []
    store = IndexStore.create(root, vectors.shape[1], MODEL, index_type=index_type)
    with store, store.bulk():
        for at in range(0, len(vectors), CHUNK):
            rows = vectors[at : at + CHUNK]
            numbers = range(at, at + len(rows))
            ids.append(
                store.add(
                    rows,
                    [f"c{i % CENTRES}" for i in numbers],
                    [f"/bench/{i}.jpg" for i in numbers],
                    [f"{i:064x}" for i in numbers],
                )
            )
        records_s = time.perf_counter() - start
    return np.concatenate(ids), records_s, time.perf_counter() - start


def _peak_rss_mb(cmd: list[str], stdin: str | None = None) -> tuple[float, float, str, str]:
    """(wall s, peak RSS MB, stdout, stderr) of one child process. The peak is the child's own,
    measured by /usr/bin/time around it where there is one: a child forked from this large
    process would carry this process's RSS in its ru_maxrss until it execs."""
    timer = shutil.which("time") or "/usr/bin/time"
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        wrapped = [timer, "-f", "%M", "-o", str(peak_file), *cmd] if Path(timer).exists() else cmd
        start = time.perf_counter()
        proc = subprocess.run(wrapped, input=stdin, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench_ann: {shlex.join(cmd)} failed:\n{proc.stderr}")
        peak_kb = float(peak_file.read_text().split()[-1]) if peak_file.exists() else float("nan")
    return wall, peak_kb / 1024, proc.stdout, proc.stderr


def measure_ann(
    n: int = 1_000_000,
    dim: int = 512,
    *,
    seed: int = 0,
    queries: int = 1000,
    index_type: str = "auto",
) -> dict:
    """Build and search an IndexStore of ``n`` clustered ``dim``-d unit vectors, created with
    ``index_type``: build time, bytes per vector, queries/s, recall@10 against exact search,
    the peak RSS of a process that opens the index and searches it."""
    data = clustered_unit_vectors(n + queries, dim, seed=seed)
    gallery, probes = data[:n], data[n:]
    with tempfile.TemporaryDirectory(prefix="bench_ann_") as tmp:
        root = Path(tmp) / "index"
        ids, records_s, build_s = _build(root, gallery, index_type)
        faiss_bytes = (root / VECTORS).stat().st_size
        records_bytes = sum(p.stat().st_size for p in root.glob(f"{RECORDS}*"))
        path = root.parent / "queries.npy"
        np.save(path, probes)
        cmd = [sys.executable, "-c", _OPEN_AND_SEARCH, str(root), str(path), str(K)]
        peak_rss_mb = int(subprocess.run(cmd, check=True, capture_output=True).stdout) / 1024
        with IndexStore.open(root) as store:
            layout = store.layout
            store.search(probes[:10], K)
            start = time.perf_counter()
            found = _store_search_ids(store, probes, K)
            qps = queries / (time.perf_counter() - start)
    exact = backend.build_index(FLAT, ids, gallery)
    start = time.perf_counter()
    _, truth = backend.search(exact, probes, K)
    exact_qps = queries / (time.perf_counter() - start)
    return {
        "n": n,
        "dim": dim,
        "type": layout.type,
        "build_s": build_s,
        "bytes_per_vector": faiss_bytes / n,
        "qps": qps,
        "exact_qps": exact_qps,
        "recall_at_10": _recall(found, truth),
        "peak_rss_mb": peak_rss_mb,
        "records_s": records_s,
        "records_bytes_per_vector": records_bytes / n,
        "layout": layout.to_json(),
        "bench_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --- the realistic million -------------------------------------------------------------------


def gallery_index(data: Path, work: Path) -> Path:
    """An index of ``data`` built with the default network (the statistics' source)."""
    import retrieval

    target = work / "gallery-index"
    retrieval.build(data, target)
    return target


def real_embeddings(index: Path) -> tuple[np.ndarray, np.ndarray, dict, bytes]:
    """(vectors, labels, model entry, model.onnx bytes) of an index."""
    with IndexStore.open(index, lazy=True) as store:
        ids, vectors = store.vectors()
        labels = np.array([it.label for it in store.items(ids)])
        model = store.model
    onnx = model.get("onnx", {}).get("file", "model.onnx")
    return vectors, labels, model, (index / onnx).read_bytes()


def _loo_recall(vectors: np.ndarray, index_type: str, work: Path) -> tuple[float, dict]:
    """Leave-one-out recall@10 of ``index_type`` at its default settings for these vectors,
    against exact search, through IndexStore (each vector queried, itself left out)."""
    root = work / f"loo-{index_type}"
    shutil.rmtree(root, ignore_errors=True)
    n = len(vectors)
    with IndexStore.create(root, vectors.shape[1], MODEL, index_type=index_type) as store:
        store.add(vectors, ["x"] * n, [str(i) for i in range(n)], [str(i) for i in range(n)])
        found = [
            [i - 1 for i in row if i - 1 != q][:K]
            for q, row in enumerate(_store_search_ids(store, vectors, K + 1))
        ]
        layout = store.layout.to_json()
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    exact = np.argsort(-sims, axis=1)[:, :K]
    shutil.rmtree(root)
    return _recall(found, exact), layout


def realism(stats_real: tuple[np.ndarray, np.ndarray], stats, work: Path) -> dict:
    """Real and synthetic sets of the real size side by side."""
    vectors, labels = stats_real
    synthetic = Gallery(stats, len(vectors), seed=1)
    syn_vectors = np.concatenate([rows for _, rows in synthetic.chunks()])
    out = {}
    for name, (x, y) in {
        "real": (vectors, labels),
        "synthetic": (syn_vectors, synthetic.labels),
    }.items():
        row = describe(x, y)
        for kind in ("ivf", "compact"):
            recall, layout = _loo_recall(x, kind, work)
            row[f"recall_at_10_{kind}"] = recall
            row[f"layout_{kind}"] = layout
        out[name] = row
    out["between_scale"] = stats.between_scale
    return out


def build_million(root: Path, gallery: Gallery, model: dict, onnx: bytes, index_type: str) -> dict:
    """The million through IndexStore, as build-index fills an index: commits of CHUNK rows in
    one bulk block, the FAISS index built once at its end."""
    start = time.perf_counter()
    store = IndexStore.create(
        root, gallery.dim, model, index_type=index_type, files={"model.onnx": onnx}
    )
    with store, store.bulk():
        for at, rows in gallery.chunks():
            numbers = range(at, at + len(rows))
            labels = [f"s{gallery.labels[i]:05d}" for i in numbers]
            store.add(
                rows,
                labels,
                [f"/synthetic/{label}/{i}.jpg" for label, i in zip(labels, numbers, strict=True)],
                [f"{i:064x}" for i in numbers],
            )
        records_s = time.perf_counter() - start
    return {"build_s": time.perf_counter() - start, "records_s": records_s}


def _photos(data: Path, n: int, skip: int = 0) -> list[Path]:
    return sorted(data.glob("*/*.jpg"))[skip : skip + n]


def _embed_seconds(index: Path, photos: list[Path]) -> tuple[float, float]:
    """(seconds to load the index's network, seconds it then takes to embed ``photos``), in
    this process, median of 3 fresh loads: what an enrolling process spends on embedding."""
    from retrieval.engine.network import ModelEntry
    from retrieval.indexing.network import embedder_for

    with IndexStore.open(index, lazy=True) as store:
        entry = ModelEntry.parse(store.model, str(index))
    loads, forwards = [], []
    for _ in range(3):
        start = time.perf_counter()
        embedder = embedder_for(index, entry)
        loaded = time.perf_counter()
        embedder.embed_paths(photos)
        loads.append(loaded - start)
        forwards.append(time.perf_counter() - loaded)
    return statistics.median(loads), statistics.median(forwards)


def cli_figures(index: Path, small: Path, data: Path, work: Path) -> dict:
    """The million measured through the CLI (see the module's docstring)."""
    one = _photos(data, 1)[0]
    cold = [_peak_rss_mb([*RETRIEVE, "query", str(one), "--index", str(index)]) for _ in range(3)]
    stream = "".join(f"{p}\n" for p in _photos(data, 300))
    timing = re.compile(r"p50 ([\d.]+) ms, p95 ([\d.]+) ms")
    warm = {}
    for name, folder in (("million", index), ("gallery", small)):
        _, rss, _, err = _peak_rss_mb(
            [*RETRIEVE, "query", "-", "--index", str(folder), "--timing", "--json"], stream
        )
        match = timing.search(err)
        assert match, err
        warm[name] = (float(match.group(1)), float(match.group(2)), rss)
    new = work / "new-photos" / "Bench_Enrolled"
    new.mkdir(parents=True, exist_ok=True)
    photos = []
    for i, p in enumerate(_photos(data, 5, skip=7)):
        target = new / f"{i}.jpg"
        target.write_bytes(p.read_bytes() + b"\0" * (i + 1))  # new content, the same picture
        photos.append(target)
    load_s, forward_s = _embed_seconds(index, photos)
    enroll = [*RETRIEVE, "enroll", "Bench enrolled", *map(str, photos), "--index"]
    empty = work / "empty-index"
    shutil.rmtree(empty, ignore_errors=True)
    with IndexStore.open(index, lazy=True) as store:
        onnx = store.model.get("onnx", {}).get("file", "model.onnx")
        IndexStore.create(
            empty, store.dim, store.model, files={onnx: (index / onnx).read_bytes()}
        ).close()
    empty_wall = _peak_rss_mb([*enroll, str(empty)])[0]
    enroll_wall, enroll_rss, _, _ = _peak_rss_mb([*enroll, str(index)])
    remove_wall, _, out, _ = _peak_rss_mb(
        [*RETRIEVE, "remove", "--label", "s00000", "--index", str(index)]
    )
    return {
        "query_cold_s": statistics.median(c[0] for c in cold),
        "query_cold_runs_s": [round(c[0], 3) for c in cold],
        "query_cold_peak_rss_mb": max(c[1] for c in cold),
        "query_warm_p50_ms": warm["million"][0],
        "query_warm_p95_ms": warm["million"][1],
        "query_warm_peak_rss_mb": warm["million"][2],
        "query_warm_gallery_p50_ms": warm["gallery"][0],
        "enroll5_s": enroll_wall - load_s - forward_s,
        "enroll5_wall_s": enroll_wall,
        "enroll5_network_load_s": load_s,
        "enroll5_forward_s": forward_s,
        "enroll5_into_empty_index_wall_s": empty_wall,
        "enroll5_peak_rss_mb": enroll_rss,
        "remove100_s": remove_wall,
        "remove100_output": out.strip(),
    }


def _vote(labels: list[str], scores: list[float]) -> str | None:
    from retrieval.engine.classify import Neighbor, vote

    hits = [Neighbor("", lab, s) for lab, s in zip(labels, scores, strict=True)]
    return vote(hits, k=VOTE_K).label


def search_figures(root: Path, gallery: Gallery, queries: int, work: Path) -> dict:
    """recall@10 and the vote against exact search, and the search's own time, in a process
    that opens the index and searches it one query at a time."""
    probes, _ = gallery.queries(queries)
    path = work / "queries.npy"
    np.save(path, probes)
    start = time.perf_counter()
    exact_scores, exact_rows = exact_top(gallery, probes, K)
    exact_s = time.perf_counter() - start
    out = subprocess.run(
        [sys.executable, "-c", _WARM_SEARCH, str(root), str(path), str(K)],
        check=True,
        capture_output=True,
        text=True,
    )
    res = json.loads(out.stdout)
    found = [[h[0] - 1 for h in row] for row in res["found"]]  # ids are row numbers + 1
    agree = []
    for row, scores, rows in zip(res["found"], exact_scores, exact_rows, strict=True):
        mine = _vote([h[2] for h in row], [h[1] for h in row])
        theirs = _vote([f"s{gallery.labels[r]:05d}" for r in rows], scores.tolist())
        agree.append(mine == theirs)
    ms = np.array(res["seconds"]) * 1000
    return {
        "recall_at_10": _recall(found, exact_rows),
        "vote_agreement": float(np.mean(agree)),
        "search_p50_ms": float(np.percentile(ms, 50)),
        "search_p95_ms": float(np.percentile(ms, 95)),
        "search_open_s": res["open_s"],
        "search_process_kb": res["kb"],
        "layout": res["layout"],
        "exact_search_s": exact_s,
        "queries": queries,
    }


_CROSSOVER = """
import json, sys, time, numpy as np
from pathlib import Path
from index import IndexStore
queries = np.load(sys.argv[2])
store = IndexStore.open(sys.argv[1])
store.search(queries[:20], 10)
seconds = []
for q in queries:
    t = time.perf_counter()
    store.search(q[None, :], 10)
    seconds.append(time.perf_counter() - t)
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
print(json.dumps({"p50_ms": float(np.percentile(np.array(seconds) * 1000, 50)),
                  "rss_mb": int(status["VmRSS"].split()[0]) / 1024}))
"""


def crossover(stats, sizes: list[int], work: Path, queries: int = 300) -> dict:
    """flat and compact side by side on realistic galleries of ``sizes``: a warm process's
    search time per query (k = 10, one query at a time) and resident memory after the queries,
    the FAISS file's bytes per vector, and compact's recall@10 against flat (exact)."""
    out = {}
    for n in sizes:
        gallery = Gallery(stats, n, seed=n)
        probes, _ = gallery.queries(queries)
        path = work / "crossover-queries.npy"
        np.save(path, probes)
        row: dict = {}
        found = {}
        for kind in ("flat", "compact"):
            root = work / f"crossover-{kind}"
            shutil.rmtree(root, ignore_errors=True)
            with IndexStore.create(root, gallery.dim, MODEL, index_type=kind) as store:
                with store.bulk():
                    for at, rows in gallery.chunks():
                        numbers = range(at, at + len(rows))
                        store.add(
                            rows,
                            ["x"] * len(rows),
                            [str(i) for i in numbers],
                            [str(i) for i in numbers],
                        )
                found[kind] = _store_search_ids(store, probes, K)
            res = json.loads(
                subprocess.run(
                    [sys.executable, "-c", _CROSSOVER, str(root), str(path)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            row[kind] = {**res, "faiss_bytes_per_vector": (root / VECTORS).stat().st_size / n}
            shutil.rmtree(root)
        row["compact"]["recall_at_10"] = _recall(found["compact"], np.array(found["flat"]))
        out[str(n)] = row
    return out


def measure_million(args: argparse.Namespace) -> dict:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_million_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        small = Path(args.gallery_index) if args.gallery_index else gallery_index(args.data, work)
        vectors, labels, model, onnx = real_embeddings(small)
        stats = measure(vectors, labels)
        stats = calibrate(stats, describe(vectors, labels)["nn_accuracy"])
        real = realism((vectors, labels), stats, work)
        sizes = [int(v) for v in args.crossover.split(",") if v]
        between = crossover(stats, sizes, work) if sizes else {}
        if not args.n:
            return {"realism": real, "crossover": between}
        gallery = Gallery(stats, args.n, seed=args.seed)
        root = work / "million"
        built = {}
        if not (args.reuse and IndexStore.is_index(root)):
            shutil.rmtree(root, ignore_errors=True)
            built = build_million(root, gallery, model, onnx, args.index_type)
        if not (root / "openset.npz").exists():  # as build-index ends: the open-set state
            wall, rss, _, _ = _peak_rss_mb([*RETRIEVE, "calibrate", "--index", str(root)])
            built |= {"calibrate_s": wall, "calibrate_peak_rss_mb": rss}
            if "build_s" in built:
                built |= {
                    "faiss_and_records_s": built["build_s"],
                    "build_s": built["build_s"] + wall,
                }
        disk = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
        searched = search_figures(root, gallery, args.queries, work)
        cli = cli_figures(root, small, args.data, work)
        result = {
            "n": args.n,
            "dim": gallery.dim,
            "classes": gallery.classes,
            **built,
            "enroll5_s": cli["enroll5_s"],
            "remove100_s": cli["remove100_s"],
            "query_cold_s": cli["query_cold_s"],
            "query_warm_p50_ms": cli["query_warm_p50_ms"],
            "search_warm_p50_ms": searched["search_p50_ms"],
            "rss_mb": max(cli["query_cold_peak_rss_mb"], cli["query_warm_peak_rss_mb"]),
            "disk_bytes_per_vector": disk / args.n,
            "recall_at_10": searched["recall_at_10"],
            "vote_agreement": searched["vote_agreement"],
            "index_type": searched["layout"]["type"],
            "layout": searched["layout"],
            "cli": cli,
            "search": searched,
            "realism": real,
            "crossover": between,
        }
        return result
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _show(result: dict, indent: str = "  ") -> None:
    for key, value in result.items():
        if isinstance(value, dict) and key not in ("layout",):
            print(f"{indent}{key}:")
            _show(value, indent + "  ")
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
        print(f"{indent}{key:<28} {shown}")


def run_facts(script: str, load_before: float) -> dict[str, object]:
    """What a benchmark's table says it ran on: the machine (CPU, cores, the 1-minute load
    average before and now) and the exact command, as run from the repository root."""
    root = Path(__file__).resolve().parents[1]
    command = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(script, root), *sys.argv[1:]]
    )
    return {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "command": command,
    }


def print_facts(report: dict) -> None:
    """The first lines of a benchmark's table: the machine and the command (see run_facts)."""
    machine = report["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores; command: {report['command']}")
    before, after = machine["load_average_1min"]
    print(f"load average (1 min) before {before:.2f}, after {after:.2f} (other work included)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n", type=int, default=1_000_000, help="realistic gallery size (0: only the comparisons)"
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cub50-dev")
    ap.add_argument(
        "--gallery-index",
        default=None,
        help="an index already built from --data (default: build one)",
    )
    ap.add_argument("--work", default=None, help="keep the indexes here (default: a temp folder)")
    ap.add_argument("--reuse", action="store_true", help="with --work: measure the million there")
    ap.add_argument(
        "--crossover",
        default="25000,50000,100000",
        help="sizes at which flat and compact are compared (auto's threshold; '' to skip)",
    )
    ap.add_argument("--synthetic-n", type=int, default=1_000_000, help="0: skip the old set")
    ap.add_argument("--dim", type=int, default=512, help="of the synthetic set")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index-type", choices=INDEX_TYPES, default="auto")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    result: dict = {}
    if args.n or args.crossover:
        result["million"] = measure_million(args)
    if args.synthetic_n:
        result["ann"] = measure_ann(
            args.synthetic_n,
            args.dim,
            seed=args.seed,
            queries=args.queries,
            index_type=args.index_type,
        )
    result = {**run_facts(__file__, load_before), **result}
    if args.json:
        print(json.dumps(result))
        return
    print_facts(result)
    for key in ("million", "ann"):
        if key in result:
            print(f"{key}:")
            _show(result[key])


if __name__ == "__main__":
    main()
