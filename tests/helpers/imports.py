"""The static import graph of the project's own modules (module-level and function-level)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Top-level packages of this repository whose import graph the tests check.
OWN_PACKAGES = ("warmstart", "flows", "tasks")


def module_file(module: str) -> Path:
    """The file of a dotted module name: ``a/b.py``, or ``a/b/__init__.py`` for a package."""
    base = REPO / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def direct_imports(module: str) -> set[str]:
    """The project modules ``module`` imports itself (``from x import y`` counts as x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found.update(n for n in names if n.split(".")[0] in OWN_PACKAGES)
    return found


def imported_modules(module: str, seen: set[str] | None = None) -> set[str]:
    """The warmstart modules ``module`` imports, transitively, ``module`` included."""
    seen = set() if seen is None else seen
    seen.add(module)
    for name in direct_imports(module):
        if name.startswith("warmstart.") and name not in seen:
            imported_modules(name, seen)
    return seen


def own_modules(package: str) -> list[str]:
    """Every module of one top-level package of this repository, as dotted names."""
    root = REPO / package
    return sorted(".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for path in root.rglob("*.py"))
