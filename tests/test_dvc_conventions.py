"""DVC's own conventions: DVCLive history and plots, metrics named by model and split that two
equal runs write byte for byte, the offline `dvc plots show` template, the model artifact, and
the terminal progress bar."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.helpers.files import folder_bytes
from tests.helpers.project import prepare_project
from tests.helpers.shared import REPO
from warmstart.config.params import Params
from warmstart.layout import TEST, VALIDATION
from warmstart.live import LIVE_CURVES_DIR, LIVE_METRICS_FILE, LIVE_NAMES, read_history
from warmstart.modeling.training import EpochBar
from warmstart.stages.evaluate import COMPARED
from warmstart.stages.validate import run_validate

MODELS = ("transfer", "finetune")
TRAINING_METRICS = {"epochs", "kept_epoch", "train_loss", "train_accuracy", "validation_loss",
                    "validation_accuracy"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """A tiny 2-class run through evaluate (validate included)."""
    return prepare_project(tmp_path_factory.mktemp("conventions"), upto="evaluate",
                           transfer={"epochs": 3, "patience": None},
                           finetune={"epochs": 2, "patience": None})


def read(params: Params, key: str) -> dict:
    return json.loads(params.path(key).read_text())


def test_evaluate_metrics_are_named_by_model_and_split(run: Params) -> None:
    metrics, details = read(run, "evaluate_metrics"), read(run, "evaluate_details")
    assert set(metrics) == {*MODELS, "majority_baseline", "candidate"}
    for model in MODELS:
        assert set(metrics[model]) == {VALIDATION, TEST}
        for split in (VALIDATION, TEST):
            assert set(metrics[model][split]) == set(COMPARED)
            assert metrics[model][split] == {k: details[model][split][k] for k in COMPARED}
            # confusion cells and per-class tables are details, never metrics
            assert {"confusion_matrix", "per_class"} <= set(details[model][split])
    assert metrics["majority_baseline"] == {
        split: {"accuracy": details["majority_baseline"][split]["accuracy"]}
        for split in (VALIDATION, TEST)}
    assert metrics["candidate"] == {"model": details["candidate"]["model"],
                                    "split": VALIDATION, "metric": run.evaluate.select_on}
    assert "reason" in details["candidate"]


def test_training_metrics_name_the_split_of_every_figure(run: Params) -> None:
    assert set(read(run, "transfer_metrics")) == TRAINING_METRICS | {"learning_rate"}
    assert set(read(run, "finetune_metrics")) == TRAINING_METRICS
    assert "learning_rate_search" not in read(run, "transfer_metrics")


def test_no_metrics_file_holds_timings_byte_counts_or_nested_tables(run: Params) -> None:
    """What `dvc exp show` gets: few flat columns, nothing that differs between equal runs."""
    for key in ("validate_metrics", "transfer_metrics", "finetune_metrics", "evaluate_metrics"):
        text = run.path(key).read_text()
        for word in ("seconds", "images_per_second", "bytes", "confusion", "per_class",
                     "class_balance", "trials"):
            assert f'"{word}' not in text, (key, word)
    assert read(run, "validate_details")["seconds"] > 0  # the timing is kept, as a detail


def test_dvclive_history_matches_the_metrics(run: Params) -> None:
    """The DVCLive curves hold every epoch (one epoch axis across both stages); its
    metrics.json the last epoch; metrics/<stage>.json the kept one."""
    transfer = read_history(run.path("transfer_history"))
    finetune = read_history(run.path("finetune_history"))
    assert [row["epoch"] for row in transfer] == [1, 2, 3]
    assert [row["epoch"] for row in finetune] == [4, 5]
    for stage, rows in (("transfer", transfer), ("finetune", finetune)):
        folder = run.path(f"{stage}_history")
        latest = json.loads((folder / LIVE_METRICS_FILE).read_text())
        assert latest == {"step": rows[-1]["epoch"],
                          **{name: rows[-1][key] for key, name in LIVE_NAMES.items()}}
        kept = read(run, f"{stage}_metrics")
        assert kept["kept_epoch"] == kept["epochs"] == rows[-1]["epoch"]  # patience null
        assert kept["validation_accuracy"] == pytest.approx(rows[-1]["val_accuracy"], abs=1e-6)
        header = (folder / LIVE_CURVES_DIR / "train_loss.tsv").read_text().splitlines()[0]
        assert header == "step\ttrain_loss"  # no timestamp column


def test_evaluate_plots_are_dvclive_sklearn_plots(run: Params) -> None:
    folder = run.path("evaluate_plots") / "plots" / "sklearn"
    confusion = json.loads((folder / "confusion_finetune_test.json").read_text())
    details = read(run, "evaluate_details")["finetune"][TEST]
    assert len(confusion) == details["count"]
    cells = {(a, p): n for a, row in details["confusion_matrix"].items() for p, n in row.items()}
    for (actual, predicted), count in cells.items():
        assert sum(1 for r in confusion if (r["actual"], r["predicted"]) == (actual, predicted)) \
            == count
    roc = json.loads((folder / "roc_transfer_validation.json").read_text())["roc"]
    assert roc[0]["fpr"] == 0.0 and roc[-1]["tpr"] == 1.0
    calibration = json.loads((folder / "calibration_finetune_test.json").read_text())
    assert all(0 <= p["prob_true"] <= 1 for p in calibration["calibration"])


def test_validate_metrics_are_byte_identical_between_equal_runs(run: Params) -> None:
    before = run.path("validate_metrics").read_bytes()
    timing = read(run, "validate_details")["seconds"]
    run_validate(run)
    assert run.path("validate_metrics").read_bytes() == before
    assert set(json.loads(before)) == {"ok", "images", "images_per_split", "trained_on",
                                       "quarantined", "warnings", "blocking", "tfdv_anomalies",
                                       "exif_rotated"}
    assert isinstance(timing, float)


def test_equal_evaluate_runs_rewrite_every_file_byte_for_byte(run: Params) -> None:
    from warmstart.stages.evaluate import run_evaluate

    keys = ("evaluate_metrics", "evaluate_details", "evaluate_plots")
    before = {key: folder_bytes(run.path(key)) for key in keys}
    run_evaluate(run)
    assert {key: folder_bytes(run.path(key)) for key in keys} == before


def test_offline_plots_template_loads_no_script_from_the_network() -> None:
    config = (REPO / ".dvc" / "config").read_text()
    name = re.search(r"html_template\s*=\s*(\S+)", config).group(1)
    page = (REPO / ".dvc" / name).read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC's CDN tags never added
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"""<link[^>]*href=["']?https?:""", page)
    for package in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"/*! {package}\nCopyright (c) 2015" in page  # its licence kept
    assert page.count("<script>") == 3


