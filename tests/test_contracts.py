"""The import contracts of pyproject.toml hold for the tree, and each one breaks on the import it
exists to forbid (so a wrong import really fails CI). Runs lint-imports on a copy of the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.process
# the console script installed next to this interpreter (the dev extra's import-linter)
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy shadows the installed package
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # a lower layer reaching up: backends importing the switching core
        ("backends/state.py", "import proxy.switching.plan", "One way down"),
        # the switching core importing the web framework
        ("switching/plan.py", "import starlette.responses", "never imports the web framework"),
        # the emulator reaching into the proxy
        ("emulator/tokenizer.py", "import proxy.config", "imports nothing of the proxy"),
        # the proxy importing the emulator outside the CLI and the demo
        ("services.py", "import proxy.emulator.engine", "Only the CLI and the demo"),
        # a new top-level module without a layer
        ("stray.py", "", "One way down"),
    ],
)
def test_each_contract_breaks_on_the_import_it_forbids(
    tree: Path, module: str, line: str, broken: str
) -> None:
    path = tree / "proxy" / module
    text = path.read_text() if path.exists() else '"""A module nobody placed."""\n'
    path.write_text(text + (f"\n{line}  # noqa\n" if line else ""))
    result = _lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout or "2 broken" in result.stdout, result.stdout
    broken_part = result.stdout.split("Broken contracts", 1)[1]
    assert broken in broken_part.replace("\n", " "), result.stdout
