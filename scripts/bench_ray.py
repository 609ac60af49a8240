"""build-index on Ray against the single-machine build: images/s with 1 and 2 local Ray workers
(embedding actors) and without Ray, on the same gallery, with the default network.

Each build runs as its own `retrieve build-index` process into a fresh folder. "img/s" is the
command's own figure (images embedded over the time from hashing the gallery to the swap; for
Ray this includes starting the actors and loading the network into each, not starting Ray);
"wall s" is the whole command (Python, model load and export, Ray start and stop). The runs
alternate (local, 1, 2, local, 1, 2, ...) so that a busy neighbour slows each about alike.

Then the search side: the gallery built into one index and into --shards 2, and the time of one
query's search (k = 10, vectors of the gallery) through the unsharded index, the two shards in
this process, and the two shards' Ray actors (fan-out, merge) on Ray started here.

    python scripts/bench_ray.py                 # 10 species of cub50-dev, 2 rounds
    python scripts/bench_ray.py --species 50 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import DEFAULT_DATA  # noqa: E402
from bench_speed import machine, subset_gallery  # noqa: E402

from index import IndexStore  # noqa: E402
from retrieval.datasets import DatasetOptions  # noqa: E402

RETRIEVE = [sys.executable, "-m", "retrieval"]
RUNS = {"single machine": [], "ray, 1 worker": ["--ray", "--workers", "1"]}
RUNS["ray, 2 workers"] = ["--ray", "--workers", "2"]
_RATE = re.compile(r"indexed (\d+) images .* \(([\d.]+) images/s\)")


def build(gallery: Path, index: Path, extra: list[str]) -> dict[str, float]:
    """One build-index process: its images, images/s and wall time."""
    start = time.perf_counter()
    done = subprocess.run(
        [*RETRIEVE, "build-index", str(gallery), "--index", str(index), *extra],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench_ray: build-index {' '.join(extra)} failed: {done.stderr.strip()}")
    match = _RATE.search(done.stdout)
    assert match, done.stdout
    return {"images": int(match.group(1)), "img_s": float(match.group(2)), "wall_s": wall}


def percentiles(seconds: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3)}


def search_latency(index: Path, sharded: Path, queries: int) -> dict[str, dict[str, float]]:
    """Per-query search time of one index, its shards in this process, and its shards' Ray
    actors; the three take turns on each query, so that a busy neighbour slows each alike."""
    from retrieval.cluster.shard_actors import RayShards
    from retrieval.indexing.shards import LocalShards, shard_dirs

    with IndexStore.open(index) as store:
        ids, vectors = store.vectors()
        shas = {i.id: i.sha256 for i in store.items()}
    step = max(1, len(ids) // queries)
    probes = [(vectors[i : i + 1], shas[int(ids[i])]) for i in range(0, len(ids), step)][:queries]
    searchers = {
        "one index, in process": LocalShards([index]),
        "2 shards, in process": LocalShards(shard_dirs(sharded)),
        "2 shards, Ray actors": RayShards(shard_dirs(sharded), ""),
    }
    seconds: dict[str, list[float]] = {name: [] for name in searchers}
    try:
        for n, (v, sha) in enumerate(probes[:10] + probes):  # the first 10: warm-up
            for name, searcher in searchers.items():
                start = time.perf_counter()
                searcher.neighbors(v, sha, 10)
                if n >= 10:
                    seconds[name].append(time.perf_counter() - start)
    finally:
        for searcher in searchers.values():
            searcher.close()
    return {name: percentiles(s) for name, s in seconds.items()}


def table(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores (shared with other jobs while measured); "
        f"onnxruntime {m['onnxruntime']}, ray {res['ray']}",
        f"command: {res['command']}",
        f"gallery: {res['gallery']}, {res['images']} images; builds: median of {res['rounds']} "
        "rounds",
        "",
        f"  {'build-index':<16} {'img/s':>7} {'wall s':>7}",
    ]
    for name, v in res["runs"].items():
        lines.append(f"  {name:<16} {v['img_s']:>7.1f} {v['wall_s']:>7.1f}")
    lines += ["", f"  {'search, k = 10':<24} {'p50 ms':>7} {'p95 ms':>7}"]
    for name, v in res["search"].items():
        lines.append(f"  {name:<24} {v['p50_ms']:>7.2f} {v['p95_ms']:>7.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--species", type=int, default=10, help="first N species of --data")
    ap.add_argument("--rounds", type=int, default=2, help="0: the search part only")
    ap.add_argument("--queries", type=int, default=300, help="searches timed per searcher")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench_ray: data folder {args.data} is absent (see ../shared/data/README.md)")
    from importlib.metadata import version

    res: dict = {
        "machine": machine(),
        "ray": version("ray"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "rounds": args.rounds,
    }
    records = DatasetOptions().scan(args.data).records
    with tempfile.TemporaryDirectory(prefix="bench_ray-") as tmp:
        work = Path(tmp)
        gallery = subset_gallery(records, work / "gallery", args.species)
        res["gallery"] = f"{args.data.name}, first {args.species} species"
        seen: dict[str, list[dict[str, float]]] = {name: [] for name in RUNS}
        for r in range(args.rounds):
            for name, extra in RUNS.items():
                index = work / f"index-{r}-{name.replace(' ', '_')}"
                seen[name].append(build(gallery, index, extra))
                print(f"  {name}: {seen[name][-1]}", file=sys.stderr)
        one = build(gallery, work / "one", [])
        build(gallery, work / "sharded", ["--shards", "2"])
        res["search"] = search_latency(work / "one", work / "sharded", args.queries)
    res["images"] = one["images"]
    res["runs"] = {
        name: {k: round(statistics.median(x[k] for x in runs), 2) for k in ("img_s", "wall_s")}
        for name, runs in seen.items()
        if runs
    }
    print(json.dumps(res) if args.json else table(res))


if __name__ == "__main__":
    main()
