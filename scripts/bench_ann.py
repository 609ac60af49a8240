"""Approximate search at scale: an IndexStore of n seeded, clustered 512-d unit vectors.

The gallery is built through IndexStore (records in SQLite, then the FAISS index that the index
type, "auto" unless --index-type says otherwise, picks for n), then searched with queries drawn from the same clusters but not in the gallery.
Reported: build time, bytes per vector of the FAISS file (the SQLite records, which hold every
vector as float32, separately), queries/s and recall@10 against exact (flat) search of the same
vectors in the same run, and the peak RSS of a process that opens the index and searches it.

    python scripts/bench_ann.py                  # n = 1,000,000
    python scripts/bench_ann.py --n 200000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from index import INDEX_TYPES, RECORDS, VECTORS, IndexStore, backend
from index.plan import FLAT

ROOT = Path(__file__).resolve().parents[1]
CENTRES = 2000
NOISE = 1.5
"""Norm of the gaussian noise added to a unit centre: a vector's cosine to its centre is about
0.55, to another of its cluster about 0.3, to other clusters about 0 (± 0.05)."""
CHUNK = 10_000
K = 10
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


def _timed_search(index: object, queries: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    _, ids = backend.search(index, queries, K)
    return ids, len(queries) / (time.perf_counter() - start)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([np.intersect1d(f, e).size / K for f, e in zip(found, exact, strict=True)])
    )


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


def _open_and_search_rss_mb(root: Path, queries: np.ndarray) -> float:
    """Peak RSS (MB) of a fresh process that opens the store at ``root`` and searches it: its
    VmHWM, since ru_maxrss carries the parent's peak across exec on Linux."""
    path = root.parent / "queries.npy"
    np.save(path, queries)
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_SEARCH, str(root), str(path), str(K)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout) / 1024


def measure_ann(
    n: int = 1_000_000,
    dim: int = 512,
    *,
    seed: int = 0,
    queries: int = 1000,
    index_type: str = "auto",
) -> dict:
    """Build and search an IndexStore of ``n`` clustered ``dim``-d unit vectors, created with
    ``index_type``; the figures described in this module's docstring."""
    data = clustered_unit_vectors(n + queries, dim, seed=seed)
    gallery, probes = data[:n], data[n:]
    with tempfile.TemporaryDirectory(prefix="bench_ann_") as tmp:
        root = Path(tmp) / "index"
        ids, records_s, build_s = _build(root, gallery, index_type)
        ann = backend.read_index(root / VECTORS)
        layout = backend.layout(ann)
        faiss_bytes = (root / VECTORS).stat().st_size
        records_bytes = sum(p.stat().st_size for p in root.glob(f"{RECORDS}*"))
        peak_rss_mb = _open_and_search_rss_mb(root, probes)
    exact = backend.build_index(FLAT, ids, gallery)
    truth, exact_qps = _timed_search(exact, probes)
    del exact
    found, qps = _timed_search(ann, probes)
    sweep = {}
    if layout.type == "ivf":
        for nprobe in NPROBE_SWEEP:
            ann.nprobe = nprobe
            got, sweep_qps = _timed_search(ann, probes)
            sweep[nprobe] = {"qps": round(sweep_qps), "recall_at_10": _recall(got, truth)}
    return {
        "n": n,
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
        "nprobe_sweep": sweep,
        "bench_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    ap.add_argument("--n", type=int, default=1_000_000, help="gallery size")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index-type", choices=INDEX_TYPES, default="auto")
    ap.add_argument("--json", action="store_true", help="print {'ann': ...} instead of a table")
    args = ap.parse_args()
    result = measure_ann(
        args.n, args.dim, seed=args.seed, queries=args.queries, index_type=args.index_type
    )
    if args.json:
        print(json.dumps({"ann": result}))
        return
    cmd = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]]
    )
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; command: {cmd}")
    print(
        f"data: {args.n} + {args.queries} queries, {args.dim}-d, {CENTRES} clusters, "
        f"noise {NOISE}, seed {args.seed}"
    )
    for key, value in result.items():
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
        print(f"  {key:<26} {shown}")
    if result["type"] != "flat":
        speedup = result["qps"] / result["exact_qps"]
        print(f"  {'speed-up over exact':<26} {speedup:.1f}x")


if __name__ == "__main__":
    main()
