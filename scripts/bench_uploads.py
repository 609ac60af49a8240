"""Concurrent uploads of big PNGs to `retrieve serve` (issue 15, defect 2): the server's memory
and whether it keeps answering everyone else.

Starts the real server (`python -m retrieval serve --max-upload-mb 2`, a process of its own, on
127.0.0.1) over a small index, then for each kind of big PNG posts --uploads of them to POST
/query at once while another client keeps asking GET /health and POST /query of a small photo.
The PNGs are of one colour, so that tens of megapixels fit in a few hundred kilobytes:

    issue      10,950 x 10,950 RGBA (120 MP, 0.5 MB): the file of the issue; refused now
    largest    7,069 x 7,069 RGBA (50 MP): the largest PNG still decoded (the full-size limit)

Reported per kind, with the machine and the exact command: the answers of the uploads, how long
the last one took, the server's RSS when idle, its peak over that while the uploads ran (VmHWM,
reset before each kind), what it still held a second after, and the other client's requests
(answered, errors, latency). The target: the peak under 1.5 GB over idle, every other request
answered.

    python scripts/bench_uploads.py                       # default model, 8 uploads of each
    python scripts/bench_uploads.py --uploads 3 --kinds issue --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_ann import print_facts, run_facts  # noqa: E402

from retrieval.indexing.build import build_index  # noqa: E402
from tests.conftest import flat_png  # noqa: E402
from tests.server.helpers import serve_process  # noqa: E402

KINDS = {"issue": 10_950, "largest": 7_069}
TARGET_BYTES = 1.5e9
MB = 1 << 20


def small_photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def ensure_index(index: Path, model: str) -> None:
    if (index / "manifest.json").is_file():
        return
    gallery = index.parent / f"{index.name}-gallery"
    for label in range(3):
        for j in range(4):
            path = gallery / f"label{label}" / f"{j}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(small_photo(label * 10 + j))
    print(f"building {index} ({model}) ...", file=sys.stderr)
    build_index(gallery, index, model=model)


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def others(url: str, stop: threading.Event, photo: bytes) -> dict[str, object]:
    """GET /health and POST /query of a small photo, one after another, until ``stop``."""
    latencies: list[float] = []
    errors: list[str] = []
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            for send in (
                lambda: client.get(f"{url}/health"),
                lambda: client.post(f"{url}/query", files={"file": ("small.jpg", photo)}),
            ):
                start = time.perf_counter()
                try:
                    r = send()
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - start)
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "max_ms": round(float(ms.max()), 1) if len(ms) else None,
    }


def run_kind(url: str, pid: int, png: bytes, uploads: int) -> dict[str, object]:
    idle = status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) from now on
    stop = threading.Event()
    side = ThreadPoolExecutor(1)
    other = side.submit(others, url, stop, small_photo(999))

    def upload(i: int) -> tuple[int, float, str]:
        start = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            r = client.post(f"{url}/query", files={"file": (f"big-{i}.png", png, "image/png")})
        return r.status_code, time.perf_counter() - start, r.text[:160]

    time.sleep(1)  # the other client runs alone for a moment first
    with ThreadPoolExecutor(uploads) as pool:
        answers = list(pool.map(upload, range(uploads)))
    peak = status(pid, "VmHWM")
    time.sleep(1)
    after = status(pid, "VmRSS")
    stop.set()
    side.shutdown()
    statuses: dict[int, int] = {}
    for code, _, _ in answers:
        statuses[code] = statuses.get(code, 0) + 1
    return {
        "png_bytes": len(png),
        "uploads": uploads,
        "statuses": statuses,
        "example_answer": answers[0][2],
        "slowest_s": round(max(s for _, s, _ in answers), 1),
        "idle_rss_mb": round(idle / MB),
        "peak_over_idle_mb": round((peak - idle) / MB),
        "after_over_idle_mb": round((after - idle) / MB),
        "others": other.result(),
        "target_met": peak - idle < TARGET_BYTES and other.result()["errors"] == 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--index", type=Path, default=ROOT / "runs" / "bench-uploads-index")
    ap.add_argument("--model", default="efficientnet_lite0", help="when the index is built")
    ap.add_argument("--uploads", type=int, default=8, help="big PNGs posted at once")
    ap.add_argument(
        "--kinds", default="issue,largest", help=f"of {', '.join(KINDS)}, in turn (repeatable)"
    )
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args()

    ensure_index(args.index, args.model)
    load_before = os.getloadavg()[0]
    results: list[tuple[str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server, url = serve_process(args.index, "--max-upload-mb", "2", log=Path(tmp) / "log")
        try:
            with httpx.Client(timeout=120) as client:  # warm-up: the first queries
                for seed in range(4):
                    client.post(f"{url}/query", files={"file": ("w.jpg", small_photo(seed))})
            for kind in args.kinds.split(","):
                png = flat_png(KINDS[kind], KINDS[kind], level=9)
                results.append((kind, run_kind(url, server.pid, png, args.uploads)))
        finally:
            server.terminate()
            server.wait(timeout=60)
    report = {
        **run_facts(__file__, load_before),
        "index": str(args.index),
        "runs": [{"kind": kind, **r} for kind, r in results],
    }
    if args.json:
        print(json.dumps(report))
        return
    print_facts(report)
    print(
        "| PNG | uploads at once | answers | slowest s | server idle RSS MB | peak over idle MB "
        "| held after MB | other requests | their errors | their p50 / p95 / max ms | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, r in results:
        o = r["others"]
        side = KINDS[kind]
        answers = ", ".join(f"{n} x {code}" for code, n in sorted(r["statuses"].items()))
        print(
            f"| {kind}: {side:,}x{side:,} RGBA, {r['png_bytes'] / 1e6:.2f} MB | {r['uploads']} | "
            f"{answers} | {r['slowest_s']} | {r['idle_rss_mb']} | {r['peak_over_idle_mb']} | "
            f"{r['after_over_idle_mb']} | {o['requests']} | {o['errors']} | "
            f"{o['p50_ms']} / {o['p95_ms']} / {o['max_ms']} | "
            f"{'met' if r['target_met'] else 'NOT met'} |"
        )
    for kind, r in results:
        print(f"{kind}: an answer: {r['example_answer']}")
        for line in r["others"]["first_errors"]:
            print(f"{kind}: other request error: {line}")


if __name__ == "__main__":
    main()
