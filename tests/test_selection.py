"""Choices made on the validation split: early stopping (best epoch kept), the head's learning
rate, the candidate (transfer or fine-tuned model); label smoothing. Test never takes part."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers.caches import write_feature_split
from tests.helpers.files import folder_bytes
from tests.helpers.models import calibrated_base
from tests.helpers.project import plant_features, prepare_project, read_paths, write_params
from warmstart.config.params import FinetuneParams, Params
from warmstart.data.records import Manifest
from warmstart.inference.candidate import choose_candidate
from warmstart.inference.recorded import read_predictions
from warmstart.layout import MODEL_FILE, TEST, TRAIN, VALIDATION
from warmstart.live import read_history
from warmstart.modeling import lr_search
from warmstart.modeling.feature_cache import feature_dataset, open_features
from warmstart.modeling.model import (
    SmoothedSparseCrossentropy,
    compile_model,
    fine_tune_rate,
    head_layers,
    head_model,
    load_model,
)
from warmstart.modeling.stopping import Stopping
from warmstart.modeling.training import record_predictions
from warmstart.stages.evaluate import run_evaluate
from warmstart.stages.export import run_export
from warmstart.stages.gate import judged_figures
from warmstart.stages.transfer import run_transfer


def rows(*values: float, key: str = "val_loss") -> list[dict]:
    return [{"epoch": i + 1, key: v} for i, v in enumerate(values)]


@pytest.mark.parametrize(("history", "patience", "kept", "stops_at"), [
    (rows(0.9, 0.5, 0.6, 0.7), 2, 2, 4),      # best at 2, two worse epochs: stop
    (rows(0.9, 0.5, 0.5, 0.7), 2, 2, 4),      # a tie is not better: the earlier is kept
    (rows(0.9, 0.5, 0.6, 0.4), 2, 4, None),   # improves again in time
    (rows(0.9, 0.5, 0.6, 0.7), None, 4, None),  # no patience: every epoch, the last kept
])
def test_stopping_keeps_the_best_epoch_and_stops_after_patience(
        history: list[dict], patience: int | None, kept: int, stops_at: int | None) -> None:
    stopping = Stopping("val_loss", patience)
    assert stopping.kept_row(history)["epoch"] == kept
    stopped = [row["epoch"] for i, row in enumerate(history)
               if stopping.should_stop(history[:i + 1])]
    assert (stopped[0] if stopped else None) == stops_at


def test_an_improvement_below_min_delta_does_not_count() -> None:
    stopping = Stopping("val_loss", 2, min_delta=0.01)
    history = rows(0.5, 0.495, 0.492, 0.45)
    assert stopping.kept_row(history[:3])["epoch"] == 1 and stopping.should_stop(history[:3])
    assert stopping.kept_row(history)["epoch"] == 4


def test_stopping_on_accuracy_prefers_higher() -> None:
    stopping = Stopping("val_accuracy", 1)
    history = rows(0.5, 0.8, 0.7, key="val_accuracy")
    assert stopping.kept_row(history)["epoch"] == 2 and stopping.should_stop(history)


def test_smoothed_sparse_crossentropy_is_keras_crossentropy_at_zero_and_smooths() -> None:
    labels = np.array([0, 2, 1])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]], np.float32)
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    assert float(SmoothedSparseCrossentropy(3, 0.0)(labels, probabilities)) == \
        pytest.approx(float(plain), rel=1e-6)
    smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
        keras.ops.one_hot(labels, 3), probabilities)
    assert float(SmoothedSparseCrossentropy(3, 0.1)(labels, probabilities)) == \
        pytest.approx(float(smoothed), rel=1e-6)


def evaluation(transfer: float, finetune: float) -> dict:
    return {model: {VALIDATION: {"accuracy": value, "loss": 1 - value}, TEST: {"accuracy": 0.0}}
            for model, value in (("transfer", transfer), ("finetune", finetune))}


@pytest.mark.parametrize(("transfer", "finetune", "metric", "chosen"), [
    (0.90, 0.93, "accuracy", "finetune"),
    (0.93, 0.90, "accuracy", "transfer"),
    (0.93, 0.93, "accuracy", "transfer"),     # a tie goes to the simpler model
    (0.90, 0.93, "loss", "finetune"),         # loss: lower is better (1 - value here)
])
def test_candidate_is_the_better_model_on_validation(transfer: float, finetune: float,
                                                     metric: str, chosen: str) -> None:
    candidate = choose_candidate(evaluation(transfer, finetune), metric)
    assert candidate["model"] == chosen and candidate["split"] == VALIDATION
    assert ("tie" in candidate["reason"]) == (transfer == finetune)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """Transfer with early stopping and a learning rate chosen from two, on planted features:
    separable training blobs, a validation split with a third of its labels contradicting
    them, so the validation loss bottoms out early and then rises."""
    params = prepare_project(tmp_path_factory.mktemp("stopping"), upto="features",
                             train={"monitor": "val_loss"},
                             transfer={"epochs": 40, "patience": 3, "learning_rate": "auto",
                                       "learning_rates": [0.001, 0.05]})
    plant_features(params, contradicted=1 / 3)
    run_transfer(params)
    return params


def kept_head(params: Params) -> keras.Model:
    """The saved transfer model's head, on cached (planted) features."""
    model = load_model(params.path("transfer_model") / MODEL_FILE)
    head = head_model(model.get_layer("head_dense").input.shape[-1],
                      [model.get_layer("head_dropout"), model.get_layer("head_dense")])
    compile_model(head, 2, 0.01, params.train.label_smoothing)
    return head


