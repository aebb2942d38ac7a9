"""The layering rules of the code base, checked on the static import graph.

- a library module (anything in ``warmstart`` but ``warmstart.stages`` and the CLI) never imports
  a stage: stages are the edges, libraries are shared by them;
- a stage never imports another stage: what two stages share lives in a library module (else
  editing one stage would re-run the other under DVC);
- ``flows/`` and ``tasks/`` run stages only through DVC: they never import a stage;
- ``warmstart`` never imports ``flows`` or ``tasks`` (the package works without Prefect).
"""

from __future__ import annotations

import ast
import importlib

import pytest
import yaml

from tests.helpers.imports import REPO, direct_imports, module_file, own_modules

STAGE_PACKAGE = "warmstart.stages"
ENTRY_POINTS = {"warmstart.cli", "warmstart.__main__"}


def is_stage(module: str) -> bool:
    return module.startswith(f"{STAGE_PACKAGE}.")


def imported_stages(module: str) -> set[str]:
    return {name for name in direct_imports(module) if is_stage(name)}


@pytest.mark.parametrize("module", [m for m in own_modules("warmstart")
                                    if not is_stage(m) and m not in ENTRY_POINTS])
def test_a_library_module_never_imports_a_stage(module: str) -> None:
    assert not imported_stages(module), f"{module} imports {sorted(imported_stages(module))}"


@pytest.mark.parametrize("module", [m for m in own_modules("warmstart") if is_stage(m)])
def test_a_stage_never_imports_another_stage(module: str) -> None:
    assert not imported_stages(module) - {module}, (
        f"{module} imports {sorted(imported_stages(module))}: move what they share into a "
        "library module")


@pytest.mark.parametrize("module", own_modules("flows") + own_modules("tasks"))
def test_flows_and_tasks_run_stages_only_through_dvc(module: str) -> None:
    assert not imported_stages(module), f"{module} imports {sorted(imported_stages(module))}"


@pytest.mark.parametrize("module", own_modules("warmstart"))
def test_warmstart_never_imports_the_prefect_side(module: str) -> None:
    prefect_side = {n for n in direct_imports(module) if n.split(".")[0] in ("flows", "tasks")}
    assert not prefect_side, f"{module} imports {sorted(prefect_side)}"


def test_the_rules_see_the_imports() -> None:
    """The graph is not empty: a stage's own imports are found (else every rule would pass)."""
    assert "warmstart.config.params" in direct_imports("warmstart.stages.ingest")
    assert "warmstart.errors" in direct_imports("tasks.dvcops")


MAX_FUNCTION_LINES = 40


@pytest.mark.parametrize("package", ["warmstart", "flows", "tasks"])
def test_production_functions_are_short(package: str) -> None:
    """A function longer than a screen is split into named steps (lines incl. its docstring)."""
    long = []
    for module in own_modules(package):
        for node in ast.walk(ast.parse(module_file(module).read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert not long, long


@pytest.mark.parametrize("stage", ["transfer", "finetune"])
def test_backup_fingerprints_cover_the_params_dvc_yaml_gives_the_stage(stage: str) -> None:
    """A resumed backup must belong to the same params: the sections a training stage puts in
    its backup fingerprint are the ones dvc.yaml re-runs it for, plus ``data`` (split names)."""
    module = importlib.import_module(f"warmstart.stages.{stage}")
    dvc_params = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["params"]
    assert set(module.SECTIONS) == {key.split(".")[0] for key in dvc_params} | {"data"}
