"""Stages preprocess → features → transfer → finetune → evaluate on tiny synthetic images, with
the train / validation / test roles and ``train.class_weight``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers.images import CLASS_COLOURS, make_dataset
from tests.helpers.project import (
    DEFAULT_CLASSES,
    prepare_project,
    write_params,
    write_processed,
)
from warmstart.config.params import Params, TrainParams
from warmstart.data import records
from warmstart.data.records import Manifest, image_dataset, labels_of, selected_pixels, split_index
from warmstart.errors import WarmstartError
from warmstart.inference.recorded import (
    Predictions,
    PredictionsError,
    make_predictions,
    read_predictions,
    write_predictions,
)
from warmstart.layout import MODEL_FILE
from warmstart.live import read_history
from warmstart.modeling.feature_cache import open_features
from warmstart.modeling.model import find_base, load_model, unfreeze_from
from warmstart.modeling.training import class_weights
from warmstart.stages.evaluate import check_same_images
from warmstart.stages.features import run_features
from warmstart.stages.finetune import run_finetune
from warmstart.stages.transfer import run_transfer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """A whole tiny 3-class run, shared by the tests below (each stage ~seconds)."""
    return prepare_project(tmp_path_factory.mktemp("three"), classes=tuple(CLASS_COLOURS),
                           upto="evaluate")


def test_preprocess_writes_shards_and_manifest(trained: Params) -> None:
    manifest = Manifest.read(trained.path("processed"))
    assert manifest.classes == ["birds", "cats", "dogs"] and manifest.image_size == 32
    assert manifest.count("train") == 36 and len(manifest.shard_paths("train")) == 3
    assert sorted(manifest.splits) == ["test", "train", "validation"]
    assert {split: manifest.class_counts(split) for split in manifest.splits} == {
        "train": [12, 12, 12], "validation": [6, 6, 6], "test": [6, 6, 6]}
    images, labels = next(iter(image_dataset(manifest, "validation", batch_size=18)))
    assert images.shape == (18, 32, 32, 3) and images.dtype == "float32"
    assert float(images.numpy().min()) >= 0 and float(images.numpy().max()) <= 255
    assert sorted(set(labels_of(manifest, "validation"))) == [0, 1, 2]


def test_selected_pixels_reads_only_the_shards_holding_them(
        trained: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    """The features stage after +1 % images reads the misses' pixels: only their shards."""
    manifest = Manifest.read(trained.path("processed"))
    size, count, shards = (manifest.shard_size("train"), manifest.count("train"),
                           manifest.shard_paths("train"))
    every = list(selected_pixels(manifest, "train", np.ones(count, dtype=bool)))
    opened, original = [], records.tf.data.TFRecordDataset
    monkeypatch.setattr(records.tf.data, "TFRecordDataset",
                        lambda files: opened.append(files) or original(files))

    def read(*indices: int) -> list[bytes]:
        return list(selected_pixels(manifest, "train", np.isin(np.arange(count), indices)))

    assert len(shards) == 3 and len(every) == count
    assert read(1, size + 2) == [every[1], every[size + 2]]
    assert read(count - 1) == [every[count - 1]]
    assert read() == []
    assert opened == [shards[:2], shards[2:]]


def test_shuffled_order_is_seeded(trained: Params) -> None:
    manifest = Manifest.read(trained.path("processed"))

    def order(seed: int) -> list[int]:
        data = image_dataset(manifest, "train", batch_size=36, shuffle_seed=seed)
        return next(iter(data))[1].numpy().tolist()

    assert order(1) == order(1) and order(1) != order(2)


