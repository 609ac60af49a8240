"""The architecture's rules (docs/architecture.md) as tests: the import contracts in pyproject.toml
(layers, index/ free of torch and Pillow, Ray only in retrieval.cluster, index/ reached only
through its public names), types checked strictly where the public API and index/ are, and only
the CLI printing."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRINTS_ONLY_HERE = Path("retrieval/faces/cli.py")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = BIN / "lint-imports"
    if not tool.is_file():
        pytest.skip("import-linter is not installed: pip install -e '.[dev]'")
    return subprocess.run(
        [str(tool), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_import_contracts_are_kept():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("retrieval/engine/classify.py", "import torch", "never imports torch"),
        ("index/plan.py", "import PIL", "index/ never imports"),
        ("retrieval/engine/embed.py", "import retrieval.faces.cli", "layers:"),
        ("retrieval/indexing/ingest.py", "import ray", "only retrieval.cluster imports Ray"),
        ("retrieval/api.py", "from index.store import IndexStore", "only its public names"),
    ],
)
def test_a_crossing_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contract):
    """The contracts can fail: a copy of the code with one import that crosses a rule."""
    for part in ("retrieval", "index"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout
    broken = done.stdout.partition("Broken contracts")[2]
    assert contract in broken, done.stdout


def test_public_api_and_index_pass_mypy_strict():
    if shutil.which("mypy", path=str(BIN)) is None:
        pytest.skip("mypy is not installed: pip install -e '.[dev]'")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "index",
            "retrieval/api.py",
            "retrieval/results.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _is_print(f: ast.expr) -> bool:
    """print(), click.echo/secho, sys.stdout/stderr.write."""
    if isinstance(f, ast.Name):
        return f.id == "print"
    if not isinstance(f, ast.Attribute):
        return False
    if f.attr in ("echo", "secho"):
        return isinstance(f.value, ast.Name) and f.value.id == "click"
    return (
        f.attr == "write"
        and isinstance(f.value, ast.Attribute)
        and f.value.attr
        in (
            "stdout",
            "stderr",
        )
    )


def _prints(tree: ast.AST) -> list[int]:
    """Lines that print."""
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _is_print(node.func)
    )


def test_only_the_cli_prints():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for package in ("retrieval", "index")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT) != PRINTS_ONLY_HERE
        for line in _prints(ast.parse(path.read_text(), str(path)))
    ]
    assert not offenders, offenders
    assert _prints(ast.parse((ROOT / PRINTS_ONLY_HERE).read_text())), "the CLI prints"


def test_the_print_finder_finds_prints():
    source = "import click, sys\nprint(1)\nclick.echo('x')\nsys.stderr.write('y')\nlog.info('z')\n"
    assert _prints(ast.parse(source)) == [2, 3, 4]