def test_dvc_yaml_declares_the_promoted_model_as_a_dvc_artifact() -> None:
    from dvc.repo import Repo

    artifacts = Repo(str(REPO)).artifacts.read()["dvc.yaml"]
    model = artifacts["image-classifier"]
    assert model.type == "model" and model.path == "models/promoted"
    assert "promoted" in model.labels and "gate passes" in model.desc


def test_dvclive_is_importable_without_tensorflow() -> None:
    """evaluate stays TF-free and fast: DVCLive (and warmstart.live) must not pull TF in."""
    code = ("import sys, warmstart.live, dvclive; "
            "sys.exit(int(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def fit_with_bar(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((8, 3), np.float32)
    model.fit(x, np.zeros((8, 1), np.float32), batch_size=4, epochs=2, verbose=0,
              callbacks=[EpochBar("transfer")])
    return stream.getvalue()


def test_progress_bar_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = fit_with_bar(monkeypatch, Terminal())
    assert "transfer epoch 1/2" in shown and "transfer epoch 2/2" in shown
    assert "2/2" in shown and "loss=" in shown and "batch" in shown
    assert fit_with_bar(monkeypatch, io.StringIO()) == ""  # Prefect, CI, a log file


def test_metrics_files_are_declared_as_dvc_metrics_and_details_as_plain_outs() -> None:
    text = (REPO / "dvc.yaml").read_text()
    for stage in ("transfer", "finetune"):
        assert f"- ${{paths.{stage}_history}}/metrics.json:" in text
        assert f"- ${{paths.{stage}_history}}/plots:" in text
    metrics_blocks = re.findall(r"    metrics:\n((?:      .*\n)+)", text)
    assert metrics_blocks and not any("details" in block for block in metrics_blocks)


def test_dvclive_files_are_written_in_a_git_repository_without_commits(tmp_path) -> None:
    """`git init` then `dvc repro` before the first commit: DVCLive 3.49's own repository
    probing fails there (Empty git repo); warmstart's writer does not probe."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    code = ("from pathlib import Path; from warmstart.live import write_history; "
            "write_history(Path('dvclive/x'), [{'epoch': 1, 'loss': 0.5, 'accuracy': 0.75, "
            "'val_loss': 0.6, 'val_accuracy': 0.5}])")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=120,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert read_history(tmp_path / "dvclive" / "x") == [
        {"epoch": 1, "loss": 0.5, "accuracy": 0.75, "val_loss": 0.6, "val_accuracy": 0.5}]
