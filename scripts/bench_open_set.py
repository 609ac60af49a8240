"""The open world on species the model never saw: decision rules x models.

The open-set protocol of ../shared/data/README.md: of the 25 measured species of cub50-dev (the
last 25 by name), the first 12 are in a gallery with the first 60 % of their files; the rest of
their files are "known" queries (right answer: their species), the first 12 files of each of the
other 13 species "absent" ones (right answer: unknown). Every rule calibrates itself from the
gallery alone, as an index does (known_accept 0.95: a threshold keeping 95 % of the gallery's
leave-one-out probes; the confidence a logistic fit on its leave-out probes, absent share 0.2).

The default rule (relative Mahalanobis) is measured as a user gets it: `retrieval.build` of the
gallery into a real index, then `Retriever.answer` of each query, one at a time (averaged with
its mirror image, as `retrieve query` asks by default; `--no-mirror`: as it is); the other rules
(top cosine, best prototype cosine) score the photos as they are, with the same calibration
procedure, and take the default query's closed-set labels.

    python scripts/bench_open_set.py                                 # frozen default only
    python scripts/bench_open_set.py --trained runs/bench_quality/ours   # + a trained model
    python scripts/bench_open_set.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import retrieval
from retrieval.datasets.folders import scan_gallery
from retrieval.engine import openset
from retrieval.training.metrics import (
    auroc,
    expected_calibration_error,
    open_set_split,
    share_weights,
)
from retrieval.training.metrics import open_set_run as openset_run

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import DEFAULT_DATA  # noqa: E402
from bench_speed import machine  # noqa: E402

RULES = ("top cosine", "prototype cosine", "relative Mahalanobis (default)")


def _calibrated(known_scores, absent_scores, right, known_accept=0.95, absent_share=0.2):
    """(threshold, confidence function) from leave-out probe scores, as engine/openset does."""
    threshold = float(np.quantile(known_scores, 1 - known_accept))
    ak, aa = known_scores >= threshold, absent_scores >= threshold
    x = np.r_[known_scores[ak], absent_scores[aa]]
    y = np.r_[right[ak].astype(float), np.zeros(aa.sum())]
    w = np.r_[
        np.full(ak.sum(), (1 - absent_share) / len(known_scores)),
        np.full(aa.sum(), absent_share / len(absent_scores)),
    ]
    a, b = openset.fit_logistic(x, y, w / w.mean())
    return threshold, lambda s: 1 / (1 + np.exp(-np.clip(a + b * s, -30, 30)))


def _cosine_rules(g, gy, q):
    """Scores of queries ``q`` and leave-out probes of gallery ``g`` for the two cosine rules."""
    labels = sorted(set(gy))
    sims = g @ g.T
    np.fill_diagonal(sims, -np.inf)
    out = {}
    # top cosine
    probe_known = sims.max(1)
    probe_absent = np.array([sims[i, gy != gy[i]].max() for i in range(len(g))])
    out["top cosine"] = (probe_known, probe_absent, (q @ g.T).max(1))
    # best prototype cosine (unit means)
    sums = {lab: g[gy == lab].sum(0) for lab in labels}
    n = {lab: int((gy == lab).sum()) for lab in labels}

    def unit(v):
        return v / max(np.linalg.norm(v), 1e-12)

    protos = np.stack([unit(sums[lab]) for lab in labels])
    known_p, absent_p = [], []
    for i in range(len(g)):
        own = gy[i]
        cands = [
            unit(sums[lab] - g[i]) if lab == own else protos[j]
            for j, lab in enumerate(labels)
            if lab != own or n[lab] > 1
        ]
        known_p.append(max(float(c @ g[i]) for c in cands))
        absent_p.append(max(float(protos[j] @ g[i]) for j, lab in enumerate(labels) if lab != own))
    out["prototype cosine"] = (np.array(known_p), np.array(absent_p), (q @ protos.T).max(1))
    return out


def measure(model: str, data: Path, work: Path, mirror: bool) -> dict[str, dict[str, float]]:
    records = scan_gallery(data).records
    species = sorted({r.label for r in records})[25:]
    records = [r for r in records if r.label in species]
    labels = [r.label for r in records]
    paths = [str(r.path) for r in records]
    gallery, known, absent = open_set_split(labels, paths, seed=None)
    folder = work / "gallery"
    for i in gallery:
        link = folder / labels[i] / Path(paths[i]).name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(paths[i]).resolve())
    t0 = time.perf_counter()
    retrieval.build(folder, work / "index", model=model)
    build_s = time.perf_counter() - t0
    queries = np.r_[known, absent]
    is_known = np.r_[np.ones(len(known), bool), np.zeros(len(absent), bool)]
    with retrieval.Retriever(work / "index") as r:
        # one at a time, as a user asks; then the same with no unknown answer (closed set)
        answers = [r.answer(paths[i], mirror=mirror) for i in queries]
        closed = [r.answer(paths[i], min_score=0, mirror=mirror) for i in queries]
        seconds = [a.seconds for a in answers]
        opened = r._current()
        scorer = r._openset(opened).scorer
        items, gv = opened.stores[0].labelled_vectors()
        vectors = np.stack(
            [r._embedder(opened).embed_paths([paths[i]]).vectors[0] for i in queries]
        )
        t1 = time.perf_counter()
        for v in vectors:
            scorer.score(v[None])
        score_ms = (time.perf_counter() - t1) / len(vectors) * 1000
    truth = np.array([labels[i] for i in queries], dtype=object)
    voted = np.array([a.label for a in answers], dtype=object)
    answered = voted != None  # noqa: E711
    right = is_known & (voted == truth)
    conf = np.array([a.confidence for a in answers])
    decision = np.array([a.decision for a in answers])
    assumed = share_weights(is_known, openset.ABSENT_SHARE)
    rows = {
        RULES[2]: {
            "auroc": auroc(decision[is_known], decision[~is_known]),
            "known_right": float(right[is_known].mean()),
            "absent_rejected": float((~answered[~is_known]).mean()),
            "ece": expected_calibration_error(conf[answered], right[answered]),
            "ece_at_absent_share": expected_calibration_error(
                conf[answered], right[answered], weights=assumed[answered]
            ),
        }
    }
    gy = np.array([i.label for i in items], dtype=object)
    vote_right = is_known & (np.array([a.label for a in closed], dtype=object) == truth)
    for rule, (pk, pa, qs) in _cosine_rules(gv, gy, vectors).items():
        # a probe is right when its nearest other gallery item is of its label (the vote's
        # leave-one-out stand-in for these simple rules)
        sims = gv @ gv.T
        np.fill_diagonal(sims, -np.inf)
        probe_right = gy[sims.argmax(1)] == gy
        threshold, confidence = _calibrated(pk, pa, probe_right)
        ans = qs >= threshold
        rr = vote_right & ans
        rows[rule] = {
            "auroc": auroc(qs[is_known], qs[~is_known]),
            "known_right": float(rr[is_known].mean()),
            "absent_rejected": float((~ans[~is_known]).mean()),
            "ece": expected_calibration_error(confidence(qs[ans]), rr[ans]),
            "ece_at_absent_share": expected_calibration_error(
                confidence(qs[ans]), rr[ans], weights=assumed[ans]
            ),
        }
    for row in rows.values():
        row["closed_set_right"] = float(vote_right[is_known].mean())
    rows[RULES[2]]["query_p50_ms"] = float(np.percentile(np.array(seconds) * 1000, 50))
    rows[RULES[2]]["score_ms"] = score_ms
    rows[RULES[2]]["build_s"] = build_s
    return {rule: rows[rule] for rule in RULES}


def _embed(model: str, folder: Path) -> tuple[np.ndarray, list[str], list[str]]:
    from retrieval.nets.export import fast_embedder
    from retrieval.nets.model import load_model

    records = scan_gallery(folder).records
    embedder, _ = fast_embedder(load_model(model), records)
    result = embedder.embed_paths([r.path for r in records])
    return (
        result.vectors,
        [records[i].label for i in result.ok],
        [str(records[i].path) for i in result.ok],
    )


def _random_split(labels, species, rng, in_gallery, per_class):
    """``in_gallery`` random species with ``per_class`` random photos in the gallery, the rest
    of their photos known queries, 12 random photos of each other species absent ones."""
    order = list(rng.permutation(species))
    gallery, known, absent = [], [], []
    for n, sp in enumerate(order):
        rows = list(rng.permutation([i for i, lab in enumerate(labels) if lab == sp]))
        if n < in_gallery:
            gallery += rows[:per_class]
            known += rows[per_class:]
        else:
            absent += rows[:12]
    return np.array(gallery), np.array(known), np.array(absent)


def settings(model: str, data: Path, flowers: Path) -> dict[str, dict[str, float]]:
    """The default rule (training/metrics.open_set_run, what ``retrieve evaluate`` runs) on
    other galleries than the protocol's: random species and sizes of the 25 unseen species, the
    first 25 species (seen by a trained model), and flowers12 (train/ in the gallery)."""
    x, labels, paths = _embed(model, data)
    species = sorted(set(labels))
    out: dict[str, dict[str, float]] = {}

    def add(name, runs):
        rows = [r.metrics() for r in runs]
        out[name] = {
            k: float(np.mean([r[k] for r in rows]))
            for k in rows[0]
            if k != "threshold" and rows[0][k] is not None
        }

    for g, n in ((5, 5), (12, 5), (18, 30)):
        runs = [
            openset_run(
                x, labels, *_random_split(labels, species[25:], np.random.default_rng(seed), g, n)
            )
            for seed in range(3)
        ]
        add(f"25 unseen species, {g} x {n} (3 seeds)", runs)
    first = [i for i, lab in enumerate(labels) if lab in species[:25]]
    sub = open_set_split([labels[i] for i in first], [paths[i] for i in first], seed=None)
    add("first 25 species, 12 x 60 %", [openset_run(x[first], [labels[i] for i in first], *sub)])
    if flowers.is_dir():
        fx, fl, fp = _embed(model, flowers / "train")
        tx, tl, tp = _embed(model, flowers / "test")
        x2, l2 = np.r_[fx, tx], fl + tl
        sp = sorted(set(fl))
        runs = []
        for seed in range(3):
            inside = set(list(np.random.default_rng(seed).permutation(sp))[:6])
            gallery = np.array([i for i, lab in enumerate(fl) if lab in inside])
            known = np.array([len(fl) + i for i, lab in enumerate(tl) if lab in inside])
            absent = np.array([len(fl) + i for i, lab in enumerate(tl) if lab not in inside])
            runs.append(openset_run(x2, l2, gallery, known, absent))
        add("flowers12, 6 x 60 (3 seeds; half the queries absent)", runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--trained", default=None, help="a model folder from 'retrieve train'")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--settings",
        action="store_true",
        help="also the default rule on other galleries (sizes, species, flowers12)",
    )
    ap.add_argument(
        "--no-mirror",
        action="store_true",
        help="ask each photo as it is (retrieve query --no-mirror), not averaged with its mirror",
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(
            f"bench_open_set: data folder {args.data} is absent (see ../shared/data/README.md)"
        )
    models = {"frozen": "efficientnet_lite0"}
    if args.trained:
        models["trained"] = args.trained
    results = {}
    for name, model in models.items():
        with tempfile.TemporaryDirectory() as work:
            results[name] = measure(model, args.data, Path(work), not args.no_mirror)
        if args.settings:
            results[name]["settings"] = settings(model, args.data, args.data.parent / "flowers12")
    if args.json:
        print(json.dumps({"machine": machine(), "results": results}))
        return
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]])
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores; command: {cmd}")
    share = f"ECE at {openset.ABSENT_SHARE:.0%} absent"
    print(f"| model | rule | AUROC | known right (closed set) | absent unknown | ECE | {share} |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for rule, r in rows.items():
            if rule == "settings":
                continue
            print(
                f"| {name} | {rule} | {r['auroc']:.3f} | {r['known_right']:.3f} "
                f"({r['closed_set_right']:.3f}) | {r['absent_rejected']:.3f} | {r['ece']:.3f} "
                f"| {r['ece_at_absent_share']:.3f} |"
            )
    if args.settings:
        print(
            "\n| model | gallery | AUROC | known right (closed set) | absent unknown | ECE "
            f"| {share} |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, rows in results.items():
            for gallery, r in rows["settings"].items():
                print(
                    f"| {name} | {gallery} | {r['auroc']:.3f} | {r['known_right']:.3f} "
                    f"({r['closed_set_right']:.3f}) | {r['absent_rejected']:.3f} | {r['ece']:.3f} "
                    f"| {r['ece_at_absent_share']:.3f} |"
                )
    for name, rows in results.items():
        d = rows[RULES[2]]
        print(
            f"{name}: query p50 {d['query_p50_ms']:.1f} ms (the decision score {d['score_ms']:.2f} "
            f"ms of it); build of the gallery {d['build_s']:.1f} s"
        )


if __name__ == "__main__":
    main()