def test_early_stopping_keeps_the_best_validation_epoch(stopped: Params) -> None:
    metrics = json.loads(stopped.path("transfer_metrics").read_text())
    assert metrics["kept_epoch"] < metrics["epochs"] < 40, metrics
    history = {row["epoch"]: row for row in read_history(stopped.path("transfer_history"))}
    kept, last = history[metrics["kept_epoch"]], history[metrics["epochs"]]
    assert metrics["epochs"] - metrics["kept_epoch"] == stopped.transfer.patience
    assert all(float(kept["val_loss"]) <= float(r["val_loss"]) for r in history.values())
    assert metrics["validation_loss"] == pytest.approx(float(kept["val_loss"]), abs=1e-6)
    # The saved model IS the kept epoch's: its validation loss is that epoch's, not the last's.
    features, labels = open_features(stopped.path("features"), VALIDATION)
    loss = kept_head(stopped).evaluate(features.read(), labels, batch_size=8, verbose=0,
                                       return_dict=True)["loss"]
    assert loss == pytest.approx(float(kept["val_loss"]), abs=1e-5)
    assert abs(loss - float(last["val_loss"])) > 1e-3


def test_learning_rate_search_is_recorded_and_ignores_the_test_split(stopped: Params) -> None:
    """Scrambling the test split's cached features and labels changes nothing in the choice."""
    metrics = json.loads(stopped.path("transfer_metrics").read_text())
    search = json.loads(stopped.path("transfer_details").read_text())["learning_rate_search"]
    assert search["split"] == VALIDATION and len(search["trials"]) == 2
    low, high = search["trials"]  # by rate; the higher wins only by more than train.min_delta
    best = high if high["val_loss"] < low["val_loss"] - stopped.train.min_delta else low
    assert metrics["learning_rate"] == best["learning_rate"]
    assert search["trials"][0]["val_loss"] != search["trials"][1]["val_loss"]
    folder = stopped.path("features")
    original = folder_bytes(folder)
    try:
        features, labels = open_features(folder, TEST)
        rng = np.random.default_rng(0)
        write_feature_split(folder, TEST, rng.normal(size=features.shape) * 100, 1 - labels,
                            read_paths(folder, TEST))
        run_transfer(stopped)
        again = json.loads(stopped.path("transfer_metrics").read_text())
        details = json.loads(stopped.path("transfer_details").read_text())
        assert details["learning_rate_search"] == search
        assert again == metrics
    finally:
        for name, data in original.items():
            (folder / name).write_bytes(data)
        run_transfer(stopped)


