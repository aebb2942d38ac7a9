"""DVC plumbing for the Prefect flow: stage order, status, `dvc repro` of one stage, metrics.

DVC decides *what* runs (it owns the hashes of deps, params and outs and writes `dvc.lock`);
the flow decides order, retries and what is shown. DVC is used through its command line only
(`dvc repro --dry`, `dvc status --json`, `dvc repro --single-item`, `dvc metrics/params diff
--json`, `dvc plots show --json`) and the documented dvc.lock format, never its internals.
Nothing here imports Prefect, so the same functions are usable (and tested) without a Prefect
server.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmstart import versions
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

#: How many output lines of a failed stage its error message keeps.
ERROR_TAIL_LINES = 40
DVC_LOCK_MESSAGE = "Unable to acquire lock"
#: `dvc repro --dry` names each stage it would run, in its order, on a line of its own.
PLANNED_STAGE = re.compile(r"^Running stage '([^']+)':$", re.MULTILINE)


class StageFailed(WarmstartError):
    """`dvc repro` of one stage failed; the message carries the stage's own error lines."""

    def __init__(self, stage: str, returncode: int, message: str) -> None:
        self.stage = stage
        self.returncode = returncode
        super().__init__(message)


class WorkspaceBusy(WarmstartError):
    """Another pipeline run or DVC command holds this workspace."""


class NotADvcProject(WarmstartError):
    """The project folder has no dvc.yaml / .dvc."""


@dataclass(frozen=True)
class StageOutcome:
    """What one stage did in a flow run: passed between tasks instead of data or models."""

    stage: str
    status: str  # "ran" | "skipped"
    seconds: float
    reasons: list[str] = field(default_factory=list)
    outs: dict[str, str] = field(default_factory=dict)  # path -> DVC hash from dvc.lock


def check_project(root: Path) -> Path:
    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        raise NotADvcProject(f"{root} is not a DVC project (no dvc.yaml or .dvc/). Pass the "
                             "warmstart checkout as `project` (it defaults to the current "
                             "folder).")
    return root


def dvc_env() -> dict[str, str]:
    """Environment of DVC subprocesses: this interpreter's `python` first on PATH (the stage
    cmds are `python -m warmstart ...`), unbuffered output, no analytics, quiet progress bars."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
            "TQDM_MININTERVAL": "10"}


def stage_order(root: Path, target: str = "") -> list[str]:
    """Every stage of dvc.yaml (or ``target`` and the stages it needs) in the order `dvc repro`
    runs them, so a flow run and `dvc repro` run stages, and write dvc.lock entries, in the same
    order. DVC's own plan, as `dvc repro --dry --force` prints it: nothing runs."""
    planned = run_dvc(root, "repro", "--dry", "--force", *([target] if target else []))
    return PLANNED_STAGE.findall(planned)


def stage_changes(root: Path, stage: str) -> list[str]:
    """Why DVC would run ``stage`` now (changed deps/params/outs, one line each); [] if none.

    Only this stage is checked (`dvc status <stage>`): the flow runs stages in order, so
    upstream stages have already been brought up to date when this is asked.
    """
    status = dvc_json(root, "status", "--json", stage)
    return describe_status(next(iter(status.values()), []))


def describe_status(entries: list[Any]) -> list[str]:
    lines = []
    for entry in entries:
        if isinstance(entry, str):
            lines.append(entry)
            continue
        for kind, items in entry.items():
            if isinstance(items, dict):
                lines.extend(f"{kind}: {path} ({_what(what)})" for path, what in items.items())
            else:
                lines.append(f"{kind}: {items}")
    return lines


def _what(change: Any) -> str:
    """'modified', or for params files {'finetune': 'modified'} -> 'finetune: modified'."""
    if isinstance(change, dict):
        return ", ".join(f"{key}: {value}" for key, value in change.items())
    return str(change)


def pipeline_status(root: Path) -> dict:
    """`dvc status --json` of the whole pipeline: {} when everything is up to date."""
    return dvc_json(root, "status", "--json")


