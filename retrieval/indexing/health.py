"""`retrieve check`: whether an index folder (or every shard of a sharded one) is whole —
manifest, records, FAISS file and sidecar agreeing, its exported network intact — with what
interrupted builds left beside it; and its repair (the FAISS cache and leftovers only: the
records and manifest are the truth)."""

from __future__ import annotations

import shutil
from pathlib import Path

from index import CheckReport, IndexStore, IndexStoreError, check_index, repair_index
from retrieval.engine.runtime import ONNX_FILE, read_index_onnx, refuse_external_data
from retrieval.errors import ModelError
from retrieval.indexing import uploads
from retrieval.indexing.build import build_notes, stray_builds
from retrieval.indexing.network import read_entry
from retrieval.indexing.shards import is_sharded, shard_dirs


def check(index_dir: str | Path, *, repair: bool = False) -> CheckReport:
    """Verify that an index's manifest, records, FAISS file and sidecar agree, and note what
    interrupted builds left beside it. With ``repair``, rebuild the FAISS file and sidecar from
    the records, remove the temp files of interrupted writes and the stray folders of
    interrupted builds (under the writer lock), then check again. Damaged records or manifest
    are reported, never repaired: they are the truth the rest is derived from; a resumable
    build's staging folder is kept. A sharded index is checked (and repaired) shard by shard,
    each shard's lines prefixed with its folder's name."""
    target = Path(index_dir)
    if is_sharded(target):
        return _with_orphans(target, shard_dirs(target), repair)
    report = check_index(target)
    report.notes.extend(build_notes(target))
    report.problems.extend(_network_problems(target))
    if not repair:
        return _with_orphans(target, [target], False, report)
    if not report.source_ok:
        report.repaired.append(
            "nothing repaired: the manifest or records are damaged, and everything else is "
            "derived from them; rebuild the index with 'retrieve build-index'"
        )
        return report
    done = repair_index(target)
    for stray in stray_builds(target):
        shutil.rmtree(stray)
        done.append(f"removed {stray}")
    report = check_index(target)
    report.notes.extend(build_notes(target))
    report.problems.extend(_network_problems(target))
    report.repaired = done
    return _with_orphans(target, [target], True, report)


def _recorded(folders: list[Path]) -> set[str]:
    paths: set[str] = set()
    for folder in folders:
        with IndexStore.open(folder, lazy=True) as store:
            paths.update(item.path for item in store.items())
    return paths


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def _with_orphans(
    target: Path, folders: list[Path], repair: bool, report: CheckReport | None = None
) -> CheckReport:
    """``report`` (for a sharded index, that of its shards) with a note on the copies in
    ``target``'s uploads folder that no item of ``folders`` records, and with ``repair`` their
    removal (left for later while an enrolment is writing there)."""
    if report is None:
        report = _check_shards(target, repair)
    where = uploads.uploads_dir(target)
    if not report.source_ok or report.problems or not where.is_dir():
        return report
    if repair:
        gone = uploads.remove_orphans(target, lambda: _recorded(folders))
        if gone is None:
            report.notes.append(
                f"{where}: an enrolment is in progress; files no item records were kept for "
                "the next repair"
            )
        elif gone:
            report.repaired.append(f"removed {_files(len(gone))} from {where} that no item records")
        return report
    left = uploads.orphans(target, _recorded(folders))
    if left:
        report.notes.append(
            f"{_files(len(left))} in {where} that no item records (left by an interrupted "
            "enrolment, or one still running); 'retrieve check --repair' removes them"
        )
    return report


def _check_shards(target: Path, repair: bool) -> CheckReport:
    report = CheckReport(target)
    dirs = shard_dirs(target)
    for folder in dirs:
        part = check(folder, repair=repair)
        report.items += part.items
        report.source_ok = report.source_ok and part.source_ok
        for mine, theirs in (
            (report.problems, part.problems),
            (report.notes, part.notes),
            (report.repaired, part.repaired),
        ):
            mine.extend(f"{folder.name}: {line}" for line in theirs)
    if not report.problems:
        labels: set[str] = set()
        for folder in dirs:
            with IndexStore.open(folder, lazy=True) as store:
                labels.update(store.label_counts())
        report.labels = len(labels)
    report.notes.extend(build_notes(target))
    return report


def _network_problems(target: Path) -> list[str]:
    """The index's exported network, if its manifest names one, checked against its sha256
    (it cannot be repaired from the records: a rebuild re-exports it)."""
    try:
        entry = read_entry(target)
        if entry.onnx_sha256 is not None:
            refuse_external_data(read_index_onnx(target, entry), str(target / ONNX_FILE))
    except IndexStoreError:
        return []  # check_index has reported the manifest
    except ModelError as exc:
        return [str(exc)]
    return []
