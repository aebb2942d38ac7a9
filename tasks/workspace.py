"""The workspace around a flow run: a lock serializing runs, param overrides, publishing.

* :func:`workspace_lock` serializes pipeline runs in one checkout (an ``fcntl.flock`` on
  ``.dvc/tmp/warmstart-flow.lock``; the kernel drops it when the process dies).
* :func:`apply_overrides` changes ``params.yaml`` the way ``dvc exp run -S`` does (its override
  forms and YAML values, comments kept), after validating the result with
  ``warmstart.config.params``.
* :func:`publish` pushes DVC outputs to the default remote (`dvc push`) and commits ``dvc.lock``,
  params, metrics and plots on a git branch from a temporary `git worktree` (porcelain only),
  without touching the checked-out branch, the index or the working tree.
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
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

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
from warmstart.versions import locked_stages

LOCK_FILE = Path(".dvc") / "tmp" / "warmstart-flow.lock"
OVERRIDE_HINT = "Override existing keys only, as SECTION.KEY=VALUE (e.g. finetune.epochs=10)."


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


def parse_set_params(items: list[str]) -> dict[str, str | None]:
    """``["a.b=1", "c.d=x=y", "~e.f"]`` (command line `-S`) ->
    ``{"a.b": "1", "c.d": "x=y", "~e.f": None}``."""
    parsed: dict[str, str | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key.strip() or not (sep or key.startswith("~")):
            raise ParamsError(item, "is not KEY=VALUE", "Write e.g. -S finetune.epochs=10.")
        parsed[key.strip()] = value if sep else None
    return parsed


def apply_overrides(root: Path, overrides: Mapping[str, Any] | None) -> Params:
    """Apply overrides to params.yaml like `dvc exp run -S`; return the validated params.

    DVC has no public interface that applies `-S` without running the pipeline, so its
    semantics (Hydra's override forms, YAML values) are applied here: :func:`set_param` on
    a round-trip load of params.yaml, written back the way `dvc exp run -S` writes it (comments
    and key order kept). The new file is written and validated beside params.yaml and renamed
    into place only when every override applies and every value passes
    ``warmstart.config.params``: a bad override changes nothing.
    """
    params_file = root / DEFAULT_PARAMS_FILE
    patterns = override_patterns(overrides)
    if not patterns:
        return _validated(params_file, root)
    document = YAML()  # round trip, as DVC's own params.yaml updates
    data = document.load(params_file.read_text())
    for pattern in patterns:
        set_param(data, pattern)
    with atomic_path(params_file, suffix=".yaml") as tmp:
        with open(tmp, "w") as handle:
            document.dump(data, handle)
        params = _validated(tmp, root)
    return params


def set_param(data: dict, pattern: str) -> None:
    """One `dvc exp run -S` override on the params mapping: ``key=value`` changes an existing
    key, ``+key=value`` adds a new one, ``++key=value`` adds or changes, ``~key`` deletes."""
    target, _, text = pattern.partition("=")
    prefix = target[:len(target) - len(target.lstrip("+~"))]
    key = target[len(prefix):]
    *parents, name = key.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    problem = _override_problem(prefix, key, pattern, node, name)
    if problem:
        raise ParamsError(pattern, f"cannot be applied: {problem}", OVERRIDE_HINT)
    if prefix == "~":
        del node[name]
    else:
        node[name] = parse_value(pattern, text)


def _override_problem(prefix: str, key: str, pattern: str, node: Any, name: str) -> str:
    """Hydra's (so `dvc exp run -S`'s) refusals, in its words; "" when the override applies."""
    present = isinstance(node, dict) and name in node
    if prefix not in ("", "+", "++", "~") or not key or not name:
        return f"'{pattern}' is not an override (KEY=VALUE, +KEY=VALUE, ++KEY=VALUE or ~KEY)"
    if prefix == "" and not present:
        return f"Could not override '{key}'.\nTo append to your config use +{pattern}"
    if not isinstance(node, dict):
        return f"Could not {'delete from' if prefix == '~' else 'append to'} config: " \
               f"'{key.rpartition('.')[0]}' is not a mapping in params.yaml"
    if prefix == "+" and present:
        return f"Could not append to config. An item is already at '{key}'"
    if prefix == "~" and not present:
        return f"Could not delete from config. '{key}' does not exist"
    return ""


def parse_value(pattern: str, text: str) -> Any:
    """An override's value with YAML 1.2 semantics (``10`` int, ``1e-3`` float, ``true``, ``null``,
    ``[1, 2]``, ``{a: 1}``, quoted or plain strings); empty and dates stay text, as in Hydra."""
    try:
        value = YAML(typ="safe", pure=True).load(text) if text else ""
    except YAMLError as exc:
        raise ParamsError(pattern, f"cannot be applied: {text!r} is not a YAML value "
                          f"({getattr(exc, 'problem', None) or exc})", OVERRIDE_HINT) from exc
    return text if isinstance(value, date) else value


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
    """dvc.yaml, dvc.lock, params.yaml, the git-tracked outs (metrics, plots) and the
    .gitignore files DVC keeps for cached outs: what a commit needs to reproduce and compare
    the run. Outs come from dvc.lock; git itself says which are cached (ignored) by DVC."""
    outs = sorted({out["path"] for entry in locked_stages(root).values()
                   for out in entry.get("outs", [])})
    ignored = set(_git(root, "check-ignore", "--", *outs, check=False).splitlines()) if outs \
        else set()
    files = {"dvc.yaml", "dvc.lock", DEFAULT_PARAMS_FILE}
    files |= {str(Path(out).parent / ".gitignore") if out in ignored else out for out in outs}
    return sorted(f for f in files if (root / f).exists())


def commit_to_branch(root: Path, branch: str, files: list[str], message: str) -> str:
    """Commit ``files`` (as they are in the working tree) on ``branch``, created from HEAD if
    new, in a temporary `git worktree` that checks nothing out: the user's working tree, index
    and checked-out branch stay as they are. Returns the commit (the tip if nothing changed)."""
    if _git(root, "branch", "--show-current") == branch:
        raise PublishFailed(f"`{branch}` is the checked-out branch: publish to another branch "
                            "(it is updated without a checkout), or commit by hand.")
    if not has_commits(root):
        raise PublishFailed("The project has no commit yet: commit it once (the results branch "
                            "starts from HEAD), then publish.")
    exists = bool(_git(root, "branch", "--list", branch))
    _git(root, "worktree", "prune")  # forget worktrees of publishes killed half-way
    with tempfile.TemporaryDirectory(prefix="warmstart-publish-") as tmp:
        work = Path(tmp) / "worktree"
        _git(root, "worktree", "add", "--quiet", "--no-checkout",
             *([str(work), branch] if exists else ["-b", branch, str(work), "HEAD"]))
        try:
            return _commit_in(work, root, files, message)
        finally:
            _git(root, "worktree", "remove", "--force", str(work), check=False)


def _commit_in(work: Path, root: Path, files: list[str], message: str) -> str:
    _git(work, "reset", "--quiet")  # the index of the branch tip; its files stay unchecked out
    for name in files:
        source, target = root / name, work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    _git(work, "add", "--", *files)
    if _git(work, "diff", "--cached", "--name-only"):
        # no hooks: a results commit in a data-less temporary worktree (like the former
        # commit-tree); hooks of the user's checkout stay for the user's own commits
        _git(work, "commit", "--quiet", "--no-verify", "-m", message)
    return _git(work, "rev-parse", "HEAD")


def _git(root: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          env=dvc_env())
    if check and done.returncode != 0:
        raise PublishFailed(f"`git {' '.join(args[:3])}` failed in {root}: "
                            f"{(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()
