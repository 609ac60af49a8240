"""Fuzzing with a long budget: the properties of tests/fuzz/test_fuzz_images.py (the image loader
fed real and mutated JPEG, PNG, TIFF, WebP, BMP and GIF files; the label rule against the
schema's pattern) run again and again with fresh examples for half of the minutes, then
Schemathesis (all checks and phases) against a real `retrieve serve` on loopback for the other
half. The CI runs the same tests with a budget of seconds (pytest tests/fuzz).

    python scripts/fuzz.py --minutes 10
    python scripts/fuzz.py --minutes 2 --json

Prints the machine, the exact command and a table of what ran; exits 1 on any failure (the
falsifying example is printed; Schemathesis's report and the server's log are kept in --out).
Nothing leaves the machine: the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("RETRIEVE_FUZZ_PROFILE", "long")

from bench_ann import print_facts, run_facts  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.fuzz import conftest as _profiles  # noqa: E402, F401 - registers the profiles
from tests.fuzz import test_fuzz_images as properties  # noqa: E402
from tests.fuzz.api import run_schemathesis  # noqa: E402
from tests.server.helpers import build_tiny_index  # noqa: E402

PROPERTIES = {  # each, and the key of properties.EXAMPLES that counts its examples
    properties.test_every_valid_image_decodes: "valid",
    properties.test_a_mutated_image_decodes_or_is_refused_in_one_line_in_bounded_memory: "mutated",
    properties.test_any_box_crops_or_is_refused_in_one_line: "box",
    properties.test_the_label_rule_is_the_schema_pattern: "label",
}


def fuzz_images(seconds: float) -> tuple[list[dict[str, object]], list[str]]:
    """Each property in turn, ``seconds`` shared between them, 500 examples a round."""
    import warnings

    rows, failures = [], []
    share = seconds / len(PROPERTIES)
    settings.load_profile("long")
    for prop, key in PROPERTIES.items():
        before = properties.EXAMPLES[key]
        start = time.monotonic()
        rounds = 0
        while time.monotonic() - start < share:
            rounds += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # as the test module's pytestmark
                    prop()
            except Exception:  # noqa: BLE001 - reported, then the next property
                failures.append(f"{prop.__name__}:\n{traceback.format_exc()}")
                break
        rows.append(
            {
                "property": prop.__name__,
                "rounds": rounds,
                "examples": properties.EXAMPLES[key] - before,
                "seconds": round(time.monotonic() - start, 1),
            }
        )
    return rows, failures


def fuzz_api(seconds: float, out: Path) -> tuple[dict[str, object], list[str]]:
    index = build_tiny_index(out / "served")
    start = time.monotonic()
    done = run_schemathesis(index, out / "schemathesis", max_examples=100, max_time=seconds)
    summary = done.stdout[done.stdout.rfind("SUMMARY") :]
    cases = next((line.strip() for line in summary.splitlines() if "generated" in line), "?")
    row = {"cases": cases, "seconds": round(time.monotonic() - start, 1), "exit": done.returncode}
    return row, ([] if done.returncode == 0 else [done.stdout[-8000:]])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10, help="the whole budget")
    ap.add_argument("--out", type=Path, default=None, help="keep the reports here")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args()

    seconds = args.minutes * 60
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        image_rows, failures = fuzz_images(seconds / 2)
        api_row, api_failures = fuzz_api(seconds / 2, out)
    failures += api_failures
    report = {
        **run_facts(__file__, load_before),
        "images": image_rows,
        "mutated_outcomes": {
            k: v for k, v in properties.EXAMPLES.items() if k.startswith("mutated: ")
        },
        "api": api_row,
        "failures": len(failures),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_facts(report)
        print("| property | rounds | examples | seconds |")
        print("|---|---|---|---|")
        for row in image_rows:
            print(f"| {row['property']} | {row['rounds']} | {row['examples']} | {row['seconds']} |")
        outcomes = ", ".join(f"{k[9:]} {v}" for k, v in report["mutated_outcomes"].items())
        print(f"mutated files: {outcomes}")
        print(
            f"| Schemathesis, all checks and phases | {api_row['cases']} | "
            f"{api_row['seconds']} s | exit {api_row['exit']} |"
        )
        print(f"failures: {len(failures)}")
    for failure in failures:
        print(failure, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
