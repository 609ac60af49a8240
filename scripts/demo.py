"""The built-in demo: a gallery, queries of held-out images, a new class enrolled from 5 examples.

    python scripts/demo.py                          # a synthetic fine-grained gallery, drawn here
    python scripts/demo.py ../shared/data/cub50-dev # a real folder-per-label gallery (read-only is fine)

It runs the real ``retrieve`` commands and prints each one before its output. With a real folder
it never copies images: the demo gallery is made of symbolic links to them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = 2
ENROLL_SHOTS = 5
SHOW = 6


def retrieve(*args: object, capture: bool = False) -> str:
    exe = Path(sys.executable).parent / "retrieve"
    cmd = [str(exe if exe.exists() else "retrieve"), *map(str, args)]
    sub, rest = cmd[1], cmd[2:]
    first_option = next((i for i, a in enumerate(rest) if a.startswith("-")), len(rest))
    operands, options = rest[:first_option], rest[first_option:]
    if len(operands) > 4:
        operands = [*operands[:2], f"<{len(operands) - 2} more files>"]
    print(f"\n$ retrieve {sub} {' '.join([*operands, *options])}", flush=True)
    done = subprocess.run(cmd, text=True, stdout=subprocess.PIPE if capture else None)
    if done.returncode != 0:
        sys.exit(f"demo: the command failed (exit {done.returncode})")
    return done.stdout or ""


def synthetic_source(work: Path) -> dict[str, list[Path]]:
    from retrieval.datasets.synthetic import make_gallery

    return make_gallery(work / "source", n_classes=8, per_class=14, seed=0, size=160)


def folder_source(folder: Path) -> dict[str, list[Path]]:
    from retrieval.datasets.folders import scan_gallery

    by_label: dict[str, list[Path]] = {}
    for r in scan_gallery(folder).records:
        by_label.setdefault(r.label, []).append(r.path.resolve())
    return by_label


def pick_new_label(labels: list[str]) -> str:
    """The synthetic class to enrol: one whose wing colour (first word) no gallery class shares."""
    colours = [lab.split("_")[0] for lab in labels]
    unique = [lab for lab, c in zip(labels, colours, strict=True) if colours.count(c) == 1]
    return unique[0] if unique else labels[-1]


def link_or_keep(src: Path, dst: Path, synthetic: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if synthetic:
        shutil.copyfile(src, dst)
    else:
        os.symlink(src, dst)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "gallery", nargs="?", type=Path, help="folder-per-label gallery (default: synthetic)"
    )
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "demo")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    synthetic = args.gallery is None
    source = synthetic_source(args.work) if synthetic else folder_source(args.gallery)
    rng = random.Random(0)
    labels = sorted(source)
    new_label = pick_new_label(labels) if synthetic else labels[-1]
    labels = [lab for lab in labels if lab != new_label] + [new_label]
    gallery, queries = args.work / "gallery", args.work / "queries"
    held: list[tuple[Path, str]] = []
    for label in labels[:-1]:
        files = sorted(source[label])
        rng.shuffle(files)
        for f in files[:HELD_OUT]:
            dst = queries / f"{label}__{f.name}"
            link_or_keep(f, dst, synthetic)
            held.append((dst, label))
        for f in files[HELD_OUT:]:
            link_or_keep(f, gallery / label / f.name, synthetic)
    new_files = sorted(source[new_label])
    rng.shuffle(new_files)
    enrol, new_queries = new_files[:ENROLL_SHOTS], new_files[ENROLL_SHOTS:]
    for f in enrol:
        link_or_keep(f, args.work / "new" / new_label / f.name, synthetic)
    index = args.work / "index"

    print(
        f"Demo gallery: {len(labels) - 1} labels in {gallery}; {len(held)} held-out queries; "
        f"{new_label!r} kept back to enrol later."
    )
    retrieve("build-index", gallery, "--index", index)

    def ask(paths: list[Path], truth: list[str]) -> tuple[int, int]:
        """(answered right, answered unknown)."""
        out = retrieve("query", *paths, "--index", index, "-k", "5", "--json", capture=True)
        answers = [json.loads(line) for line in out.splitlines()]
        for a, t in list(zip(answers, truth, strict=True))[:SHOW]:
            mark = "right" if a["label"] == t else f"it is {t}"
            said = a["label"] or "unknown"
            print(f"  {Path(a['query']).name}: {said} (confidence {a['confidence']:.2f}) - {mark}")
        right = sum(a["label"] == t for a, t in zip(answers, truth, strict=True))
        return right, sum(a["label"] is None for a in answers)

    right, _ = ask([p for p, _ in held], [t for _, t in held])
    if len(held) > SHOW:
        print(f"  ... ({len(held) - SHOW} more answers not shown)")
    print(f"\nheld-out queries answered correctly: {right}/{len(held)}")
    before, unknown = ask(new_queries, [new_label] * len(new_queries))
    print(
        f"{new_label!r} before enrolment: {before}/{len(new_queries)} recognised, "
        f"{unknown}/{len(new_queries)} answered unknown (it is not in the index)"
    )
    retrieve("enroll", new_label, args.work / "new" / new_label, "--index", index)
    after, _ = ask(new_queries, [new_label] * len(new_queries))
    print(
        f"{new_label!r} after enrolling {len(enrol)} examples: {after}/{len(new_queries)} recognised"
    )
    retrieve("info", "--index", index)


if __name__ == "__main__":
    main()
