"""The README's first command: the built-in demo runs end to end on its synthetic gallery."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_builds_queries_and_enrols(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--work", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "$ retrieve build-index" in out and "$ retrieve enroll" in out
    right, total = map(
        int, re.search(r"held-out queries answered correctly: (\d+)/(\d+)", out).groups()
    )
    assert total == 14 and right >= 10
    before, unknown = map(
        int,
        re.search(
            r"before enrolment: (\d+)/\d+ recognised, (\d+)/\d+ answered unknown", out
        ).groups(),
    )
    after = int(re.search(r"after enrolling 5 examples: (\d+)/", out).group(1))
    assert before == 0 and unknown >= 1 and after > before
    # `retrieve info` at the end: 89 items in 8 labels, the enrolled one among them with its 5.
    new_label = re.search(r"'([^']+)' after enrolling 5 examples", out).group(1)
    lines = out.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("items ")]
    assert lines[at].split()[1:] == ["89", "in", "8", "labels"]
    assert lines[at + 1].startswith("unknown   below decision score ")
    assert lines[at + 2] == "rerank    dba+qe"
    rows = [line.rsplit(maxsplit=1) for line in lines[at + 3 :]]
    table = {label.strip(): int(n) for label, n in rows}
    assert len(table) == 8 and sum(table.values()) == 89 and table[new_label] == 5
