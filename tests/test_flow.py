"""The Prefect flow on tiny synthetic data (isolated Prefect via `prefect_test_harness`):
all stages run, a re-run skips them all, a param change re-runs only the affected stages,
`dvc status` is clean after each run, a failing stage fails the flow readably.

They run in the suite's own pytest process, in any order: the closed-stream crash that once
isolated them is fixed at its cause (tests/conftest.py, `pytest_configure`)."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.shared import REPO
from tests.prefect_support import (
    commit_all,
    dvc_status,
    init_repo,
    make_project,
    prefect_env,
    sh,
    stages_through,
)


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory):
    """One temporary Prefect server (sqlite in tmp) for the module, PREFECT_HOME in tmp.

    Prefect sets up its logging once per process, on its first import: here, with
    prefect_env()'s settings (its console handler on the real stderr, captured by pytest's fd
    capture), rather than in the middle of whichever test first imports the flow."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in prefect_env(home).items():
            patch.setenv(key, value)
        from prefect import flow  # noqa: F401 -- the import that runs Prefect's logging setup

        with temporary_settings(updates={PREFECT_HOME: home}), \
                prefect_test_harness(server_startup_timeout=180):
            yield


def run_flow(project: Path, **kwargs):
    """Run the flow; return (summary, flow run name) or raise the flow's error."""
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline

    state = pipeline(project=str(project), return_state=True, **kwargs)
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(state.state_details.flow_run_id).name
    return state.result(), name


def artifact(key: str):
    from prefect.artifacts import Artifact

    return Artifact.get(key)


def locked_params(project: Path, stage: str) -> dict:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return lock["stages"][stage]["params"]["params.yaml"]


def test_flow_runs_skips_and_reruns_only_changed_stages(prefect, tmp_path: Path) -> None:
    stages = stages_through("evaluate")
    assert stages[0] == "ingest" and {"validate", "transfer", "finetune"} < set(stages)
    project = make_project(tmp_path, stages=stages)
    first, name = run_flow(project)
    assert first["ran"] == stages and first["skipped"] == []
    dry = sh([sys.executable, "-m", "dvc", "repro", "--dry", "-f"], project)
    assert re.findall(r"Running stage '(\w+)'", dry) == stages  # the flow's order = DVC's
    assert "up to date" in dvc_status(project)
    assert name == first["name"] and f"data {first['dataset']}" in name and "ran ingest" in name
    metrics = artifact("warmstart-metrics").data
    assert "| finetune | ran |" in metrics and "metrics/evaluate.json" in metrics
    assert "Validation passed" in artifact("warmstart-validation").data
    assert "- Confusion matrix, fine-tuned model, test split" in artifact("warmstart-plots").data
    commit_all(project, "first run")

    second, name = run_flow(project)
    assert second["ran"] == [] and second["skipped"] == stages
    assert "all up to date" in name
    assert "up to date" in dvc_status(project)

    remote = tmp_path / "remote"
    sh([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], project)
    commit_all(project, "remote")
    third, name = run_flow(project, overrides={"finetune.epochs": 3}, publish_results=True,
                           publish_branch="runs")
    assert third["ran"] == ["finetune", "evaluate"], third
    assert "finetune.epochs=3" in name and "ran finetune, evaluate" in name
    assert "up to date" in dvc_status(project)
    assert yaml.safe_load((project / "params.yaml").read_text())["finetune"]["epochs"] == 3
    assert locked_params(project, "finetune")["finetune"]["epochs"] == 3
    diff = artifact("warmstart-metrics").data
    assert "| metrics/finetune.json | epochs | 5 | 6 | 1 |" in diff, diff
    assert "finetune.epochs | 2 | 3 |" in diff
    check_published(project, remote, branch="runs")


def check_published(project: Path, remote: Path, branch: str) -> None:
    """DVC outputs in the remote, results committed on ``branch``, the checkout untouched."""
    assert any(remote.rglob("*")), "dvc push sent nothing to the remote"
    published = sh(["git", "show", f"{branch}:dvc.lock"], project)
    assert yaml.safe_load(published) == yaml.safe_load((project / "dvc.lock").read_text())
    assert "finetune.json" in sh(["git", "show", "--stat", branch], project)
    assert sh(["git", "rev-parse", "--abbrev-ref", "HEAD"], project).strip() == "main"
    assert sh(["git", "diff", "--cached", "--name-only"], project).strip() == ""


