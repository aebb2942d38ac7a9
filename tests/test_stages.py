"""Stages preprocess → features → transfer → finetune → evaluate on tiny synthetic images."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers.images import CLASS_COLOURS
from tests.helpers.project import prepare_project
from warmstart.config.params import Params
from warmstart.data.records import Manifest, image_dataset, labels_of
from warmstart.inference.recorded import (
    Predictions,
    PredictionsError,
    read_predictions,
    write_predictions,
)
from warmstart.layout import MODEL_FILE
from warmstart.modeling.feature_cache import load_features
from warmstart.modeling.model import find_base, load_model, unfreeze_from
from warmstart.modeling.training import read_history
from warmstart.stages.evaluate import check_same_images


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """A whole tiny 3-class run, shared by the tests below (each stage ~seconds)."""
    return prepare_project(tmp_path_factory.mktemp("three"), classes=tuple(CLASS_COLOURS),
                           upto="evaluate")


def test_preprocess_writes_shards_and_manifest(trained: Params) -> None:
    manifest = Manifest.read(trained.path("processed"))
    assert manifest.classes == ["birds", "cats", "dogs"] and manifest.image_size == 32
    assert manifest.count("train") == 36 and len(manifest.shard_paths("train")) == 3
    images, labels = next(iter(image_dataset(manifest, "validation", batch_size=18)))
    assert images.shape == (18, 32, 32, 3) and images.dtype == "float32"
    assert float(images.numpy().min()) >= 0 and float(images.numpy().max()) <= 255
    assert sorted(set(labels_of(manifest, "validation"))) == [0, 1, 2]


def test_shuffled_order_is_seeded(trained: Params) -> None:
    manifest = Manifest.read(trained.path("processed"))

    def order(seed: int) -> list[int]:
        data = image_dataset(manifest, "train", batch_size=36, shuffle_seed=seed)
        return next(iter(data))[1].numpy().tolist()

    assert order(1) == order(1) and order(1) != order(2)


def test_transfer_model_equals_head_on_cached_features(trained: Params) -> None:
    model = load_model(trained.path("transfer_model") / MODEL_FILE)
    manifest = Manifest.read(trained.path("processed"))
    features, _ = load_features(trained.path("features"), "validation")
    head_input = model.get_layer("head_dropout").input
    head = keras.Model(head_input, model.output)
    images = image_dataset(manifest, "validation", batch_size=64, cache=False)
    full = model.predict(images.map(lambda x, y: x), verbose=0)
    np.testing.assert_allclose(full, head.predict(features, verbose=0), atol=1e-5)


def test_saved_model_takes_raw_pixels_and_softmax_for_three_classes(trained: Params) -> None:
    model = load_model(trained.path("finetune_model") / MODEL_FILE)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.get_layer("scale_to_unit").get_config()["offset"] == -1.0
    out = model.predict(np.full((2, 32, 32, 3), 255.0, np.float32), verbose=0)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_finetune_continues_the_epoch_count(trained: Params) -> None:
    transfer = read_history(trained.path("transfer_history"))
    finetune = read_history(trained.path("finetune_history"))
    assert [int(r["epoch"]) for r in transfer] == [1, 2, 3]
    assert [int(r["epoch"]) for r in finetune] == [4, 5]
    metrics = json.loads(trained.path("finetune_metrics").read_text())
    assert metrics["epochs"] == 5


def test_finetune_changes_only_layers_from_fine_tune_at(trained: Params) -> None:
    before = find_base(load_model(trained.path("transfer_model") / MODEL_FILE))
    after = find_base(load_model(trained.path("finetune_model") / MODEL_FILE))
    at = trained.finetune.fine_tune_at
    changed = {layer.name for layer, new in zip(before.layers, after.layers, strict=True)
               if any(not np.array_equal(a, b) for a, b in
                      zip(layer.get_weights(), new.get_weights(), strict=True))}
    assert changed, "fine-tuning trained nothing"
    assert all(before.layers.index(before.get_layer(n)) >= at for n in changed)
    assert not any(isinstance(before.get_layer(n), keras.layers.BatchNormalization)
                   for n in changed)  # BN statistics and scales untouched


def test_evaluate_reports_both_models(trained: Params) -> None:
    results = json.loads(trained.path("evaluate_metrics").read_text())
    assert set(results) == {"transfer", "finetune"}
    for metrics in results.values():
        assert {"loss", "accuracy", "precision", "recall", "f1", "roc_auc"} <= set(metrics)
        matrix = metrics["confusion_matrix"]
        assert sum(sum(row.values()) for row in matrix.values()) == 18
        correct = sum(matrix[name][name] for name in matrix)
        assert metrics["accuracy"] == pytest.approx(correct / 18, abs=1e-6)
        # Learning itself is asserted on real data (test_realdata.py): features of a random
        # base are ~1e-11, too small for a few epochs of head training to move.
    transfer = json.loads(trained.path("transfer_metrics").read_text())
    assert results["transfer"]["accuracy"] == pytest.approx(transfer["val_accuracy"], abs=1e-6)
    plots = trained.path("evaluate_plots")
    assert sorted(p.name for p in plots.iterdir()) == [
        "confusion_finetune.csv", "confusion_transfer.csv", "roc_finetune.csv",
        "roc_transfer.csv"]


def test_validation_prefix_is_float32_whatever_the_cache_dtype(trained: Params) -> None:
    info = json.loads((trained.path("prefix") / "prefix.json").read_text())
    assert info["dtype"] == "float16"
    assert {s: v["dtype"] for s, v in info["splits"].items()} == {
        "train": "float16", "validation": "float32"}


def test_evaluate_imports_no_tensorflow(trained: Params) -> None:
    code = ("import sys; from warmstart.cli import stage_function; stage_function('evaluate'); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_evaluate_refuses_predictions_of_different_images() -> None:
    labels, probabilities = np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])
    one = Predictions(["a.jpg", "b.jpg"], labels, probabilities, ["cats", "dogs"])
    other = Predictions(["a.jpg", "c.jpg"], labels, probabilities, ["cats", "dogs"])
    check_same_images({"transfer": one, "finetune": one})
    with pytest.raises(PredictionsError, match="different data versions"):
        check_same_images({"transfer": one, "finetune": other})


def test_predictions_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    target = tmp_path / "p.csv"
    write_predictions(target, ["x/1.jpg", "x/2.jpg"], np.array([1, 0]),
                      np.array([[0.75], [0.125]], np.float32), ["cats", "dogs"])
    back = read_predictions(target)
    assert back.paths == ["x/1.jpg", "x/2.jpg"] and back.classes == ["cats", "dogs"]
    np.testing.assert_array_equal(back.labels, [1, 0])
    np.testing.assert_allclose(back.probabilities, [[0.25, 0.75], [0.875, 0.125]])
    (tmp_path / "bad.csv").write_text("path,label\na.jpg,1\n")
    with pytest.raises(PredictionsError, match=r"bad\.csv is not a predictions file"):
        read_predictions(tmp_path / "bad.csv")
    with pytest.raises(PredictionsError, match="missing"):
        read_predictions(tmp_path / "absent.csv")


def test_batchnorm_stays_in_inference_mode_when_fine_tuning() -> None:
    """Regression: Keras 3.3 ignores the nested training=False once BN layers are trainable."""
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                          alpha=0.35, weights=None)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, base(inputs, training=False))
    unfreeze_from(base, 100)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-6)


def test_binary_run_with_zero_finetune_epochs(tiny_project: Callable[..., Params]) -> None:
    params = tiny_project(upto="evaluate", finetune={"epochs": 0})
    results = json.loads(params.path("evaluate_metrics").read_text())
    assert results["finetune"]["accuracy"] == results["transfer"]["accuracy"]
    model = load_model(params.path("finetune_model") / MODEL_FILE)
    assert model.output_shape == (None, 1)
