"""The DVC pipeline end to end on a tiny dataset: `dvc repro`, no-op re-run, partial re-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.commands import command_env, make_dvc_project, run_command
from tests.helpers.images import make_dataset
from tests.helpers.imports import imported_modules, module_file
from tests.helpers.project import DEFAULT_PER_CLASS, tiny_params
from tests.helpers.shared import REPO

STAGE_ORDER = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


run = run_command


def ran_stages(output: str) -> list[str]:
    return [s for s in STAGE_ORDER if f"Running stage '{s}'" in output]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git + DVC project with this repo's dvc.yaml, code and schema, and tiny params."""
    source = make_dataset(tmp_path / "source", per_class=DEFAULT_PER_CLASS)
    return make_dvc_project(tmp_path / "project", tiny_params(source))


def commit(work: Path, message: str) -> None:
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", message], work)


def test_repro_skip_and_partial_rerun(project: Path) -> None:
    assert ran_stages(run(["dvc", "repro"], project)) == STAGE_ORDER
    assert "up to date" in run(["dvc", "status"], project)
    for metrics in ("transfer", "finetune", "evaluate"):
        assert (project / "metrics" / f"{metrics}.json").is_file()
    commit(project, "first run")

    second = run(["dvc", "repro"], project)
    assert ran_stages(second) == [] and "didn't change" in second

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["epochs"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], project)
    assert "finetune:" in status and "transfer:" not in status
    downstream = STAGE_ORDER[STAGE_ORDER.index("finetune"):]
    assert downstream[:2] == ["finetune", "evaluate"]
    assert ran_stages(run(["dvc", "repro"], project)) == downstream
    assert "up to date" in run(["dvc", "status"], project)
    assert "finetune.epochs" in run(["dvc", "params", "diff"], project)
    metrics_diff = run(["dvc", "metrics", "diff"], project)
    assert "metrics/finetune.json" in metrics_diff and "epochs" in metrics_diff


def test_validation_failure_stops_the_pipeline(project: Path, tmp_path: Path) -> None:
    (tmp_path / "source" / "train" / "cats" / "bad.jpg").write_bytes(b"garbage")
    done = subprocess.run(["dvc", "repro"], cwd=project, env=command_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "train/cats/bad.jpg" in output and "failed to reproduce 'validate'" in output
    assert ran_stages(output) == ["ingest", "validate"]
    assert "Traceback" not in output


def test_a_stage_process_leaves_no_autograph_files_behind(tmp_path: Path) -> None:
    """Regression: ``warmstart.cli.run`` ends with ``os._exit`` (no slow interpreter teardown),
    which skipped the ``atexit`` handlers: each stage process left the
    ``__autograph_generated_file*.py`` files AutoGraph writes to the temporary folder."""
    scratch, script = tmp_path / "tmp", tmp_path / "stage.py"
    scratch.mkdir()
    script.write_text(  # AutoGraph converts from source: a file, not `python -c`
        "import tempfile\n"
        "from pathlib import Path\n"
        "import tensorflow as tf\n"
        "from warmstart import cli\n"
        "def stage():\n"
        "    tf.function(lambda x: x + 1 if x > 0 else x)(tf.constant(1))\n"
        "    written = list(Path(tempfile.gettempdir()).glob('__autograph_generated_file*'))\n"
        "    return 0 if written else 3  # the conversion wrote its file\n"
        "cli.main = stage\n"
        "cli.run()\n")
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                          text=True, env={**command_env(), "TMPDIR": str(scratch)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in scratch.iterdir()) == []


def test_dvc_yaml_deps_list_exactly_the_modules_each_stage_imports() -> None:
    from warmstart.cli import STAGES

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        needed = imported_modules(STAGES[name][0]) | imported_modules("warmstart.cli")
        files = {module_file(m).relative_to(REPO).as_posix() for m in needed}
        listed = {dep for dep in stage["deps"] if dep.startswith("warmstart/")}
        assert listed == files, (f"dvc.yaml stage {name!r}: missing {sorted(files - listed)}, "
                                 f"not imported {sorted(listed - files)}")
        assert f"python -m warmstart {name}" == stage["cmd"]