def test_failing_stage_fails_the_flow_and_keeps_earlier_outputs(prefect,
                                                                tmp_path: Path) -> None:
    from tasks.dvcops import StageFailed, stage_changes

    project = make_project(tmp_path, stages=["ingest", "validate", "preprocess"])
    (tmp_path / "source" / "train" / "cats" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(StageFailed) as failure:
        run_flow(project)
    message = str(failure.value)
    assert message.startswith("stage 'validate' failed:")
    assert "Data validation failed" in message and "train/cats/bad.jpg" in message
    assert "Traceback" not in message
    assert (project / "data" / "raw" / "train" / "cats" / "bad.jpg").is_file()
    assert stage_changes(project, "ingest") == []  # ingest's output and lock entry intact
    assert not (project / "data" / "processed").exists()
    rows = artifact("warmstart-validation").data
    assert "train/cats/bad.jpg" in rows and "decodable" in rows


def test_retry_reruns_a_failed_stage_from_params_settings(prefect, tmp_path: Path) -> None:
    """A transient failure (first attempt dies) is retried as `orchestration` says."""
    flaky = {"cmd": "python flaky.py", "deps": ["flaky.py"], "outs": ["out.txt"]}
    project = make_project(tmp_path, stages=[], extra_stages={"flaky": flaky},
                           orchestration={"retries": 1, "retry_delay_seconds": 0,
                                          "stage_retries": {}})
    (project / "flaky.py").write_text(
        "import pathlib, sys\n"
        "marker = pathlib.Path('.attempted')\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    sys.exit('transient failure')\n"
        "pathlib.Path('out.txt').write_text('ok')\n")
    summary, _ = run_flow(project)
    assert summary["ran"] == ["flaky"]
    assert (project / "out.txt").read_text() == "ok"
    assert "up to date" in dvc_status(project)


def test_bad_override_changes_nothing(prefect, tmp_path: Path) -> None:
    from warmstart.config.params import ParamsError

    project = make_project(tmp_path, stages=["ingest"])
    before = (project / "params.yaml").read_text()
    with pytest.raises(ParamsError, match="finetune.epochs"):
        run_flow(project, overrides={"finetune.epochs": -1})
    with pytest.raises(ParamsError, match="finetune.epochz"):
        run_flow(project, overrides={"finetune.epochz": 3})
    assert (project / "params.yaml").read_text() == before
    assert not (project / "data").exists()


def test_overlapping_run_waits_then_fails_clearly(prefect, tmp_path: Path) -> None:
    from tasks.dvcops import WorkspaceBusy
    from tasks.workspace import LOCK_FILE

    project = make_project(tmp_path, stages=["ingest"])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(project / LOCK_FILE)!r}, 'a+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\n"
         "f.write('{\"pid\": 4242, \"owner\": \"flow run other\"}'); f.flush()\n"
         "print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkspaceBusy, match="flow run other"):
            run_flow(project, wait_for_lock_seconds=2)
    finally:
        holder.kill()
        holder.wait()
    assert not (project / "data").exists()
    summary, _ = run_flow(project)  # the lock died with its holder
    assert summary["ran"] == ["ingest"]


# --- no Prefect run needed below ------------------------------------------------------------

def test_workspace_lock_serializes_and_reports_the_wait(tmp_path: Path) -> None:
    from tasks.workspace import LOCK_FILE, workspace_lock

    (tmp_path / ".dvc").mkdir()
    waits: list[str] = []
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with workspace_lock(tmp_path, 30, waits.append, owner="first"):
            first_in.set()
            time.sleep(1.0)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with workspace_lock(tmp_path, 30, waits.append, owner="second", poll_seconds=0.1):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    assert len(waits) == 1 and "first" in waits[0] and str(tmp_path / LOCK_FILE) in waits[0]
    with open(tmp_path / LOCK_FILE) as handle:  # released: anyone can take it now
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_dvc_lock_held_by_another_dvc_process_is_reported(tmp_path: Path) -> None:
    from dvc.lock import make_lock

    from tasks.dvcops import WorkspaceBusy, stage_changes

    project = tmp_path / "p"
    project.mkdir()
    init_repo(project)
    (project / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo hi\n")
    lock = make_lock(str(project / ".dvc" / "tmp" / "lock"), tmp_dir=str(project / ".dvc/tmp"))
    lock.lock()
    try:
        with pytest.raises(WorkspaceBusy, match="held by another DVC process"):
            stage_changes(project, "s")
    finally:
        lock.unlock()


def test_overrides_use_dvc_set_param_semantics_and_keep_comments(tmp_path: Path) -> None:
    from tasks.workspace import apply_overrides, parse_set_params

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "data").mkdir()
    overrides = parse_set_params(["data.source=data", "base.weights=none",
                                  "finetune.epochs=7"])
    params = apply_overrides(tmp_path, overrides)
    assert (params.data.source, params.base.weights, params.finetune.epochs) == (
        "data", "none", 7)
    text = (tmp_path / "params.yaml").read_text()
    assert "# decision threshold of the positive (second) class" in text
    assert yaml.safe_load(text)["finetune"]["epochs"] == 7


