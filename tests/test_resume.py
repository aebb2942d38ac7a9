"""A training stage killed with SIGKILL resumes at the next epoch and ends as if never stopped.

Each stage runs as `python -m warmstart ... <stage>` in a subprocess (as `dvc repro` runs it),
first without interruption, then killed right after its log shows epoch k, then re-run. The
re-run must say it resumes at k+1, must not train epochs 1..k again, and must end with the
uninterrupted run's weights (byte for byte), history and metrics.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.files import folder_bytes
from tests.helpers.project import plant_features, prepare_project
from tests.helpers.shared import REPO
from warmstart.config.params import Params, load_params
from warmstart.data.records import Manifest, image_dataset
from warmstart.layout import MODEL_FILE
from warmstart.live import read_history
from warmstart.modeling.feature_cache import feature_dataset, open_features
from warmstart.modeling.model import load_model
from warmstart.modeling.prefix_cache import prefix_dataset
from warmstart.modeling.training import POINTER_FILE, skip_epochs
from warmstart.stages.transfer import run_transfer

TRANSFER_EPOCHS, FINETUNE_EPOCHS = 6, 4


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """A tiny prepared project (data, features and prefix caches), 6 + 4 epochs, with
    ``train.class_weight: balanced`` (Keras' class_weight maps the training data: the resumed
    epochs must still see the uninterrupted run's order and weights)."""
    return prepare_project(tmp_path_factory.mktemp("resume"), upto="features",
                           train={"class_weight": "balanced"},
                           transfer={"epochs": TRANSFER_EPOCHS},
                           finetune={"epochs": FINETUNE_EPOCHS})


def stage_command(params: Params, stage: str) -> list[str]:
    return [sys.executable, "-m", "warmstart", "--params", str(params.root / "params.yaml"),
            stage]


def run_stage(params: Params, stage: str) -> str:
    done = subprocess.run(stage_command(params, stage), cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def kill_after(params: Params, stage: str, line: str) -> str:
    """Run ``stage``; SIGKILL it as soon as its log shows ``line``. Returns the log so far."""
    process = subprocess.Popen(stage_command(params, stage), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    log = []
    for text in process.stdout:
        log.append(text)
        if line in text:
            process.send_signal(signal.SIGKILL)
            break
    process.stdout.close()
    assert process.wait(timeout=600) == -signal.SIGKILL, "".join(log)
    return "".join(log)


def outputs(params: Params, stage: str) -> dict[str, bytes | list[bytes]]:
    """What must be identical: every weight's bytes, the DVCLive history files (curves and
    latest epoch), the metrics JSON."""
    model = load_model(params.path(f"{stage}_model") / MODEL_FILE)
    return {"weights": [np.asarray(w).tobytes() for w in model.get_weights()],
            "history": folder_bytes(params.path(f"{stage}_history")),
            "metrics": params.path(f"{stage}_metrics").read_bytes()}


def without_history(found: dict) -> dict:
    """``outputs`` less the live DVCLive history (compared after the resume instead)."""
    return {k: v for k, v in found.items() if k != "history"}


def check_resume(params: Params, stage: str, killed_at: int, last: int,
                 ran: int | None = None) -> None:
    """``ran``: the last epoch the uninterrupted run trained (before ``last`` if it stopped
    early)."""
    uninterrupted = outputs(params, stage)
    backup = params.path("checkpoints") / stage
    assert not backup.exists(), "a successful run removes its backup"

    killed = kill_after(params, stage, f"{stage} epoch {killed_at}/{last}")
    assert f"{stage} epoch {killed_at + 1}/{last}" not in killed
    assert json.loads((backup / POINTER_FILE).read_text())["epoch"] == killed_at
    # the DVCLive history is written live, epoch by epoch; the model and metrics atomically
    live = read_history(params.path(f"{stage}_history"))
    assert live[-1]["epoch"] == killed_at, "the DVCLive files showed every finished epoch"
    assert without_history(outputs(params, stage)) == without_history(uninterrupted), \
        "the killed run left the old model and metrics intact"

    log = run_stage(params, stage)
    assert f"resuming {stage} at epoch {killed_at + 1}/{last}" in log
    assert f"{stage} epoch {killed_at}/{last}" not in log, "completed epochs were trained again"
    assert f"{stage} epoch {ran or last}/{last}" in log
    resumed = outputs(params, stage)
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert len(resumed["weights"]) == len(uninterrupted["weights"])
    for index, (a, b) in enumerate(zip(resumed["weights"], uninterrupted["weights"],
                                       strict=True)):
        assert a == b, f"weight {index} differs from the uninterrupted run"
    assert not backup.exists()


def test_transfer_killed_after_epoch_3_resumes_at_4_with_identical_weights(
        project: Params) -> None:
    run_stage(project, "transfer")
    check_resume(project, "transfer", killed_at=3, last=TRANSFER_EPOCHS)


def test_finetune_killed_after_epoch_2_resumes_at_3_with_identical_weights(
        project: Params) -> None:
    if not project.path("transfer_model").exists():
        run_stage(project, "transfer")
    run_stage(project, "finetune")
    last = TRANSFER_EPOCHS + FINETUNE_EPOCHS
    check_resume(project, "finetune", killed_at=TRANSFER_EPOCHS + 2, last=last)


def test_early_stopped_transfer_resumes_and_keeps_the_same_best_epoch(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Early stopping + the learning-rate search: killed after the best epoch, before the stop,
    the re-run keeps the best epoch's weights and stops where the uninterrupted run did."""
    params = prepare_project(tmp_path_factory.mktemp("stopping"), upto="features",
                             transfer={"epochs": 40, "patience": 3, "learning_rate": "auto",
                                       "learning_rates": [0.001, 0.05]})
    plant_features(params, contradicted=1 / 3)
    run_stage(params, "transfer")
    metrics = json.loads(params.path("transfer_metrics").read_text())
    assert metrics["kept_epoch"] < metrics["epochs"] < 40, metrics
    check_resume(params, "transfer", killed_at=metrics["kept_epoch"] + 1, last=40,
                 ran=metrics["epochs"])


def test_augmented_finetune_resumes_with_identical_weights(
        tmp_path: Path, project: Params) -> None:
    """Augmentation: full images, the shuffled image pipeline, seeded augmentation layers."""
    if not project.path("transfer_model").exists():
        run_stage(project, "transfer")
    work = tmp_path / "augmented"
    raw = yaml.safe_load((project.root / "params.yaml").read_text())
    raw["augment"].update(flip="horizontal", rotation=0.1)
    raw["finetune"].update(epochs=3)
    for key in ("processed", "prefix", "transfer_model", "transfer_metrics"):
        link = work / raw["paths"][key]  # share the prepared inputs, read only
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(project.path(key))
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(work / "params.yaml")
    run_stage(params, "finetune")
    check_resume(params, "finetune", killed_at=TRANSFER_EPOCHS + 1, last=TRANSFER_EPOCHS + 3)


def test_backup_of_other_params_is_discarded(project: Params,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A backup whose fingerprint differs (params, inputs or code changed) is not resumed."""
    backup = project.path("checkpoints") / "transfer"
    (backup / "epoch-0005").mkdir(parents=True)
    (backup / POINTER_FILE).write_text(json.dumps(
        {"stage": "transfer", "epoch": 5, "folder": "epoch-0005", "fingerprint": "other"}))
    with caplog.at_level(logging.INFO):
        run_transfer(project)
    assert "discarding the backup of epoch 5" in caplog.text
    assert "resuming" not in caplog.text
    assert f"transfer epoch 1/{TRANSFER_EPOCHS}" in caplog.text
    assert not backup.exists()


def epoch_orders(data, epochs: int) -> list[list[int]]:
    return [np.concatenate([np.asarray(y) for _, y in data]).tolist() for _ in range(epochs)]


@pytest.mark.parametrize("kind", ["features", "prefix", "images"])
def test_skip_epochs_gives_the_resumed_epoch_the_uninterrupted_order(project: Params,
                                                                     kind: str) -> None:
    """The data order of epoch k+1 after a resume equals that of an uninterrupted run."""
    def make():
        seed, batch = project.train.seed, project.train.batch_size
        if kind == "features":
            return feature_dataset(*open_features(project.path("features"), "train"), batch,
                                   seed)
        if kind == "prefix":
            return prefix_dataset(project.path("prefix"), "train", batch, seed)
        return image_dataset(Manifest.read(project.path("processed")), "train", batch, seed)

    uninterrupted = epoch_orders(make(), 5)
    assert len({tuple(order) for order in uninterrupted}) == 5, "each epoch is reshuffled"
    resumed = make()
    skip_epochs(resumed, 3)
    assert epoch_orders(resumed, 2) == uninterrupted[3:]
