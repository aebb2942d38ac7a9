"""The `warmstart-pipeline` Prefect flow: every dvc.yaml stage, in DVC's order, as a task.

Who drives: **DVC decides what runs, Prefect decides order, retries and what you see.** Each
task asks DVC whether its stage is up to date (skipped, shown as `Skipped` in Prefect) or runs
exactly that stage with `dvc repro --single-item`, so the stage function, `dvc.lock` and the
metrics are the ones a hand-run `dvc repro` gives. After the run `dvc status` must be clean.

Run it once (ephemeral Prefect unless PREFECT_API_URL points to a server):

    uv run --frozen python -m flows.pipeline -S finetune.epochs=10
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, runtime

from tasks.dvcops import (
    StageOutcome,
    check_project,
    describe_status,
    pipeline_status,
    stage_order,
)
from tasks.report import publish_artifacts
from tasks.stages import stage_task
from tasks.workspace import (
    apply_overrides,
    override_patterns,
    parse_set_params,
    publish,
    workspace_lock,
)
from warmstart.config.params import DEFAULT_PARAMS_FILE, Params, ParamsError
from warmstart.errors import WarmstartError
from warmstart.versions import locked_stages

FLOW_NAME = "warmstart-pipeline"
DEFAULT_BRANCH = "warmstart/runs"


class DvcNotClean(WarmstartError):
    """`dvc status` still reports changes after every stage ran: dvc.lock would not be true."""


def initial_run_name() -> str:
    """'<data source> <overrides>' at the start; the end of the run renames it."""
    parameters = runtime.flow_run.parameters
    overrides = parameters.get("overrides") or {}
    source = overrides.get("data.source") or _params_value(parameters.get("project", "."),
                                                           "data", "source")
    changed = " ".join(override_patterns(overrides)) or "params.yaml as committed"
    return f"{Path(str(source)).name or source} · {changed}"


def _params_value(project: str, section: str, key: str) -> Any:
    try:
        raw = yaml.safe_load((Path(project) / DEFAULT_PARAMS_FILE).read_text()) or {}
        return raw[section][key]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "?"


@flow(name=FLOW_NAME, flow_run_name=initial_run_name, validate_parameters=True)
def pipeline(project: str = ".", overrides: dict[str, Any] | None = None,
             publish_results: bool = False, publish_branch: str = DEFAULT_BRANCH,
             wait_for_lock_seconds: float = 3600.0) -> dict[str, Any]:
    """Bring the warmstart DVC pipeline in ``project`` up to date.

    Args:
        project: the warmstart checkout (DVC project); relative to the working directory.
        overrides: params for this run, ``{"section.key": value}``, applied to params.yaml
            like `dvc exp run -S` (they stay there and dvc.lock records them).
        publish_results: afterwards `dvc push` the outputs to the default DVC remote and
            commit dvc.lock, params and metrics to ``publish_branch`` (off by default).
        wait_for_lock_seconds: how long to wait for another run in the same workspace.
    """
    logger = get_run_logger()
    root = check_project(Path(project))
    with workspace_lock(root, wait_for_lock_seconds, logger.warning,
                        owner=f"flow run {runtime.flow_run.name}"):
        summary = run_stages(root, overrides)
        if publish_results:
            summary["published"] = publish(root, publish_branch, summary["name"],
                                           logger.info)
            logger.info("Published: DVC outputs pushed, results committed as %s on %s",
                        summary["published"][:10], publish_branch)
    return summary


def run_stages(root: Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    logger = get_run_logger()
    params = apply_overrides(root, overrides)
    if overrides:
        logger.info("params.yaml updated for this run: %s", " ".join(override_patterns(overrides)))
    order = stage_order(root)
    check_stage_retries(params, order)
    logger.info("Stages, in DVC's order: %s", " -> ".join(order))
    outcomes: list[StageOutcome] = []
    failed = ""
    try:
        for stage in order:
            failed = stage
            state = stage_task(stage, params.orchestration)(str(root), stage, return_state=True)
            outcomes.append(state.result())  # a failed stage raises its error here
        failed = ""
    finally:
        name = final_run_name(root, params, outcomes, overrides, failed)
        rename_flow_run(name)
        report(root, params, outcomes, name)
    check_clean(root)
    return {"name": name, "ran": [o.stage for o in outcomes if o.status == "ran"],
            "skipped": [o.stage for o in outcomes if o.status == "skipped"],
            "dataset": dataset_version(root, params), "overrides": override_patterns(overrides)}


def check_stage_retries(params: Params, order: list[str]) -> None:
    for stage in params.orchestration.stage_retries:
        if stage not in order:
            raise ParamsError(f"orchestration.stage_retries.{stage}", "is not a dvc.yaml stage",
                              f"Stages: {', '.join(order)}.")


def check_clean(root: Path) -> None:
    status = pipeline_status(root)
    if status:
        lines = [f"{stage}: {line}" for stage, entries in status.items()
                 for line in describe_status(entries)]
        raise DvcNotClean("After the run `dvc status` still reports changes (did an input "
                          "change during the run?):\n  " + "\n  ".join(lines[:20])
                          + "\nRun the flow again to bring them up to date.")


def dataset_version(root: Path, params: Params) -> str:
    """Short DVC hash of ``paths.raw`` as recorded in dvc.lock: the dataset this run used."""
    for entry in locked_stages(root).values():
        for out in entry.get("outs", []):
            if out.get("path") == params.paths.raw:
                return (out.get("md5") or out.get("hash") or "?")[:8]
    return "?"


def final_run_name(root: Path, params: Params, outcomes: list[StageOutcome],
                   overrides: dict[str, Any] | None, failed: str) -> str:
    changed = " ".join(override_patterns(overrides)) or "params.yaml as committed"
    ran = [o.stage for o in outcomes if o.status == "ran"]
    did = (f"FAILED at {failed}" if failed else f"ran {', '.join(ran)}" if ran
           else "all up to date")
    return f"data {dataset_version(root, params)} · {changed} · {did}"


def report(root: Path, params: Params, outcomes: list[StageOutcome], name: str) -> None:
    """The run's artifacts. Their failure is logged as an error but neither hides a stage's
    error nor fails a run whose stages all succeeded."""
    try:
        publish_artifacts(root, params, outcomes, name)
    except Exception as exc:
        get_run_logger().error("Could not create the run's artifacts: %s", exc, exc_info=True)


def rename_flow_run(name: str) -> None:
    """Give the flow run the name that says what ran (observability only)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(runtime.flow_run.id, name=name)
    except Exception as exc:  # a name is not worth failing a finished run for
        get_run_logger().warning("Could not rename the flow run to %r: %s", name, exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline", description="Run the warmstart pipeline as a Prefect "
        "flow: up-to-date DVC stages are skipped, changed ones reproduced.")
    parser.add_argument("--project", default=".", help="DVC project (default: %(default)s)")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param for this run, like `dvc exp run -S`")
    parser.add_argument("--publish", action="store_true", help="dvc push, then commit "
                        "dvc.lock/params/metrics to --branch")
    parser.add_argument("--branch", default=DEFAULT_BRANCH, help="(default: %(default)s)")
    parser.add_argument("--wait-for-lock", type=float, default=3600.0, metavar="SECONDS")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_set_params(args.set_param)
        summary = pipeline(project=args.project, overrides=overrides or None,
                           publish_results=args.publish, publish_branch=args.branch,
                           wait_for_lock_seconds=args.wait_for_lock)
    except WarmstartError as exc:
        logging.getLogger(FLOW_NAME).error("%s", exc)
        return 1
    logging.getLogger(FLOW_NAME).info("%s", summary["name"])
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
