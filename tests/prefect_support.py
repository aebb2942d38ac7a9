"""Helpers for the Prefect flow tests: tmp git + DVC projects, isolated Prefect settings."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.images import make_dataset
from tests.helpers.project import tiny_params
from tests.helpers.shared import REPO

BIN = Path(sys.executable).parent


def stages_through(stage: str) -> list[str]:
    """``stage`` and every stage it needs, in DVC's order, from this repo's dvc.yaml (other
    stages, e.g. export, are left out of the flow tests to keep them short)."""
    from tasks.dvcops import stage_order

    return stage_order(REPO, stage)


def prefect_env(home: Path) -> dict[str, str]:
    """Settings for an isolated Prefect: its own PREFECT_HOME, no telemetry, its console log
    handler on the process's real stderr (never on one of pytest's capture streams; a logging.yml
    key set through Prefect's PREFECT_LOGGING_<PATH>_<KEY> variables)."""
    return {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO", "DVC_NO_ANALYTICS": "1",
            "PREFECT_LOGGING_HANDLERS_CONSOLE_STREAM": "ext://sys.__stderr__"}


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
       timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1",
                               "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})})
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-5000:]}"
    return output


def init_repo(work: Path) -> None:
    sh(["git", "init", "-q", "-b", "main"], work)
    sh(["git", "config", "user.email", "t@example.org"], work)
    sh(["git", "config", "user.name", "test"], work)
    sh([sys.executable, "-m", "dvc", "init", "-q"], work)


def make_project(tmp_path: Path, stages: list[str] | None = None,
                 extra_stages: dict | None = None, **overrides: dict) -> Path:
    """A git + DVC project with this repo's dvc.yaml (only ``stages`` of it, if given, plus
    ``extra_stages``), code and schema, tiny params and a tiny synthetic dataset."""
    work = tmp_path / "project"
    work.mkdir()
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    if stages is not None:
        kept = {"stages": {k: v for k, v in pipeline["stages"].items() if k in stages}}
        if "evaluate" in stages:  # the top-level plots read the training and evaluate outputs
            kept["plots"] = pipeline["plots"]
        pipeline = kept
    pipeline["stages"].update(extra_stages or {})
    (work / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    shutil.copytree(REPO / "warmstart", work / "warmstart",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "schema", work / "schema")
    source = make_dataset(tmp_path / "source")
    params = tiny_params(source, **overrides)
    retries = params["orchestration"]["stage_retries"]
    params["orchestration"]["stage_retries"] = {k: v for k, v in retries.items()
                                                if k in pipeline["stages"]}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_repo(work)
    return work


def commit_all(work: Path, message: str) -> None:
    sh(["git", "add", "-A"], work)
    sh(["git", "commit", "-qm", message], work)


def dvc_status(work: Path) -> str:
    return sh([sys.executable, "-m", "dvc", "status"], work)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
