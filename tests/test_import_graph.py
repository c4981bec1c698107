"""The package's rooms: which sub-package may import which (read from the source with ast, so
imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_ego"

# sub-package -> sub-packages it must not import
FORBIDDEN = {
    "model": {"data", "losses", "training", "eval", "export", "inference"},
    "eval": {"training"},
    "export": {"training", "eval", "inference"},
    "inference": {"training", "eval"},
    "checkpoint_format": {"model", "data", "losses", "training", "eval", "export", "inference"},
    "runtime": {"model", "data", "losses", "training", "eval", "export", "inference"},
    "data": {"model", "losses", "training", "eval", "export", "inference"},
}


def imported_subpackages(path: Path) -> set[str]:
    """Second components of every `megatron_ego.X...` the file imports (X = 'config', 'model', ...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "megatron_ego" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_parser_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom megatron_ego.config import Config\n"
                      "def f():\n    import megatron_ego.training.trainer\n")
    assert imported_subpackages(source) == {"config", "training"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_in_their_rooms(package):
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files, f"no sources under megatron_ego/{package}"
    bad = {str(p.relative_to(PACKAGE)): sorted(imported_subpackages(p) & FORBIDDEN[package])
           for p in files}
    bad = {name: found for name, found in bad.items() if found}
    assert not bad, f"megatron_ego/{package} imports what it must not: {bad}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports (a `from X import name` counts X.name when that
    is a module, else X)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def _reachable(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))
        todo.extend(graph.get(name, ()))
    return seen


@pytest.mark.parametrize("package", ["export", "eval", "checkpoint_format"])
def test_nothing_under_the_package_reaches_training_even_indirectly(package):
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imported_modules(path, set(files)) for name, path in files.items()}
    start = {name for name in files if name.startswith(f"megatron_ego.{package}")}
    assert start
    reached = sorted(n for n in _reachable(start, graph) if n.startswith("megatron_ego.training"))
    assert not reached, f"megatron_ego/{package} reaches {reached}"


def test_the_reachability_check_sees_an_indirect_import():
    graph = {"megatron_ego.export.a": {"megatron_ego.helper"},
             "megatron_ego.helper": {"megatron_ego.training.checkpoint"}}
    assert "megatron_ego.training.checkpoint" in _reachable({"megatron_ego.export.a"}, graph)