def test_a_fit_over_the_images_counts_one_optimizer_step_per_batch(trained: Params) -> None:
    """Regression: the image dataset had no known length, and Keras 3.3's fit then counted
    optimizer steps that never ran (8 for 2 epochs of 3 batches), moving a learning-rate
    schedule (finetune.schedule cosine, on the augmented path) ahead of its epochs."""
    manifest = Manifest.read(trained.path("processed"))
    data = image_dataset(manifest, "train", batch_size=16, shuffle_seed=1)
    assert int(data.cardinality()) == 3  # 36 images
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(data, epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 6


def test_transfer_model_equals_head_on_cached_features(trained: Params) -> None:
    model = load_model(trained.path("transfer_model") / MODEL_FILE)
    manifest = Manifest.read(trained.path("processed"))
    features = open_features(trained.path("features"), "validation")[0].read()
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


def test_evaluate_reports_both_models_per_split(trained: Params) -> None:
    results = json.loads(trained.path("evaluate_details").read_text())
    assert set(results) == {"transfer", "finetune", "majority_baseline", "candidate"}
    for stage in ("transfer", "finetune"):
        assert set(results[stage]) == {"validation", "test"}
        for metrics in results[stage].values():
            assert {"loss", "accuracy", "balanced_accuracy", "precision", "recall", "f1",
                    "macro_f1", "roc_auc", "per_class"} <= set(metrics)
            assert metrics["average"] == "macro" and metrics["count"] == 18
            matrix = metrics["confusion_matrix"]
            assert sum(sum(row.values()) for row in matrix.values()) == 18
            correct = sum(matrix[name][name] for name in matrix)
            assert metrics["accuracy"] == pytest.approx(correct / 18, abs=1e-6)
            recalls = [matrix[name][name] / 6 for name in matrix]
            assert metrics["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-6)
            assert {name: m["support"] for name, m in metrics["per_class"].items()} == {
                "birds": 6, "cats": 6, "dogs": 6}
            for name, per_class in metrics["per_class"].items():
                assert per_class["recall"] == pytest.approx(matrix[name][name] / 6, abs=1e-6)
            # Learning itself is asserted on real data (test_realdata.py): features of a random
            # base are ~1e-11, too small for a few epochs of head training to move.
    transfer = json.loads(trained.path("transfer_metrics").read_text())
    assert results["transfer"]["validation"]["accuracy"] == pytest.approx(
        transfer["validation_accuracy"], abs=1e-6)
    # Test never enters training: the transfer metrics have train and validation figures only.
    assert set(transfer) == {"epochs", "kept_epoch", "learning_rate", "train_loss",
                             "train_accuracy", "validation_loss", "validation_accuracy"}
    assert results["majority_baseline"] == {
        "class": "birds", "chosen_on": "train", "validation": {"accuracy": 0.333333, "count": 18},
        "test": {"accuracy": 0.333333, "count": 18}}
    plots = trained.path("evaluate_plots") / "plots" / "sklearn"
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        f"{kind}_{stage}_{split}.json"
        for kind in ("confusion", "roc", "precision_recall", "calibration")
        for stage in ("transfer", "finetune") for split in ("validation", "test"))


def test_test_predictions_are_of_the_test_images_and_after_training(trained: Params) -> None:
    manifest = Manifest.read(trained.path("processed"))
    for stage in ("transfer", "finetune"):
        recorded = read_predictions(trained.path(f"{stage}_predictions"))
        assert list(recorded) == ["validation", "test"]
        for split, run in recorded.items():
            assert run.paths == split_index(manifest, split)[0]
            assert all(path.startswith(f"{split}/") for path in run.paths)
        history = read_history(trained.path(f"{stage}_history"))
        assert set(history[0]) == {"epoch", "loss", "accuracy", "val_loss",
                                   "val_accuracy"}  # validation monitored, nothing else


def test_validation_prefix_is_float32_whatever_the_cache_dtype(trained: Params) -> None:
    info = json.loads((trained.path("prefix") / "prefix.json").read_text())
    assert info["dtype"] == "float16"
    assert {s: v["dtype"] for s, v in info["splits"].items()} == {
        "train": "float16", "validation": "float32", "test": "float32"}


def test_evaluate_imports_no_tensorflow(trained: Params) -> None:
    code = ("import sys; from warmstart.cli import stage_function; stage_function('evaluate'); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_evaluate_writes_the_report_and_label_issues_without_tensorflow(trained: Params) -> None:
    """Run in a fresh process: the report and the label-issue search import no TensorFlow."""
    code = ("import sys; from pathlib import Path; from warmstart.cli import stage_function; "
            "from warmstart.config.params import load_params; stage_function('evaluate')("
            f"load_params(Path({str(trained.root / 'params.yaml')!r}))); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    page = trained.path("evaluation_html").read_text()
    for model in ("transfer", "finetune"):
        for split in ("validation", "test"):
            assert f"id='{model}-{split}'>{model} on the {split} split</h2>" in page
    issues = trained.path("label_issues").read_text().splitlines()
    assert issues[0] == "rank,path,given_label,suggested_label,self_confidence,suggested_confidence"
    train_paths = set(split_index(Manifest.read(trained.path("processed")), "train")[0])
    assert all(row.split(",")[1] in train_paths for row in issues[1:])


def test_evaluate_refuses_predictions_of_different_images() -> None:
    labels, probabilities = np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])
    one = Predictions(["a.jpg", "b.jpg"], labels, probabilities, ["cats", "dogs"])
    other = Predictions(["a.jpg", "c.jpg"], labels, probabilities, ["cats", "dogs"])
    check_same_images({"transfer": one, "finetune": one})
    with pytest.raises(PredictionsError, match="different data versions"):
        check_same_images({"transfer": one, "finetune": other})


def test_predictions_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    target = tmp_path / "p.csv"
    classes = ["cats", "dogs"]
    write_predictions(target, {
        "validation": make_predictions(["x/1.jpg", "x/2.jpg"], np.array([1, 0]),
                                       np.array([[0.75], [0.125]], np.float32), classes),
        "test": make_predictions(["y/3.jpg"], np.array([0]), np.array([[0.5]]), classes)})
    assert target.read_text().splitlines()[:2] == ["split,path,actual,prob_cats,prob_dogs",
                                                   "validation,x/1.jpg,dogs,0.25,0.75"]
    back = read_predictions(target)
    assert list(back) == ["validation", "test"]
    assert back["validation"].paths == ["x/1.jpg", "x/2.jpg"]
    assert back["validation"].classes == classes and back["test"].paths == ["y/3.jpg"]
    np.testing.assert_array_equal(back["validation"].labels, [1, 0])
    np.testing.assert_allclose(back["validation"].probabilities, [[0.25, 0.75], [0.875, 0.125]])
    (tmp_path / "bad.csv").write_text("path,label\na.jpg,1\n")
    with pytest.raises(PredictionsError, match=r"bad\.csv is not a predictions file"):
        read_predictions(tmp_path / "bad.csv")
    with pytest.raises(PredictionsError, match=r"not a predictions file of the splits"):
        read_predictions(target, splits=("validation", "test", "train"))
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
    results = json.loads(params.path("evaluate_details").read_text())
    for split in ("validation", "test"):
        assert results["finetune"][split] == results["transfer"][split]
    assert set(results["finetune"]["test"]["per_class"]) == {"cats", "dogs"}
    assert results["finetune"]["test"]["average"] == "binary"
    model = load_model(params.path("finetune_model") / MODEL_FILE)
    assert model.output_shape == (None, 1)


# ---- class imbalance: train.class_weight ------------------------------------------------------

def test_balanced_class_weights_are_n_over_k_times_n_c() -> None:
    """7:1 training split: each image weighs n / (k * n_c), so both classes weigh n / k."""
    split = {"count": 16, "shards": [], "class_counts": {"cats": 14, "dogs": 2}}
    manifest = Manifest(Path("."), ["cats", "dogs"], 32, {"train": split})
    train = TrainParams(batch_size=8, seed=1, deterministic=True, strategy="default",
                        class_weight="balanced", monitor="val_loss", min_delta=0.0,
                        label_smoothing=0.0)
    weights = class_weights(train, manifest)
    assert weights == {0: 16 / (2 * 14), 1: 16 / (2 * 2)}
    assert weights[0] * 14 == weights[1] * 2 == 8.0
    assert class_weights(dataclasses.replace(train, class_weight="none"), manifest) is None
    empty = {"train": {**split, "class_counts": {"cats": 16, "dogs": 0}}}
    with pytest.raises(WarmstartError, match=r"no images of \['dogs'\]"):
        class_weights(train, Manifest(Path("."), ["cats", "dogs"], 32, empty))


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Params]:
    """The same 7:1 training split (14 cats, 2 dogs; 6 + 6 validation and test) trained with
    ``train.class_weight`` none and balanced: features, transfer, finetune."""
    root = tmp_path_factory.mktemp("imbalanced")
    source = make_dataset(root / "src", per_class={"train": 14, "validation": 6, "test": 6})
    for extra in sorted((source / "train" / "dogs").glob("*.jpg"))[2:]:
        extra.unlink()
    runs = {}
    for mode in ("none", "balanced"):
        params = write_params(root / mode, source, train={"class_weight": mode},
                              transfer={"epochs": 4, "learning_rate": 0.05})
        write_processed(params, source, DEFAULT_CLASSES)
        for stage in (run_features, run_transfer, run_finetune):
            stage(params)
        runs[mode] = params
    return runs