def test_set_param_takes_dvc_override_forms_and_yaml_values() -> None:
    """`dvc exp run -S` forms: KEY=VALUE (existing key), +KEY=VALUE (new), ++KEY=VALUE (either),
    ~KEY (delete); values are YAML (1e-3 a float, [1, 2] a list, a date stays text)."""
    from tasks.workspace import set_param
    from warmstart.config.params import ParamsError

    data = {"train": {"lr": 0.1, "seed": 1}, "stage_retries": {}}
    for pattern in ("train.lr=1e-3", "+stage_retries.ingest=2", "++train.tags=[1, 2]",
                    "++train.when=2024-01-01", "~train.seed"):
        set_param(data, pattern)
    assert data == {"train": {"lr": 0.001, "tags": [1, 2], "when": "2024-01-01"},
                    "stage_retries": {"ingest": 2}}
    for pattern, says in (("train.epochz=3", "To append to your config use +train.epochz=3"),
                          ("+train.lr=1", "An item is already at 'train.lr'"),
                          ("~train.nope", "'train.nope' does not exist"),
                          ("train.lr=[1, 2", "is not a YAML value")):
        with pytest.raises(ParamsError, match=re.escape(says)):
            set_param(data, pattern)


def test_retry_notice_says_training_restarts_from_inputs() -> None:
    from tasks.stages import retry_notice

    assert "first epoch" in retry_notice("finetune", 2)
    assert "from its inputs" in retry_notice("preprocess", 2)


def test_cli_runs_flow_with_set_params(prefect, tmp_path: Path) -> None:
    """`python -m flows.pipeline --project P -S key=value` (the acceptance-3 command)."""
    from flows.pipeline import main

    project = make_project(tmp_path, stages=["ingest"])
    assert main(["--project", str(project), "-S", "data.max_extract_bytes=123456789"]) == 0
    assert "max_extract_bytes: 123456789" in (project / "params.yaml").read_text()
    assert "up to date" in dvc_status(project)
    assert main(["--project", str(project), "-S", "nosuch.key=1"]) == 1


@pytest.mark.parametrize(("values", "key"), [
    ({"cron": "0 2 * *"}, "orchestration.cron"),
    ({"timezone": "Mars/Olympus"}, "orchestration.timezone"),
    ({"retries": -1}, "orchestration.retries"),
    ({"stage_retries": {"ingest": -2}}, "orchestration.stage_retries.ingest"),
    ({"retry_delay_seconds": -1}, "orchestration.retry_delay_seconds"),
])
def test_orchestration_params_are_validated(tmp_path: Path, values: dict, key: str) -> None:
    from tests.helpers.project import tiny_params
    from warmstart.config.params import ParamsError, params_from_dict

    raw = tiny_params(tmp_path, orchestration=values)
    with pytest.raises(ParamsError) as error:
        params_from_dict(raw, root=tmp_path)
    assert error.value.key == key


def test_stage_retries_must_name_dvc_stages(tmp_path: Path) -> None:
    from flows.pipeline import check_stage_retries
    from tests.helpers.project import tiny_params
    from warmstart.config.params import ParamsError, params_from_dict

    params = params_from_dict(tiny_params(tmp_path, orchestration={
        "stage_retries": {"finetnue": 2}}), root=tmp_path)
    with pytest.raises(ParamsError, match="finetnue"):
        check_stage_retries(params, ["ingest", "finetune"])
    assert params.orchestration.retries_for("finetune") == params.orchestration.retries


def test_failure_message_keeps_the_stage_error_head_and_dvc_verdict() -> None:
    from tasks.dvcops import ERROR_TAIL_LINES, failure_message

    tail = ["Running stage 'validate':", "12:00:00 ERROR warmstart: validate failed:",
            "Data validation failed: 0 TFDV anomal(y/ies), 99 problem(s).",
            *[f"- problem {i}" for i in range(99)],
            "ERROR: failed to reproduce 'validate': exited with 1"]
    message = failure_message("validate", tail)
    lines = message.splitlines()
    assert lines[1] == "12:00:00 ERROR warmstart: validate failed:"
    assert "Data validation failed" in lines[2]
    assert "ERROR: failed to reproduce 'validate'" in lines[-2]
    assert len(lines) <= ERROR_TAIL_LINES + 2 and "Running stage" not in message


def test_flow_and_tasks_run_from_the_checkout(tmp_path: Path) -> None:
    """flows/ and tasks/ are not installed (only warmstart is): they run from the checkout, the
    working directory on sys.path, as `python -m flows.pipeline` and Prefect's entrypoint
    loading (`serve`, a worker's flow run) put it there."""
    safe = [sys.executable, "-P", "-c"]  # -P: no script folder or cwd added by Python itself
    assert subprocess.run([*safe, "import tasks"], cwd=tmp_path, capture_output=True,
                          timeout=120).returncode != 0, "tasks/ is installed in site-packages"
    load = ("from prefect.flows import load_flow_from_entrypoint\n"
            "print(load_flow_from_entrypoint('flows/pipeline.py:pipeline',"
            " use_placeholder_flow=False).name)")
    loaded = subprocess.run([*safe, load], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert loaded.stdout.strip().endswith("warmstart-pipeline"), loaded.stderr[-3000:]
    usage = sh([sys.executable, "-m", "flows.pipeline", "--help"], REPO)
    assert "python -m flows.pipeline" in usage
