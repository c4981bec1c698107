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
    "export": {"eval", "inference"},
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
