"""The imports state the data flow: each file imports its own layer and those below, never above.

The layers of the library, bottom to top (README, *Architecture*):

    errors, limits → methods → io → evals → model → plan → export → stats → engine → cache → run
    → experiments → cli → merging (the public API)

Above the library: ui/ (acyclic within itself), then app.py. toy/ and benchmarks/ use the library.
Imports inside functions are forbidden except the optional extras (Ray, Playwright, ZeroGPU's `spaces`):
an import inside a function is how a cycle or an upward import hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [("merging.errors", "merging.limits"), ("merging.methods",), ("merging.io",), ("merging.evals",),
          ("merging.model",), ("merging.plan",), ("merging.export",), ("merging.stats",), ("merging.engine",),
          ("cache",), ("merging.run",), ("merging.experiments",), ("merging.cli", "merging.__main__"),
          ("merging",)]
OPTIONAL_EXTRAS = ("ray", "playwright", "spaces")
PROJECT = ("merging", "cache", "ui", "toy")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_imports(path: Path) -> list[tuple[str, ast.stmt]]:
    """(absolute module, node) for every import of a project module in `path`, relative ones resolved.
    `from package import name` counts as importing package.name when that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (ROOT / Path(*sub.split(".")) / "__init__.py").exists()
                found.append((sub if is_module else base, node))
    return [(m, node) for m, node in found if m.split(".")[0] in PROJECT]


def layer_of(module: str) -> int | None:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "merging" and module.startswith(prefix + "."))
            if inside and (
                    best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_every_library_file_has_a_layer():
    assert [str(p) for p in files("merging", "cache") if layer_of(module_name(p)) is None] == []


@pytest.mark.parametrize("path", files("merging", "cache"), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    own = layer_of(module_name(path))
    upward = sorted({m for m, _ in project_imports(path) if (layer_of(m) is None or layer_of(m) > own)})
    assert not upward, f"{path.relative_to(ROOT)} (layer {LAYERS[own]}) imports upward: {upward}"


def test_no_library_file_imports_the_package_root():
    """`from merging import X` inside the library would make the public API a dependency of its parts."""
    offenders = [str(p.relative_to(ROOT)) for p in files("merging", "cache") if p != ROOT / "merging/__init__.py"
                 if any(m == "merging" for m, _ in project_imports(p))]
    assert offenders == []


@pytest.mark.parametrize("folder", ["merging", "cache", "toy", "ui"])
def test_no_imports_inside_functions(folder):
    inner = []
    for path in files(folder):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        top = (node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name
                        if getattr(node, "level", 0) or top.split(".")[0] not in OPTIONAL_EXTRAS:
                            inner.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert inner == []


def import_graph(*folders: str) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in files(*folders)}
    return {name: {m for m, _ in project_imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, …, a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("folders", [("merging", "cache"), ("ui",)], ids=lambda f: "+".join(f))
def test_no_import_cycles(folders):
    assert find_cycle(import_graph(*folders)) is None
