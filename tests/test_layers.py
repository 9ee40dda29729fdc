"""The package's layers, enforced: each subpackage imports only from the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mstl_utils

PACKAGE = Path(mstl_utils.__file__).parent

#: Which layers each layer may import (itself included). ``report`` never imports training code, the
#: ``engine`` never a chapter, ``data`` and ``models`` only the core; the driver only runs notebooks.
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "models": {"core", "models"},
    "report": {"core", "data", "report"},
    "engine": {"core", "data", "models", "report", "engine"},
    "experiments": {"core", "data", "models", "report", "engine", "experiments"},
    "study": {"core", "report", "study"},
}


def _layer(module: Path) -> str:
    parts = module.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else module.stem


def _imported_layers(module: Path) -> dict[str, int]:
    """Layer -> first line number of every mstl_utils import in ``module`` (inside functions too)."""
    here = module.relative_to(PACKAGE).parent.parts  # () for the package root
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(module.read_text())):
        targets: list[tuple[str, ...]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                path = (*base, *(node.module.split(".") if node.module else ()))
                targets = [path] if path else [(alias.name,) for alias in node.names]
            elif node.module and node.module.split(".")[0] == "mstl_utils":
                path = tuple(node.module.split(".")[1:])
                targets = [path] if path else [(alias.name,) for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "mstl_utils"]
        for path in targets:
            if path and path[0] != "__version__":
                found.setdefault(path[0], node.lineno)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_go_down_the_layers(module):
    layer = _layer(module)
    assert layer in ALLOWED, f"{module.relative_to(PACKAGE)}: in no layer; put it in one of {sorted(ALLOWED)}"
    wrong = {other: line for other, line in _imported_layers(module).items() if other not in ALLOWED[layer]}
    assert not wrong, (f"{module.relative_to(PACKAGE)} ({layer}) imports "
                       + ", ".join(f"{o} (line {n})" for o, n in wrong.items()) + f"; {layer} may import {sorted(ALLOWED[layer])}")


def test_the_package_docstring_has_one_line_per_layer():
    doc = mstl_utils.__doc__
    for layer in ALLOWED:
        assert sum(line.lstrip().startswith(f"``{layer}") for line in doc.splitlines()) == 1, layer


def test_the_checker_sees_a_wrong_import(tmp_path, monkeypatch):
    bad = PACKAGE / "report" / "_layer_probe.py"
    bad.write_text("from ..engine import train\n")
    try:
        assert "engine" in _imported_layers(bad) and "engine" not in ALLOWED["report"]
    finally:
        bad.unlink()