def busy_message(root: Path) -> str:
    return (f"DVC's lock in {root} is held by another DVC process (a `dvc repro`, `dvc exp run` "
            "or another pipeline run). Nothing was changed by this run. Wait for it to finish "
            "and run again; if no DVC process is running, remove .dvc/tmp/lock after "
            "checking.")


def repro_stage(root: Path, stage: str, on_line: Callable[[str], None]) -> None:
    """`dvc repro --single-item <stage>`: DVC runs the stage's cmd and updates dvc.lock.

    Every output line (DVC's and the stage's log) goes to ``on_line`` as it is printed.
    Raises StageFailed with the stage's error lines, or WorkspaceBusy on DVC's lock error.
    """
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    lines = stream(cmd, root, on_line)
    if lines.returncode == 0:
        return
    if any(DVC_LOCK_MESSAGE in line for line in lines.tail):
        raise WorkspaceBusy(busy_message(root))
    raise StageFailed(stage, lines.returncode, failure_message(stage, lines.tail))


@dataclass
class Streamed:
    returncode: int
    tail: list[str]


def stream(cmd: list[str], cwd: Path, on_line: Callable[[str], None]) -> Streamed:
    """Run ``cmd``, pass each output line to ``on_line``; keep the tail for error messages.

    The child gets its own process group, killed if this run is interrupted or cancelled, so
    no orphaned stage keeps DVC's lock.
    """
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, env=dvc_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace",
                          start_new_session=True) as process:
        try:
            for raw in process.stdout:
                line = raw.rstrip()
                if line:
                    on_line(line)
                    tail = (tail + [line])[-200:]
            process.wait()
        except BaseException:
            kill_group(process)
            raise
    return Streamed(process.returncode, tail)


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def failure_message(stage: str, tail: list[str]) -> str:
    """The stage's own error (from its first ERROR line on) and DVC's verdict."""
    start = next((i for i, line in enumerate(tail) if "ERROR" in line), None)
    lines = tail[start:] if start is not None else tail[-ERROR_TAIL_LINES:]
    if len(lines) > ERROR_TAIL_LINES:  # keep the head of the stage's error and DVC's verdict
        lines = [*lines[:ERROR_TAIL_LINES - 2], "[...]", lines[-1]]
    return (f"stage '{stage}' failed:\n" + "\n".join(lines)
            + f"\nRe-run it alone with `dvc repro --single-item {stage}` after fixing.")


def run_dvc(root: Path, *args: str, timeout: float = 600) -> str:
    """A DVC command's stdout. Raise WorkspaceBusy on DVC's lock error, else WarmstartError
    with the command's output when it fails."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=dvc_env(),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        if DVC_LOCK_MESSAGE in done.stderr + done.stdout:
            raise WorkspaceBusy(busy_message(root))
        raise WarmstartError(f"`dvc {' '.join(args)}` failed in {root}:\n"
                             f"{(done.stdout + done.stderr).strip()}")
    return done.stdout


def dvc_json(root: Path, *args: str) -> dict:
    """The parsed output of a DVC command run with ``--json``."""
    return json.loads(run_dvc(root, *args) or "{}")


def locked_outs(root: Path, stage: str) -> dict[str, str]:
    """The outs of ``stage`` with their hashes as recorded in dvc.lock."""
    return {out["path"]: out.get("md5") or out.get("hash") or ""
            for out in versions.locked_outs(root, stage)}


def metrics_diff(root: Path) -> dict:
    """`dvc metrics diff --json` (last commit vs workspace); {} outside git history."""
    if not has_commits(root):
        return {}
    return dvc_json(root, "metrics", "diff", "--json", "--all")


def params_diff(root: Path) -> dict:
    if not has_commits(root):
        return {}
    return dvc_json(root, "params", "diff", "--json")


def metrics_show(root: Path) -> dict:
    return dvc_json(root, "metrics", "show", "--json")


def plots_show(root: Path) -> dict:
    """`dvc plots show --json`: {"data": {plot id (a file, or a dvc.yaml plot title): ...}}."""
    return dvc_json(root, "plots", "show", "--json")


def has_commits(root: Path) -> bool:
    done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                          capture_output=True, text=True)
    return done.returncode == 0

