"""The package as people install it, and the layering rules that keep it readable.

- `pip install -e .` in a fresh virtual environment gives working `mergescope` and `mergescope-app`
  commands (the environment sees this machine's packages, so nothing is downloaded);
- requirements.txt (the app's runtime) and pyproject.toml's dependencies pin the same packages;
- the library (merging/, cache/) imports nothing from the toy world, the UI or the benchmarks; no
  library or UI file is over 400 lines and no function outside tests/ over 80 lines.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("merging", "cache")
OUTSIDE_LIBRARY = ("toy", "ui", "benchmarks", "app", "tests")


def _requirement_lines(text: str) -> set[str]:
    return {re.sub(r"\s+", "", line.split("#")[0]).lower() for line in text.splitlines()
            if line.split("#")[0].strip()}


def test_requirements_txt_and_pyproject_pin_the_same_runtime_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.sub(r"\s+", "", d).lower() for d in project["dependencies"]}
    assert _requirement_lines((ROOT / "requirements.txt").read_text()) == declared
    test_tools = {re.split(r"[=<>\[]", d)[0].lower() for d in project["optional-dependencies"]["test"]}
    assert {"pytest", "ruff", "playwright"} <= test_tools
    assert not test_tools & {re.split(r"[=<>\[]", d)[0] for d in declared}, "a test tool is in the runtime"


def test_pip_install_editable_gives_the_console_scripts(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True).create(env_dir)  # pip and setuptools: this machine's
    python = env_dir / "bin" / "python"
    # --no-deps / --no-build-isolation: the dependencies and setuptools come from this machine
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "-e", str(ROOT)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-2000:]
    for command, expected in (("mergescope", "inspect"), ("mergescope-app", "--pair")):
        result = subprocess.run([env_dir / "bin" / command, "--help"], capture_output=True, text=True,
                                timeout=300, cwd=tmp_path)  # outside the checkout: the installed package
        assert result.returncode == 0, result.stderr[-2000:]
        assert expected in result.stdout


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _python_files(*LIBRARY), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_never_imports_its_users(path):
    tree = ast.parse(path.read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    upward = [m for m in imported if m and m.split(".")[0] in OUTSIDE_LIBRARY]
    assert not upward, f"{path.relative_to(ROOT)} imports {upward}"


def test_library_files_and_functions_stay_small():
    too_long_files = [f"{p.relative_to(ROOT)}: {n}" for p in _python_files("merging", "ui")
                      if (n := len(p.read_text().splitlines())) > 400]
    assert not too_long_files
    long_functions = []
    for path in _python_files("merging", "cache", "toy", "benchmarks", "ui") + [ROOT / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                      f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long_functions


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]


def test_no_benchmark_script_shadows_a_package():
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path: a script named like one of our packages
    (benchmarks/cache.py did) would be imported in its place."""
    ours = {"merging", "cache", "ui", "toy", "app", "tests"}
    assert not ours & {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
