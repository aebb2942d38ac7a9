"""One Prefect task per DVC stage: skip it when DVC says it is up to date, else `dvc repro` it.

The task never calls a stage function itself: `dvc repro --single-item <stage>` runs the
stage's cmd from dvc.yaml (`python -m warmstart <stage>`, the function in warmstart/stages/)
and records what ran in dvc.lock, exactly as a hand-run `dvc repro` does.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from tasks.dvcops import StageOutcome, locked_outs, repro_stage, stage_changes
from warmstart.config.params import OrchestrationParams

#: Stages that train: a retry reruns them from their inputs (see `retry_notice`).
TRAINING_STAGES = ("transfer", "finetune")
#: "12:00:01 WARNING warmstart.x: message" -- the stage CLI's log format.
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
SKIPPED = "Skipped"
#: TensorFlow's start-up chatter on CPU-only machines (logged at DEBUG, not as errors).
TF_NOISE = re.compile(r"Unable to register cu(DNN|FFT|BLAS) factory|"
                      r"cpu_feature_guard|TF_ENABLE_ONEDNN_OPTS|Could not find cuda drivers")


def stage_task(stage: str, orchestration: OrchestrationParams):
    """The `run_stage` task with this stage's name and retry settings from params.yaml."""
    return run_stage.with_options(
        name=f"stage-{stage}", task_run_name=stage,
        retries=orchestration.retries_for(stage),
        retry_delay_seconds=orchestration.retry_delay_seconds)


# DVC is the cache: Prefect must never answer from a cached result of its own.
@task(cache_policy=NO_CACHE, persist_result=False)
def run_stage(project: str, stage: str) -> StageOutcome | State:
    logger = get_run_logger()
    root = Path(project)
    start = time.perf_counter()
    reasons = stage_changes(root, stage)
    if not reasons:
        logger.info("%s: skipped, up to date (DVC: deps, params and outs unchanged)", stage)
        outcome = StageOutcome(stage, "skipped", time.perf_counter() - start,
                               outs=locked_outs(root, stage))
        return Completed(name=SKIPPED, message=f"{stage} is up to date", data=outcome)
    if runtime.task_run.run_count > 1:
        logger.warning(retry_notice(stage, runtime.task_run.run_count))
    logger.info("%s: running, because DVC reports:\n  %s", stage, "\n  ".join(reasons[:20]))
    repro_stage(root, stage, lambda line: forward(logger, line))
    seconds = time.perf_counter() - start
    logger.info("%s: done in %.1f s", stage, seconds)
    return StageOutcome(stage, "ran", seconds, reasons, locked_outs(root, stage))


def retry_notice(stage: str, attempt: int) -> str:
    """Say plainly what a retry does: a training stage resumes from its per-epoch backup
    (warmstart/modeling/training.py, EpochBackup); any other stage runs again from its (unchanged,
    DVC-tracked) inputs with the same seed."""
    what = (f"resuming '{stage}' after its last completed epoch from the per-epoch backup in "
            "paths.checkpoints (the log says 'resuming ... at epoch k'); without a backup of "
            "this same run (same params, inputs and code) it trains from its first epoch"
            if stage in TRAINING_STAGES else f"running '{stage}' again from its inputs")
    return (f"{stage}: attempt {attempt}: {what}. Outputs are written atomically, so the failed "
            "attempt left no partial output behind.")


def forward(logger: logging.LoggerAdapter, line: str) -> None:
    """One line of `dvc repro` output into the Prefect run log, at the stage's log level."""
    match = LOG_LINE.match(line)
    level = logging.getLevelName(match.group(1)) if match else logging.INFO
    if TF_NOISE.search(line):
        level = logging.DEBUG
    elif line.startswith("ERROR"):
        level = logging.ERROR
    elif line.startswith("WARNING"):
        level = logging.WARNING
    logger.log(level, line)
