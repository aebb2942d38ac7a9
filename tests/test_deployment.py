"""A real local Prefect server on 127.0.0.1, a served deployment on a short interval schedule,
a work-pool deployment with the cron from params.yaml; everything stopped, bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.shared import REPO
from tests.prefect_support import BIN, dvc_status, free_port, make_project, prefect_env

SERVER_START_S = 180
FIRST_RUN_S = 300
STOP_S = 60
FLOW = "warmstart-pipeline"


class Process:
    """A subprocess in its own process group, output in a log file, stopped with SIGINT."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = open(log, "w")  # noqa: SIM115 -- closed in stop()
        self.popen = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.handle,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text()[-4000:]

    def stop(self) -> int | None:
        """SIGINT to the group, as Ctrl-C would; return the exit code (None: had to kill)."""
        code = self.popen.poll()
        if code is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                code = self.popen.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.handle.close()
        return code


def wait_until(check, timeout: float, what: str, process: Process) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert process.popen.poll() is None, f"{what}: process died:\n{process.tail()}"
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s:\n{process.tail()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **prefect_env(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_UI_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    process = Process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                       "--port", str(port)], env, tmp_path / "server.log")
    try:
        wait_until(lambda: healthy(api), SERVER_START_S, "server health", process)
        yield api, env
    finally:
        code = process.stop()
    assert code is not None, f"server did not stop on SIGINT:\n{process.tail()}"


def healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def completed_scheduled_runs(api: str, deployment: str) -> list[dict]:
    found = httpx.get(f"{api}/deployments/name/{FLOW}/{deployment}", timeout=10)
    if found.status_code != 200:
        return []
    runs = httpx.post(f"{api}/flow_runs/filter", timeout=10, json={
        "deployments": {"id": {"any_": [found.json()["id"]]}}}).json()
    failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
    assert not failed, f"scheduled run failed: {failed[0]['state']}"
    return [r for r in runs if r["auto_scheduled"] and r["state_type"] == "COMPLETED"]


def test_served_deployment_runs_on_schedule(server, tmp_path: Path) -> None:
    api, env = server
    project = make_project(tmp_path, stages=["ingest"])
    serving = Process([sys.executable, "-m", "flows.deploy", "serve", "--project",
                       str(project), "--name", "every-5s", "--interval", "5"], env,
                      tmp_path / "serve.log")
    try:
        runs = wait_until(lambda: completed_scheduled_runs(api, "every-5s"), FIRST_RUN_S,
                          "a completed scheduled run", serving)
    finally:
        code = serving.stop()
    assert code is not None, f"serve did not stop on SIGINT:\n{serving.tail()}"
    assert runs[0]["name"].startswith("data ") and "ingest" in runs[0]["name"]
    assert (project / "data" / "raw" / "train" / "cats").is_dir()
    assert "up to date" in dvc_status(project)

    # the work-pool deployment: registered with params.yaml's cron, ready for a worker
    subprocess.run([str(BIN / "prefect"), "work-pool", "create", "warmstart-test", "--type",
                    "process"], env=env, check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "flows.deploy", "deploy", "--pool", "warmstart-test",
                    "--project", str(project)], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=180)
    deployment = httpx.get(f"{api}/deployments/name/{FLOW}/nightly", timeout=10).json()
    schedule = deployment["schedules"][0]["schedule"]
    assert (schedule["cron"], schedule["timezone"]) == ("0 2 * * *", "UTC")
    assert deployment["work_pool_name"] == "warmstart-test"
    assert deployment["parameters"]["project"] == str(project)
    assert deployment["entrypoint"] == "flows/pipeline.py:pipeline"
    assert str(REPO) in str(deployment["pull_steps"])  # a worker runs this checkout's code


def test_ctrl_c_stops_serve_through_the_runners_sigterm_shutdown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT is re-sent as SIGTERM, which Prefect's runner handles from its own loop (left to
    asyncio's KeyboardInterrupt, serve under load kept starting runs for over 60 s)."""
    from flows import deploy

    sent, installed = [], {}
    monkeypatch.setattr(deploy.os, "kill", lambda pid, signum: sent.append((pid, signum)))
    monkeypatch.setattr(deploy.signal, "signal",
                        lambda signum, handler: installed.setdefault(signum, handler))
    monkeypatch.setattr(deploy.pipeline, "serve", lambda **kwargs: None)
    deploy.serve(Path("."), "test", [], {})
    installed[signal.SIGINT](signal.SIGINT, None)
    assert sent == [(os.getpid(), signal.SIGTERM)]
