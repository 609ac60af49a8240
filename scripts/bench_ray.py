"""build-index on Ray against the single-machine build: images/s with 1 and 2 local Ray workers
(embedding actors) and without Ray, on the same gallery, with the default network.

Each build runs as its own `retrieve build-index` process into a fresh folder. "img/s" is the
command's own figure (images embedded over the time from hashing the gallery to the swap; for
Ray this includes starting the actors and loading the network into each, not starting Ray);
"wall s" is the whole command (Python, model load and export, Ray start and stop). The runs
alternate (local, 1, 2, local, 1, 2, ...) so that a busy neighbour slows each about alike.

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

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import DEFAULT_DATA  # noqa: E402
from bench_speed import machine, subset_gallery  # noqa: E402

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


def table(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores (shared with other jobs while measured); "
        f"onnxruntime {m['onnxruntime']}, ray {res['ray']}",
        f"command: {res['command']}",
        f"gallery: {res['gallery']}, {res['images']} images; median of {res['rounds']} rounds",
        "",
        f"  {'build-index':<16} {'img/s':>7} {'wall s':>7}",
    ]
    for name, v in res["runs"].items():
        lines.append(f"  {name:<16} {v['img_s']:>7.1f} {v['wall_s']:>7.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--species", type=int, default=10, help="first N species of --data")
    ap.add_argument("--rounds", type=int, default=2)
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
                index = work / f"index-{r}-{len(seen[name])}-{name.replace(' ', '_')}"
                seen[name].append(build(gallery, index, extra))
                print(f"  {name}: {seen[name][-1]}", file=sys.stderr)
    res["images"] = seen["single machine"][0]["images"]
    res["runs"] = {
        name: {k: round(statistics.median(x[k] for x in runs), 2) for k in ("img_s", "wall_s")}
        for name, runs in seen.items()
    }
    print(json.dumps(res) if args.json else table(res))


if __name__ == "__main__":
    main()
