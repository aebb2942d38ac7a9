"""The workspace around a flow run: a lock serializing runs, param overrides, publishing.

* :func:`workspace_lock` serializes pipeline runs in one checkout (an ``fcntl.flock`` on
  ``.dvc/tmp/warmstart-flow.lock``; the kernel drops it when the process dies).
* :func:`apply_overrides` changes ``params.yaml`` the way ``dvc exp run -S`` does (DVC's own
  Hydra-based code, comments kept), after validating the result with ``warmstart.config.params``.
* :func:`publish` pushes DVC outputs to the default remote and commits ``dvc.lock``, params,
  metrics and plots to a git branch without touching the checked-out branch or the index.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.dvcops import WorkspaceBusy, dvc_env, has_commits, stream
from warmstart.atomic import atomic_path
from warmstart.config.params import (
    DEFAULT_PARAMS_FILE,
    Params,
    ParamsError,
    params_from_dict,
    read_yaml,
)
from warmstart.errors import WarmstartError

LOCK_FILE = Path(".dvc") / "tmp" / "warmstart-flow.lock"


@contextlib.contextmanager
def workspace_lock(root: Path, wait_seconds: float, on_wait: Callable[[str], None],
                   owner: str = "", poll_seconds: float = 1.0) -> Iterator[None]:
    """Hold the workspace's flow lock; wait up to ``wait_seconds`` for another run to end."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if not _try_lock(handle):
            on_wait(f"Another pipeline run holds the workspace lock {path} ({_holder(path)}); "
                    f"waiting up to {wait_seconds:g} s for it to finish.")
            deadline = time.monotonic() + wait_seconds
            while not _try_lock(handle):
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"Another pipeline run still holds {path} ({_holder(path)}) after "
                        f"{wait_seconds:g} s; this run changed nothing. Runs in one workspace "
                        "are serialized: wait for it, or raise `wait_for_lock_seconds`.")
                time.sleep(poll_seconds)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "owner": owner,
                                 "since": datetime.now(UTC).isoformat(" ", "seconds")}))
        handle.flush()
        yield


def _try_lock(handle: Any) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    parts = [f"pid {info['pid']}" if "pid" in info else "", f"on {info['host']}"
             if "host" in info else "", info.get("owner", ""),
             f"since {info['since']}" if "since" in info else ""]
    return " ".join(part for part in parts if part) or "holder unknown"


def override_patterns(overrides: Mapping[str, Any] | None) -> list[str]:
    """``{"finetune.epochs": 10}`` -> ``["finetune.epochs=10"]`` (the `dvc exp run -S` form)."""
    return [f"{key}={_hydra_value(value)}" for key, value in (overrides or {}).items()]


def _hydra_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_set_params(items: list[str]) -> dict[str, str]:
    """``["a.b=1", "c.d=x=y"]`` (command line `-S`) -> ``{"a.b": "1", "c.d": "x=y"}``."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(item, "is not KEY=VALUE", "Write e.g. -S finetune.epochs=10.")
        parsed[key.strip()] = value
    return parsed


def apply_overrides(root: Path, overrides: Mapping[str, Any] | None) -> Params:
    """Apply overrides to params.yaml like `dvc exp run -S`; return the validated params.

    The new file is built and validated beside params.yaml and renamed into place only when
    every value passes ``warmstart.config.params`` checks: a bad override changes nothing.
    """
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    params_file = root / DEFAULT_PARAMS_FILE
    patterns = override_patterns(overrides)
    if not patterns:
        return _validated(params_file, root)
    with atomic_path(params_file, suffix=".yaml") as tmp:
        shutil.copyfile(params_file, tmp)
        try:
            dvc_apply_overrides(tmp, patterns)
        except InvalidArgumentError as exc:
            cause = str(exc.__cause__ or exc).strip()
            raise ParamsError(", ".join(patterns), f"cannot be applied: {cause}",
                              "Override existing keys only, as SECTION.KEY=VALUE "
                              "(e.g. finetune.epochs=10).") from exc
        params = _validated(tmp, root)
    return params


def _validated(path: Path, root: Path) -> Params:
    return params_from_dict(read_yaml(path.read_text()), root=root)


class PublishFailed(WarmstartError):
    """`dvc push` or the git commit of a run's results failed."""


def publish(root: Path, branch: str, message: str, on_line: Callable[[str], None]) -> str:
    """`dvc push` the outputs, then commit the run's git-tracked results on ``branch``.

    Returns the new commit (or the branch tip when nothing changed). The checked-out branch,
    the index and the working tree are left as they are.
    """
    pushed = stream([sys.executable, "-m", "dvc", "push"], root, on_line)
    if pushed.returncode != 0:
        raise PublishFailed("`dvc push` failed (is a default DVC remote configured? "
                            "`dvc remote add -d NAME URL`):\n" + "\n".join(pushed.tail[-20:]))
    return commit_to_branch(root, branch, result_files(root), message)


def result_files(root: Path) -> list[str]:
    """dvc.yaml, dvc.lock, params.yaml, git-tracked outs (metrics, plots) and the .gitignore
    files DVC keeps for cached outs: what a commit needs to reproduce and compare the run."""
    from dvc.repo import Repo

    files = {"dvc.yaml", "dvc.lock", DEFAULT_PARAMS_FILE}
    with Repo(str(root)) as repo:
        for out in repo.index.outs:
            path = Path(out.fs_path).relative_to(root)
            files.add(str(path.parent / ".gitignore") if out.use_cache else str(path))
    return sorted(f for f in files if (root / f).exists())


def commit_to_branch(root: Path, branch: str, files: list[str], message: str) -> str:
    if _git(root, "symbolic-ref", "-q", "--short", "HEAD", check=False) == branch:
        raise PublishFailed(f"`{branch}` is the checked-out branch: publish to another branch "
                            "(it is updated without a checkout), or commit by hand.")
    ref = f"refs/heads/{branch}"
    tip = _git(root, "rev-parse", "--verify", "-q", ref, check=False)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if has_commits(root):
            _git(root, "read-tree", "HEAD", env=env)
        _git(root, "add", "--", *files, env=env)
        tree = _git(root, "write-tree", env=env)
    parent = tip or (_git(root, "rev-parse", "HEAD") if has_commits(root) else "")
    if parent and _git(root, "rev-parse", f"{parent}^{{tree}}") == tree:
        return parent
    commit = _git(root, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)
    _git(root, "update-ref", ref, commit, *([tip] if tip else []))
    return commit


def _git(root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          env={**dvc_env(), **(env or {})})
    if check and done.returncode != 0:
        raise PublishFailed(f"`git {' '.join(args[:3])}` failed in {root}: "
                            f"{(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()
