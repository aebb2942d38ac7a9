"""Running dvc and git as the pipeline would, and a git + DVC copy of this project to run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.shared import REPO


def command_env() -> dict[str, str]:
    """The environment for dvc/git commands: this venv's tools first on PATH, no analytics."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_command(cmd: list[str], cwd: Path) -> str:
    """Run a command (dvc, git) with this venv's tools first on PATH; fail with its output."""
    done = subprocess.run(cmd, cwd=cwd, env=command_env(), capture_output=True, text=True,
                          timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-5000:]}"
    return output


def make_dvc_project(work: Path, params: dict) -> Path:
    """A git + DVC project holding this repo's dvc.yaml, code and schema, and ``params``."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", work)
    shutil.copytree(REPO / "warmstart", work / "warmstart",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "schema", work / "schema")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"],
                ["git", "config", "user.name", "test"], ["dvc", "init", "-q"]):
        run_command(cmd, work)
    return work
