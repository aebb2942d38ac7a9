"""Scheduled deployments of the `warmstart-pipeline` flow, defined in code.

The schedule comes from params.yaml (`orchestration.cron`, `orchestration.timezone`); a run
whose data and params did not change skips every stage, so a nightly schedule retrains only
when something changed.

    # one machine: a long-running process that schedules and runs the flow itself
    uv run --frozen python -m flows.deploy serve

    # Prefect workers: register a deployment on a work pool (then `prefect worker start`)
    uv run --frozen python -m flows.deploy deploy --pool warmstart
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from flows.pipeline import DEFAULT_BRANCH, FLOW_NAME, pipeline
from tasks.dvcops import check_project
from tasks.workspace import parse_set_params
from warmstart.config.params import DEFAULT_PARAMS_FILE, ParamsError, load_params
from warmstart.errors import WarmstartError

logger = logging.getLogger("flows.deploy")

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:pipeline"
DEFAULT_NAME = "nightly"


def schedules(project: Path, cron: str | None = None, interval: float | None = None) -> list:
    """One schedule: ``interval`` seconds if given, else ``cron`` or params' cron."""
    from prefect.schedules import Cron, Interval

    if interval is not None:
        return [Interval(datetime.timedelta(seconds=interval))]
    settings = load_params(project / DEFAULT_PARAMS_FILE).orchestration
    expression = cron or settings.cron
    check_cron(expression, settings.timezone)
    return [Cron(expression, timezone=settings.timezone)]


def check_cron(expression: str, timezone: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=expression, timezone=timezone)
    except ValidationError as exc:
        raise ParamsError("orchestration.cron", f"is {expression!r}, which Prefect rejects: "
                          f"{exc.errors()[0]['msg']}", "Use a standard 5-field cron.") from exc


def flow_parameters(project: str, overrides: dict[str, str | None], publish: bool,
                    branch: str) -> dict[str, Any]:
    return {"project": project, "overrides": overrides or None, "publish_results": publish,
            "publish_branch": branch}


def serve(project: Path, name: str, schedule: list, parameters: dict[str, Any]) -> None:
    """Run until interrupted: schedule runs on the server and execute them here, one at a
    time (`limit=1`; runs from other processes wait on the workspace lock)."""
    signal.signal(signal.SIGINT, stop_on_interrupt)
    pipeline.serve(name=name, schedules=schedule, parameters=parameters, limit=1,
                   description=f"warmstart pipeline in {project}", tags=["warmstart"])


def stop_on_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C stops ``serve`` the way SIGTERM does: Prefect's runner cancels the run in
    progress and its polling loops from its own loop. Left to asyncio's KeyboardInterrupt,
    ``serve`` under load kept starting scheduled runs for over a minute after Ctrl-C
    (tests/test_deployment.py). A second Ctrl-C exits at once (the runner's SIGTERM handler).
    Nothing is logged here: a signal handler must not take the logging lock; the runner logs
    "SIGTERM received, initiating graceful shutdown"."""
    os.kill(os.getpid(), signal.SIGTERM)


def deploy(source: str, pool: str, name: str, schedule: list,
           parameters: dict[str, Any]) -> Any:
    """Register a deployment on work pool ``pool``: a worker fetches ``source`` (this checkout
    or a git URL) and runs the flow there."""
    flow = pipeline.from_source(source=source, entrypoint=ENTRYPOINT)
    return flow.deploy(name=name, work_pool_name=pool, schedules=schedule,
                       parameters=parameters, tags=["warmstart"], build=False, push=False,
                       ignore_warnings=True, print_next_steps=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy",
                                     description=f"Scheduled deployments of `{FLOW_NAME}`.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (("serve", "serve the flow from this process (one machine)"),
                          ("deploy", "register a deployment on a work pool (workers)")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("--project", default=None, help="DVC project the runs work in "
                         "(serve: default this folder; deploy: default the worker's checkout)")
        sub.add_argument("--name", default=DEFAULT_NAME, help="deployment name (%(default)s)")
        when = sub.add_mutually_exclusive_group()
        when.add_argument("--cron", help="cron schedule (default: orchestration.cron)")
        when.add_argument("--interval", type=float, metavar="SECONDS", help="interval schedule")
        sub.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                         help="param overrides for every scheduled run (like dvc exp run -S)")
        sub.add_argument("--publish", action="store_true", help="dvc push + commit results")
        sub.add_argument("--branch", default=DEFAULT_BRANCH)
        if command == "deploy":
            sub.add_argument("--pool", required=True, help="work pool name")
            sub.add_argument("--source", default=str(REPO), help="code location workers "
                             "fetch: a folder or git URL (default: this checkout)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        project = check_project(Path(args.project or "."))
        schedule = schedules(project, args.cron, args.interval)
        run_in = str(project) if args.command == "serve" or args.project else "."
        parameters = flow_parameters(run_in, parse_set_params(args.set_param), args.publish,
                                     args.branch)
        if args.command == "serve":
            serve(project, args.name, schedule, parameters)
        else:
            deployment_id = deploy(args.source, args.pool, args.name, schedule, parameters)
            logger.info("Deployment %s/%s registered (id %s) on pool %r. Start a worker: "
                        "prefect worker start --pool %s", FLOW_NAME, args.name, deployment_id,
                        args.pool, args.pool)
    except WarmstartError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
