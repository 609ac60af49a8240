"""k-NN classification of a test folder against a train folder, through the real CLI.

The flowers12 protocol of ../shared/data/README.md: the train folder is the gallery
(`retrieve build-index TRAIN`), each test image is asked (`retrieve query - --json`, paths on
stdin) and its answer is right when the voted label is its folder's name. Reported per model:
top-1 accuracy, how many answers were "unknown", and the wall time of the build and of the queries,
with the machine and the exact command. Any two folders with one sub-folder per label will do.

    python scripts/bench_knn.py                                   # flowers12, default network
    python scripts/bench_knn.py --models efficientnet_lite0,runs/cub50-model
    python scripts/bench_knn.py --train photos/train --test photos/test -k 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retrieval.datasets.folders import scan_gallery

ROOT = Path(__file__).resolve().parent.parent
FLOWERS = ROOT.parent / "shared" / "data" / "flowers12"
RETRIEVE = [sys.executable, "-m", "retrieval"]


def run(args: list[str], stdin: str | None = None) -> tuple[str, float]:
    """stdout and wall seconds of one retrieve process; exits with its stderr if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(
        [*RETRIEVE, *args], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"bench_knn: retrieve {shlex.join(args)} failed:\n{proc.stderr}")
    return proc.stdout, time.perf_counter() - start


def knn_accuracy(train: Path, test: Path, model: str, k: int, work: Path) -> dict[str, object]:
    """Build an index of ``train`` with ``model``, query every image of ``test``, score."""
    index = work / "index"
    _, build_s = run(
        ["build-index", str(train), "--index", str(index), "--model", model, "--force"]
    )
    truth = {str(r.path): r.label for r in scan_gallery(test).records}
    out, query_s = run(
        ["query", "-", "--index", str(index), "-k", str(k), "--json", "--min-score", "0"],
        "\n".join(truth),
    )
    answers = [json.loads(line) for line in out.splitlines()]
    if len(answers) != len(truth):
        sys.exit(f"bench_knn: {len(truth)} test images but {len(answers)} answers")
    right = sum(a["label"] == truth[a["query"]] for a in answers)
    return {
        "model": model,
        "accuracy": round(right / len(answers), 4),
        "right": right,
        "queries": len(answers),
        "unknown": sum(a["label"] is None for a in answers),
        "gallery": len(scan_gallery(train).records),
        "build_s": round(build_s, 1),
        "query_s": round(query_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train", type=Path, default=FLOWERS / "train")
    ap.add_argument("--test", type=Path, default=FLOWERS / "test")
    ap.add_argument(
        "--models", default="efficientnet_lite0", help="comma-separated built-ins or model folders"
    )
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args()
    for flag, folder in (("--train", args.train), ("--test", args.test)):
        if not folder.is_dir():
            sys.exit(f"bench_knn: {flag} {folder} is not a folder")

    rows = []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(knn_accuracy(args.train, args.test, model, args.k, Path(tmp)))
    cmd = shlex.join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if args.json:
        print(json.dumps({"machine": machine, "command": cmd, "k": args.k, "rows": rows}))
        return
    print(f"machine: {machine}; command: python {cmd}")
    print(f"train {args.train} ({rows[0]['gallery']} images), test {args.test}, k = {args.k}")
    print("| model | top-1 accuracy | right / queries | unknown | build-index s | query s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['accuracy']:.3f} | {r['right']} / {r['queries']} "
            f"| {r['unknown']} | {r['build_s']} | {r['query_s']} |"
        )


if __name__ == "__main__":
    main()
