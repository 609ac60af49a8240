"""Load on `retrieve serve`: concurrent clients posting photos to POST /query on loopback.

Starts the real server (`python -m retrieval serve`, a process of its own) over an index of real
photos, then runs --clients threads, each posting photos of the gallery one after another (a
photo that is in the index is left out of its own neighbours, as for any query) for --seconds.
Reported: requests/s, latency p50/p95/p99 as the clients see it (upload, decode, embed, search,
vote, answer), and errors (any status but 200, or a failed connection), with the machine and the
exact command. The clients share the machine's cores with the server.

    python scripts/bench_serve.py                     # index ../shared/data/cub50-dev once
    python scripts/bench_serve.py --seconds 10 --json
    python scripts/bench_serve.py --index runs/my-index --gallery photos/
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from index import IndexStore

sys.path.insert(0, str(Path(__file__).parent))
from bench_ann import print_facts, run_facts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GALLERY = ROOT.parent / "shared" / "data" / "cub50-dev"
DEFAULT_INDEX = ROOT / "runs" / "bench-serve-index"
RETRIEVE = [sys.executable, "-m", "retrieval"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_index(index: Path, gallery: Path) -> None:
    """Build ``index`` from ``gallery`` with the default model unless it is an index already."""
    if IndexStore.is_index(index):
        return
    if not gallery.is_dir():
        sys.exit(f"bench_serve: {gallery} is absent; give --gallery or an existing --index")
    print(f"building {index} from {gallery} ...", file=sys.stderr)
    subprocess.run([*RETRIEVE, "build-index", str(gallery), "--index", str(index)], check=True)


def wait_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"bench_serve: the server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"bench_serve: the server did not answer {url}/health in {timeout:g} s")


def load(
    url: str, photos: list[tuple[str, bytes]], clients: int, seconds: float, seed: int
) -> dict[str, object]:
    """Run ``clients`` threads posting ``photos`` to /query for ``seconds``; the figures."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        order = random.Random(seed + i).sample(photos, len(photos))
        with httpx.Client(timeout=60) as http:
            start_line.wait()
            j = 0
            while time.perf_counter() < stop_at[0]:
                name, data = order[j % len(order)]
                j += 1
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}/query", files={"file": (name, data, "image/jpeg")})
                    ok = r.status_code == 200 and r.json()["query"] == name
                    if not ok:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    begin = time.perf_counter()
    stop_at[0] = begin + seconds
    start_line.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    ms = np.array([x for per in latencies for x in per]) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if ms.size else (float("nan"),) * 3
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": int(ms.size),
        "requests_per_s": round(ms.size / elapsed, 2),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="built first if absent")
    ap.add_argument("--gallery", type=Path, default=DEFAULT_GALLERY)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--photos", type=int, default=200, help="distinct photos the clients post")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args()

    ensure_index(args.index, args.gallery)
    with IndexStore.open(args.index) as store:
        count, model = len(store), store.model.get("name", "?")
        paths = sorted({item.path for item in store.items()})
    if not paths:
        sys.exit(f"bench_serve: {args.index} is empty")
    chosen = random.Random(args.seed).sample(paths, min(args.photos, len(paths)))
    photos = [(Path(p).name, Path(p).read_bytes()) for p in chosen]

    load_before = os.getloadavg()[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        cmd = [*RETRIEVE, "serve", "--index", str(args.index), "--port", str(port)]
        with log.open("wb") as out:
            server = subprocess.Popen(cmd, stdout=out, stderr=out)
        try:
            wait_up(url, server, log)
            load(url, photos[: args.clients], args.clients, 2, args.seed)  # warm-up
            result = load(url, photos, args.clients, args.seconds, args.seed)
        finally:
            server.terminate()
            server.wait(timeout=30)

    report = {
        **run_facts(__file__, load_before),
        "index": {"path": str(args.index), "items": count, "model": model},
        "photos": len(photos),
        **result,
    }
    if args.json:
        print(json.dumps(report))
        return
    print_facts(report)
    print(f"index: {count} items, model {model}; {len(photos)} distinct photos posted")
    print("| clients | seconds | requests | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {result['clients']} | {result['seconds']} | {result['requests']} | "
        f"{result['requests_per_s']} | {result['p50_ms']} | {result['p95_ms']} | "
        f"{result['p99_ms']} | {result['errors']} |"
    )
    for line in result["first_errors"]:
        print(f"error: {line}")


if __name__ == "__main__":
    main()