@pytest.fixture(scope="module")
def worse_finetune(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """A finished tiny run (a calibrated random base: its features carry the colours) whose
    fine-tuned model is worse on validation than the transfer model: its recorded predictions
    are the transfer model's inverted, as a wrecked fine-tune would leave them."""
    root = tmp_path_factory.mktemp("worse")
    weights = root / "base.weights.h5"
    calibrated_base().save_weights(weights)
    params = prepare_project(root, upto="finetune", skip_validation=True,
                             base={"weights": str(weights)}, transfer={"epochs": 30})
    transfer = read_predictions(params.path("transfer_predictions"))
    inverted = {split: 1.0 - transfer[split].probabilities[:, 1:] for split in (VALIDATION, TEST)}
    record_predictions(params.path("finetune_predictions"), Manifest.read(
        params.path("processed")), inverted)
    run_evaluate(params)
    return params


def test_transfer_is_the_candidate_when_finetuning_is_worse_on_validation(
        worse_finetune: Params) -> None:
    results = json.loads(worse_finetune.path("evaluate_metrics").read_text())
    candidate = results["candidate"]
    assert results["finetune"][VALIDATION]["accuracy"] < results["transfer"][VALIDATION][
        "accuracy"], "the fixture should make fine-tuning worse"
    assert candidate["model"] == "transfer" and candidate["split"] == VALIDATION
    exported = run_export(worse_finetune)
    assert exported["candidate"] == "transfer"
    assert exported["reference"]["model"] == "transfer"
    assert (worse_finetune.path("export_model") / MODEL_FILE).read_bytes() == \
        (worse_finetune.path("transfer_model") / MODEL_FILE).read_bytes()
    candidate, _ = judged_figures(worse_finetune.path("evaluate_details"))
    assert candidate["model"] == "transfer" and candidate["split"] == TEST
    assert candidate["accuracy"] == results["transfer"][TEST]["accuracy"]
    assert "validation accuracy" in candidate["chosen_because"]


def test_evaluate_records_the_candidate_choice(worse_finetune: Params) -> None:
    results = run_evaluate(worse_finetune)
    assert set(results["candidate"]["figures"]) == {"transfer", "finetune"}
    assert results["candidate"]["metric"] == worse_finetune.evaluate.select_on


def test_the_flow_artifact_says_which_model_is_the_candidate_and_why(
        worse_finetune: Params) -> None:
    from tasks.report import candidate_markdown

    text = candidate_markdown(worse_finetune.path("evaluate_details"))
    assert "The **transfer** model: validation accuracy" in text
    assert "No candidate yet" in candidate_markdown(worse_finetune.root / "missing.json")


@pytest.mark.parametrize(("losses", "chosen"), [((0.6256, 0.6251, 0.70), 3e-4),
                                                ((0.6256, 0.6230, 0.70), 1e-3),
                                                ((0.90, 0.6256, 0.6250), 1e-3)])
def test_learning_rate_ties_within_min_delta_go_to_the_smaller_rate(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, losses: tuple, chosen: float) -> None:
    """Regression: flowers' search took 1e-3 over 3e-4 for a validation loss 0.0005 lower, a
    difference early stopping (train.min_delta 0.001) counts as no improvement."""
    scores = dict(zip((3e-4, 1e-3, 3e-3), losses, strict=True))
    monkeypatch.setattr(lr_search, "run_trials", lambda params, cached, classes, rates, stop: [
        {"learning_rate": rate, "epoch": 1, "val_loss": scores[rate], "val_accuracy": 0.5}
        for rate in rates])
    params = write_params(tmp_path, tmp_path, train={"monitor": "val_loss", "min_delta": 0.001},
                          transfer={"learning_rate": "auto", "learning_rates": list(scores)})
    choice = lr_search.choose_learning_rate(params, {TRAIN: None, VALIDATION: None}, 2, None)
    assert choice["learning_rate"] == chosen


@pytest.mark.parametrize(("num_classes", "class_weight"),
                         [(2, None), (3, {0: 0.5, 1: 1.0, 2: 2.0})])
def test_each_fused_trial_is_a_keras_fit_of_the_stage_head(
        tmp_path: Path, num_classes: int, class_weight: dict | None) -> None:
    """The trials train every rate's head side by side in one Dense layer with a hand-written
    RMSprop step; each head's validation figures per epoch must be those of a Keras ``fit`` of
    the stage's own head (seeded the same) at that rate, on the same batches."""
    rng = np.random.default_rng(3)
    folder, rates = tmp_path / "features", [3e-4, 3e-3, 3e-2]
    for split, count in ((TRAIN, 90), (VALIDATION, 40)):
        labels = rng.integers(0, num_classes, count)
        write_feature_split(folder, split, rng.normal(size=(count, 6)) + labels[:, None], labels)
    params = write_params(tmp_path, tmp_path, train={"batch_size": 16, "label_smoothing": 0.1},
                          head={"dropout": 0.3}, transfer={"epochs": 6, "patience": None})
    cached = {split: open_features(folder, split) for split in (TRAIN, VALIDATION)}
    fused = lr_search.run_trials(params, cached, (num_classes, class_weight), rates,
                                 Stopping("val_loss", None))
    for rate, trial in zip(rates, fused, strict=True):
        keras.utils.set_random_seed(params.train.seed)
        head = head_model(6, head_layers(num_classes, params.head.dropout))
        compile_model(head, num_classes, rate, params.train.label_smoothing)
        data = {split: feature_dataset(*cached[split], 16, seed=seed)
                for split, seed in ((TRAIN, params.train.seed), (VALIDATION, None))}
        history = head.fit(data[TRAIN], validation_data=data[VALIDATION], epochs=6, verbose=0,
                           class_weight=class_weight).history
        assert trial["epoch"] == 6
        assert trial["val_loss"] == pytest.approx(history["val_loss"][-1], abs=2e-6)
        assert trial["val_accuracy"] == pytest.approx(history["val_accuracy"][-1], abs=1e-6)


def test_trials_give_the_same_figures_whatever_their_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph call runs a chunk of batches: one batch per chunk (features read from disk) and
    the whole epoch in one chunk (from memory) train the same heads on the same batches."""
    rng = np.random.default_rng(5)
    folder, rates = tmp_path / "features", [1e-3, 1e-2]
    for split, count in ((TRAIN, 70), (VALIDATION, 30)):
        labels = rng.integers(0, 2, count)
        write_feature_split(folder, split, rng.normal(size=(count, 4)) + labels[:, None], labels)
    params = write_params(tmp_path, tmp_path, train={"batch_size": 16},
                          transfer={"epochs": 5, "patience": None})
    cached = {split: open_features(folder, split) for split in (TRAIN, VALIDATION)}

    def trials() -> list[dict]:
        return lr_search.run_trials(params, cached, (2, None), rates, Stopping("val_loss", None))

    whole = trials()
    monkeypatch.setattr(lr_search, "CHUNK_BYTES", 1)
    monkeypatch.setattr(lr_search, "IN_MEMORY_BYTES", 0)
    assert trials() == whole


@pytest.mark.parametrize(("schedule", "epochs", "expected"), [
    ("cosine", 5, [1e-4, 0.5e-4, 0.0]),  # half a cosine: the rate at steps 0, 40 and 80 of 80
    ("constant", 5, [1e-4, 1e-4, 1e-4]),
    ("cosine", 0, [1e-4, 1e-4, 1e-4]),  # no epoch: nothing to schedule
])
def test_fine_tune_rate_follows_finetune_schedule(schedule: str, epochs: int,
                                                  expected: list[float]) -> None:
    finetune = FinetuneParams(fine_tune_at=72, epochs=epochs, learning_rate=1e-4,
                              schedule=schedule, patience=3, cache_dtype="float16")
    rate = fine_tune_rate(finetune, steps_per_epoch=16)
    values = [float(rate(step)) if callable(rate) else rate for step in (0, 40, 80)]
    assert values == pytest.approx(expected, rel=1e-6, abs=1e-12)  # float32 steps