def test_balanced_class_weight_reweighs_the_training_loss(imbalanced: dict[str, Params]) -> None:
    manifest = Manifest.read(imbalanced["none"].path("processed"))
    assert manifest.class_counts("train") == [14, 2]
    for stage in ("transfer", "finetune"):
        none, balanced = (read_history(imbalanced[m].path(f"{stage}_history"))
                          for m in ("none", "balanced"))
        # the same data, order and initial weights; only the loss weighting differs
        assert float(none[0]["loss"]) != pytest.approx(float(balanced[0]["loss"]), rel=1e-3)
    weights = {mode: load_model(params.path("transfer_model") / MODEL_FILE).get_layer(
        "head_dense").get_weights() for mode, params in imbalanced.items()}
    assert not np.allclose(weights["none"][1], weights["balanced"][1])


def test_balanced_class_weight_raises_the_minority_class(imbalanced: dict[str, Params]) -> None:
    """A random base gives near-zero features: the head's bias decides. Unweighted, it drifts
    to the majority class (cats); balanced, the 2 dogs weigh as much as the 14 cats."""
    dogs = {}
    for mode, params in imbalanced.items():
        recorded = read_predictions(params.path("transfer_predictions"))["validation"]
        dogs[mode] = float(recorded.probabilities[:, 1].mean())
    assert dogs["none"] < 0.5 - 0.05, dogs
    assert dogs["balanced"] > dogs["none"] + 0.05, dogs
