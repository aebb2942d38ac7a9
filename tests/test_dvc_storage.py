"""DVC's storage of the outputs: linked from the cache (not copied), pushed and pulled.

With ``cache.type`` hardlink or symlink a workspace output *is* the cache file, so a stage that
wrote into an output in place would silently change the cached version of an earlier run. The
stages write new files and folders and rename them into place (``warmstart/atomic.py``): after a
run, a param change and a second run over the linked outputs (evaluate, export, model_card and
gate replace theirs, the gate its ``persist`` promotion), every cache object must still hash to
its name and the first run's version must check out clean. A remote on a local folder then
carries the outputs to a fresh clone, byte for byte, with nothing to re-run. Minutes (three
`dvc repro`): slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers.commands import make_dvc_project, run_command
from tests.helpers.images import make_dataset
from tests.helpers.project import DEFAULT_PER_CLASS, tiny_params

UP_TO_DATE = "Data and pipelines are up to date."


def commit(work: Path, message: str) -> None:
    run_command(["git", "add", "-A"], work)
    run_command(["git", "commit", "-qm", message], work)


@pytest.fixture(scope="module")
def linked_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline run twice (``evaluate.threshold`` changed in between) with the
    repository's cache config, outputs linked (``dvc repro`` links file outputs; DVC 3.67 leaves
    the folders it has just cached as copies until ``dvc checkout --relink``), each run
    committed."""
    root = tmp_path_factory.mktemp("storage")
    source = make_dataset(root / "source", per_class=DEFAULT_PER_CLASS)
    work = make_dvc_project(root / "project", tiny_params(source))
    shutil.copy(Path(__file__).parents[1] / ".dvc" / "config", work / ".dvc" / "config")
    run_command(["dvc", "repro"], work)
    run_command(["dvc", "checkout", "--relink"], work)
    commit(work, "first run")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["threshold"] = 0.4
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = run_command(["dvc", "repro"], work)
    assert "Running stage 'export'" in second and "Running stage 'gate'" in second
    run_command(["dvc", "checkout", "--relink"], work)
    commit(work, "second run")
    return work


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cache_objects(work: Path) -> list[Path]:
    return [p for p in (work / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()]


def output_files(work: Path) -> dict[str, bytes]:
    """Every file of every cached output of dvc.lock, by path relative to the project."""
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    files = {}
    for out in outs:
        target = work / out
        for file in ([target] if target.is_file() else sorted(target.rglob("*"))):
            if file.is_file():
                files[str(file.relative_to(work))] = file.read_bytes()
    return files


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_linked_outputs_leave_the_cache_intact(linked_project: Path) -> None:
    work = linked_project
    assert "hardlink" in run_command(["dvc", "config", "cache.type"], work)
    assert UP_TO_DATE in run_command(["dvc", "status"], work)
    status = json.loads(run_command(["dvc", "data", "status", "--json"], work))
    assert not {"uncommitted", "not_in_cache", "unknown"} & set(status), status
    for model in ("finetune", "promoted"):
        file = work / "models" / model / "model.keras"
        assert file.stat().st_nlink > 1 or file.is_symlink(), f"{file} is a copy, not a link"
    objects = cache_objects(work)
    assert len(objects) > 50  # both runs' objects: data, caches, models, two exports
    for obj in objects:  # files/md5/ab/cdef...[.dir]: the name is the content's md5
        assert obj.parent.name + obj.name.removesuffix(".dir") == md5_of(obj), obj
    assert "Running stage" not in run_command(["dvc", "repro"], work)
    # The first run's version, from the same cache: restored as it was, nothing to re-run.
    run_command(["git", "checkout", "-q", "HEAD~1"], work)
    run_command(["dvc", "checkout"], work)
    assert UP_TO_DATE in run_command(["dvc", "status"], work)
    run_command(["git", "checkout", "-q", "-"], work)
    run_command(["dvc", "checkout"], work)
    assert UP_TO_DATE in run_command(["dvc", "status"], work)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_remote_round_trip_reproduces_the_outputs_in_a_fresh_clone(
        linked_project: Path, tmp_path: Path) -> None:
    work, remote, clone = linked_project, tmp_path / "remote", tmp_path / "clone"
    run_command(["dvc", "remote", "add", "-d", "store", str(remote)], work)
    commit(work, "remote")
    run_command(["dvc", "push"], work)
    run_command(["git", "clone", "-q", str(work), str(clone)], tmp_path)
    assert not (clone / "models" / "finetune").exists()  # only its .gitignore came with git
    run_command(["dvc", "pull"], clone)
    ours, theirs = output_files(clone), output_files(work)
    assert ours.keys() == theirs.keys() and len(ours) > 20
    assert [p for p in ours if ours[p] != theirs[p]] == []
    assert UP_TO_DATE in run_command(["dvc", "status"], clone)
    assert "Running stage" not in run_command(["dvc", "repro"], clone)
    assert os.listdir(remote / "files" / "md5")
