"""The installed ``retrieve`` command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .helpers import COLORS, retrieve_exe, write_image


def test_installed_command_round_trip(gallery: Path, tmp_path: Path):
    exe = retrieve_exe()
    env = {**os.environ, "RETRIEVE_INDEX": str(tmp_path / "index")}

    def call(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
        )

    built = call("build-index", gallery, "--model", "tiny")
    assert built.returncode == 0, built.stderr
    q = write_image(tmp_path / "q.png", COLORS["green"], seed=42)
    answer = call("query", q, "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["label"] == "green"
    missing = call("query", tmp_path / "missing.jpg")
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "missing.jpg" in missing.stderr
