"""The frozen caches are exact and invalidated: features (transfer) and frozen prefix (finetune).

A random MobileNetV2 (``weights=None``) has near-zero activations (~1e-11 after 16 blocks), which
would make "same result" trivially true; the base here gets data-calibrated BatchNorm statistics
instead and is passed to the pipeline as a weights file (which also lets a test rewrite it).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from tests.helpers.commands import make_dvc_project
from tests.helpers.commands import run_command as dvc
from tests.helpers.images import make_dataset
from tests.helpers.models import calibrated_base
from tests.helpers.project import DEFAULT_PER_CLASS, prepare_project, tiny_params
from warmstart.config.params import Params, load_params
from warmstart.data.records import Manifest, image_dataset, split_index
from warmstart.inference.recorded import class_probabilities, read_predictions
from warmstart.layout import BASE_FILE, MODEL_FILE, SPLITS
from warmstart.modeling import array_shards
from warmstart.modeling.array_shards import open_split
from warmstart.modeling.augment import augmentation_layers, with_augmentation
from warmstart.modeling.cache_keys import StaleCacheError
from warmstart.modeling.feature_cache import check_features, open_features
from warmstart.modeling.model import compile_model, find_base, load_model, unfreeze_from
from warmstart.modeling.prefix_cache import check_prefix
from warmstart.modeling.surgery import boundary_names, prefix_model, top_model
from warmstart.modeling.training import seed_everything
from warmstart.stages.finetune import run_finetune, stage_rate
from warmstart.stages.transfer import run_transfer, train_head

SIZE = 32


#: Shards this small split the tiny caches into several files (the pooled features: 3 rows a
#: shard), so every test here reads across shard boundaries.
SMALL_SHARD_BYTES = 16 * 2**10


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """features -> transfer -> prefix -> finetune on tiny images; float32 cache, no dropout."""
    root = tmp_path_factory.mktemp("cache")
    weights = root / "base.weights.h5"
    calibrated_base().save_weights(weights)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(array_shards, "SHARD_BYTES", SMALL_SHARD_BYTES)
        # A constant rate: what these tests compare is the cached forward and backward pass,
        # not the schedule (its rates: tests/test_selection.py; logged equal in both paths).
        # RMSprop's first steps are about 3 x lr times the SIGN of each gradient, so float noise in
        # near-zero gradients makes ~lr differences; a constant rate keeps pulling both runs'
        # weights to the same values after them, a cosine's falling one leaves them (a quarter
        # of one depthwise kernel's elements more than 1e-3 apart, at most 1.6 x lr).
        return prepare_project(root, upto="finetune", base={"weights": str(weights)},
                               head={"dropout": 0.0},
                               finetune={"cache_dtype": "float32", "schedule": "constant"},
                               validate={"skew_jsd": None, "skew_linf": None})  # not tested here


def images_of(params: Params, split: str) -> tuple[np.ndarray, np.ndarray]:
    manifest = Manifest.read(params.path("processed"))
    batches = list(image_dataset(manifest, split, batch_size=1000, cache=False))
    return batches[0][0].numpy(), batches[0][1].numpy()


def with_params(params: Params, section: str, **values) -> Params:
    raw = yaml.safe_load((params.root / "params.yaml").read_text())
    raw[section].update(values)
    (params.root / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(params.root / "params.yaml")


# ---- the cut -------------------------------------------------------------------------------

def test_boundary_at_layer_100_crosses_the_residual_add() -> None:
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False,
                                          alpha=0.35, weights=None)
    assert base.layers[100].name == "block_11_expand_relu"
    assert boundary_names(base, 100) == ["block_10_project_BN", "block_11_expand_BN"]
    assert boundary_names(base, 0) == boundary_names(base, 1) == [base.layers[0].name]
    assert boundary_names(base, 153) == ["Conv_1_bn"]


@pytest.mark.parametrize("cut", [0, 30, 100, 117, 153])
def test_prefix_then_top_computes_the_classifier(run: Params, cut: int) -> None:
    model = load_model(run.path("transfer_model") / MODEL_FILE)
    images, _ = images_of(run, "validation")
    full = model.predict(images, verbose=0)
    split = top_model(model, cut).predict(prefix_model(find_base(model), cut).predict(
        images, verbose=0), verbose=0)
    assert full.std() > 1e-3, "degenerate model: the comparison would prove nothing"
    np.testing.assert_allclose(split, full, atol=1e-5)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_recorded_predictions_are_the_saved_models_outputs_on_the_images(
        run: Params, split: str) -> None:
    """evaluate scores these files: they must be what model.keras computes from the pixels."""
    manifest = Manifest.read(run.path("processed"))
    images, labels = images_of(run, split)
    paths, _ = split_index(manifest, split)
    for stage in ("transfer", "finetune"):
        model = load_model(run.path(f"{stage}_model") / MODEL_FILE)
        recorded = read_predictions(run.path(f"{stage}_predictions"))[split]
        assert recorded.paths == paths and recorded.classes == manifest.classes
        np.testing.assert_array_equal(recorded.labels, labels)
        full = class_probabilities(model.predict(images, verbose=0))
        assert full.std() > 1e-3, "degenerate model: the comparison would prove nothing"
        np.testing.assert_allclose(recorded.probabilities, full, atol=1e-5)


def test_one_step_on_the_prefix_equals_one_step_on_the_full_model(run: Params) -> None:
    models = [load_model(run.path("transfer_model") / MODEL_FILE) for _ in range(2)]
    for model in models:
        unfreeze_from(find_base(model), 100)
    full, cached = models[0], top_model(models[1], 100)
    images, labels = images_of(run, "train")
    activations = prefix_model(find_base(models[1]), 100).predict(images, verbose=0)
    before = [w.numpy().copy() for w in full.weights]
    for model in (full, cached):
        model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy()
                      if full.output_shape[-1] > 1 else keras.losses.BinaryCrossentropy())
    loss_full = full.train_on_batch(images, labels)
    loss_cached = cached.train_on_batch(activations, labels)
    assert loss_cached == pytest.approx(loss_full, rel=1e-5)
    after = [[w.numpy() for w in m.weights] for m in models]
    changed = [not np.array_equal(a, b) for a, b in zip(before, after[0], strict=True)]
    assert sum(changed) == len(full.trainable_weights) > 0  # BatchNorm statistics untouched
    for a, b in zip(*after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_finetune_stage_equals_training_the_whole_classifier(run: Params) -> None:
    """The stage (cached prefix) vs fit() of the whole model on the images, same order."""
    seed_everything(run.train.seed)
    model = load_model(run.path("transfer_model") / MODEL_FILE)
    unfreeze_from(find_base(model), run.finetune.fine_tune_at)
    manifest = Manifest.read(run.path("processed"))
    compile_model(model, 2, stage_rate(run, manifest), run.train.label_smoothing)
    model.fit(image_dataset(manifest, "train", run.train.batch_size,
                            shuffle_seed=run.train.seed), epochs=run.finetune.epochs, verbose=0)
    stage = load_model(run.path("finetune_model") / MODEL_FILE)
    transfer = load_model(run.path("transfer_model") / MODEL_FILE)
    assert any(not np.array_equal(a, b) for a, b in
               zip(stage.get_weights(), transfer.get_weights(), strict=True))
    # RMSprop divides each step by the root of a running mean of squared gradients: where that
    # is ~0, float noise (oneDNN's kernels differ by CPU) moves a weight by up to ~lr a step. Seen
    # on an AVX-512 Xeon: 4 of 1,728 elements of one depthwise kernel 2.6e-3 apart, all else
    # within 1.2e-5; another shuffle seed moves ~98 % of every tensor's elements, by up to 0.027.
    for a, b in zip(stage.get_weights(), model.get_weights(), strict=True):
        close = np.isclose(a, b, rtol=1e-3, atol=1e-5)
        assert close.mean() >= 0.99, f"{(~close).sum()} of {a.size} elements differ"
        np.testing.assert_allclose(a, b, atol=10 * run.finetune.learning_rate)


def in_memory_prefix(arrays: list[np.ndarray], labels: np.ndarray, batch: int,
                     seed: int) -> tf.data.Dataset:
    """The training data of the format-1 finetune stage: the whole prefix as tf.constants,
    each batch gathered by a shuffled index (``prefix_dataset`` before the shards)."""
    constants, label_values = tuple(tf.constant(a) for a in arrays), tf.constant(labels)
    order = tf.data.Dataset.range(len(labels)).shuffle(len(labels), seed=seed,
                                                      reshuffle_each_iteration=True)
    return order.batch(batch).map(lambda i: (
        tuple(tf.cast(tf.gather(a, i), tf.float32) for a in constants),
        tf.gather(label_values, i)))


def test_finetune_on_the_streamed_prefix_equals_training_on_it_in_memory(run: Params) -> None:
    """The stage streams the prefix from its shards; the same arrays held in memory and
    shuffled as before give the very same weights (bit for bit: same batches, same order)."""
    arrays = open_split(run.path("prefix"), "train")
    assert len(arrays["boundary_1"].paths) > 1, "the cache spans several shards"
    seed_everything(run.train.seed, run.train.deterministic)
    model = load_model(run.path("transfer_model") / MODEL_FILE)
    unfreeze_from(find_base(model), run.finetune.fine_tune_at)
    top = top_model(model, run.finetune.fine_tune_at)
    data = in_memory_prefix([arrays[f"boundary_{i}"].read() for i in range(2)],
                            arrays["labels"].read(), run.train.batch_size, run.train.seed)
    compile_model(top, 2, stage_rate(run, Manifest.read(run.path("processed"))),
                  run.train.label_smoothing)
    done = json.loads(run.path("transfer_metrics").read_text())["epochs"]
    top.fit(data, initial_epoch=done, epochs=done + run.finetune.epochs, verbose=0)
    stage = load_model(run.path("finetune_model") / MODEL_FILE)
    transfer = load_model(run.path("transfer_model") / MODEL_FILE)
    assert any(not np.array_equal(a, b) for a, b in
               zip(stage.get_weights(), transfer.get_weights(), strict=True))
    for a, b in zip(stage.get_weights(), model.get_weights(), strict=True):
        assert a.tobytes() == b.tobytes()


def test_transfer_model_equals_end_to_end_training_from_the_same_head(run: Params) -> None:
    """train_head on cached features vs fit() of base + head on images, from equal head weights."""
    manifest = Manifest.read(run.path("processed"))
    seed_everything(run.train.seed)
    transfer = load_model(run.path("transfer_model") / MODEL_FILE)
    cached_head = [transfer.get_layer("head_dropout"), transfer.get_layer("head_dense")]
    end_to_end = keras.models.clone_model(transfer)
    end_to_end.set_weights(transfer.get_weights())
    start = [w.copy() for w in cached_head[1].get_weights()]
    seed_everything(run.train.seed)
    cached = {split: open_features(run.path("features"), split) for split in SPLITS}
    train_head(run, cached_head, cached, len(manifest.classes), None, run.transfer.learning_rate)
    find_base(end_to_end).trainable = False
    compile_model(end_to_end, 2, run.transfer.learning_rate, run.train.label_smoothing)
    seed_everything(run.train.seed)
    end_to_end.fit(image_dataset(manifest, "train", run.train.batch_size,
                                 shuffle_seed=run.train.seed), epochs=run.transfer.epochs,
                   verbose=0)
    assert not np.allclose(start[0], cached_head[1].get_weights()[0])
    images, _ = images_of(run, "validation")
    expected = end_to_end.predict(images, verbose=0)
    assert expected.std() > 1e-3
    np.testing.assert_allclose(transfer.predict(images, verbose=0), expected, atol=1e-5)


# ---- invalidation ---------------------------------------------------------------------------

@pytest.fixture
def copy_of_run(run: Params, tmp_path: Path) -> Params:
    work = tmp_path / "work"
    shutil.copytree(run.root, work)
    weights = tmp_path / "base.weights.h5"
    shutil.copy(run.base.weights_path(run.root), weights)
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["base"]["weights"] = str(weights)
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(work / "params.yaml")


def checks(params: Params) -> None:
    manifest = Manifest.read(params.path("processed"))
    check_features(params.path("features"), manifest,
                   load_model(params.path("features") / BASE_FILE), params.base, params.root)
    transfer = load_model(params.path("transfer_model") / MODEL_FILE)
    check_prefix(params.path("prefix"), manifest, find_base(transfer), params.finetune)


def test_caches_match_the_run_that_made_them(copy_of_run: Params) -> None:
    checks(copy_of_run)


def test_changed_data_invalidates_both_caches(copy_of_run: Params) -> None:
    """Processed data identify themselves by their index (each image's path, label and pixels'
    sha256, as preprocess writes them with the shards): one image's new pixels are new data. A
    shard edited in place behind its index is DVC's to report (`dvc status`: modified)."""
    index = Manifest.read(copy_of_run.path("processed")).index_path("train")
    entries = json.loads(index.read_text())
    entries["pixels_sha256"][0] = "0" * 64
    index.write_text(json.dumps(entries))
    with pytest.raises(StaleCacheError, match="data: cached"):
        checks(copy_of_run)


def test_weights_file_rewritten_in_place_invalidates_the_features(copy_of_run: Params) -> None:
    calibrated_base(seed=1).save_weights(copy_of_run.base.weights_path(copy_of_run.root))
    with pytest.raises(StaleCacheError, match="weights_sha256"):
        checks(copy_of_run)


def test_changed_base_alpha_invalidates_the_features(copy_of_run: Params) -> None:
    with pytest.raises(StaleCacheError, match="alpha"):
        checks(with_params(copy_of_run, "base", alpha=0.5))


@pytest.mark.parametrize(("key", "value", "part"), [("fine_tune_at", 90, "fine_tune_at"),
                                                   ("cache_dtype", "float16", "dtype")])
def test_changed_cut_or_dtype_invalidates_the_prefix(copy_of_run: Params, key: str, value,
                                                     part: str) -> None:
    params = with_params(copy_of_run, "finetune", **{key: value})
    with pytest.raises(StaleCacheError, match=part):
        checks(params)
    with pytest.raises(StaleCacheError):
        run_finetune(params)


def test_other_frozen_weights_invalidate_the_prefix(copy_of_run: Params) -> None:
    model = load_model(copy_of_run.path("transfer_model") / MODEL_FILE)
    layer = find_base(model).get_layer("block_3_expand")
    layer.set_weights([w * 1.01 for w in layer.get_weights()])
    manifest = Manifest.read(copy_of_run.path("processed"))
    with pytest.raises(StaleCacheError, match="frozen_weights"):
        check_prefix(copy_of_run.path("prefix"), manifest, find_base(model),
                     copy_of_run.finetune)


# ---- augmentation ---------------------------------------------------------------------------

def test_augmentation_bypasses_the_caches_and_says_so(copy_of_run: Params,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    params = with_params(copy_of_run, "augment", flip="horizontal", rotation=0.1, zoom=0.1)
    shutil.rmtree(params.path("prefix"))  # not needed while augmenting
    with caplog.at_level(logging.WARNING):
        run_transfer(params)
        run_finetune(params)
    bypassed = [r.getMessage() for r in caplog.records if "BYPASSED" in r.getMessage()]
    assert len(bypassed) == 2 and "flip=horizontal" in bypassed[0]
    model = load_model(params.path("finetune_model") / MODEL_FILE)
    assert not any(layer.name.startswith("augment") for layer in model.layers)
    training = with_augmentation(model, params.augment, seed=1)
    images, _ = images_of(params, "validation")
    np.testing.assert_allclose(training(images, training=False), model(images), atol=1e-6)
    augment_only = keras.Sequential(augmentation_layers(params.augment, seed=1))
    assert not np.allclose(augment_only(images, training=True), images, atol=1.0)
    np.testing.assert_allclose(augment_only(images, training=False), images)


def test_cache_info_records_boundary_size_and_shards(run: Params) -> None:
    info = json.loads((run.path("prefix") / "prefix.json").read_text())
    assert info["boundary"] == ["block_10_project_BN", "block_11_expand_BN"]
    assert info["dtype"] == "float32" and info["splits"]["train"]["count"] == 24
    assert info["splits"]["train"]["bytes"] == 24 * 2 * 2 * (32 + 192) * 4
    wide = info["splits"]["train"]["arrays"]["boundary_1"]  # 2 x 2 x 192 float32: 3 KiB a row
    assert wide["row_shape"] == [2, 2, 192] and wide["shard_rows"] == 5
    assert wide["files"] == [f"train/boundary_1-{i:05d}-of-00005.npy" for i in range(5)]
    listed = {f for split in info["splits"].values() for a in split["arrays"].values()
              for f in a["files"]}
    folder = run.path("prefix")
    assert listed == {p.relative_to(folder).as_posix() for p in folder.rglob("*.npy")}


# ---- invalidation through DVC ---------------------------------------------------------------

@pytest.mark.slow
def test_dvc_reruns_the_caching_stages_on_any_relevant_change(tmp_path: Path) -> None:
    """`dvc status` after changing data, base, weights, image size or fine_tune_at."""
    raw = tiny_params(make_dataset(tmp_path / "source", per_class=DEFAULT_PER_CLASS),
                      base={"weights": "weights/base.weights.h5"},
                      validate={"skew_jsd": None, "skew_linf": None})
    work = make_dvc_project(tmp_path / "project", raw)
    weights = work / "weights" / "base.weights.h5"
    weights.parent.mkdir()
    calibrated_base().save_weights(weights)
    dvc(["dvc", "repro", "features"], work)
    assert "up to date" in dvc(["dvc", "status", "--with-deps", "features"], work)

    def changed(section: str, key: str, value) -> set[str]:
        edited = yaml.safe_load((work / "params.yaml").read_text())
        edited[section][key] = value
        (work / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        status = dvc(["dvc", "status", "--with-deps", "features"], work)
        (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        return {line.rstrip(":").strip() for line in status.splitlines()
                if line.endswith(":") and not line.startswith("\t")}

    assert changed("finetune", "fine_tune_at", 90) == {"features"}
    assert changed("finetune", "cache_dtype", "float32") == {"features"}
    assert changed("base", "alpha", 0.5) == {"features"}
    assert changed("base", "weights", "none") == {"features"}
    assert changed("preprocess", "image_size", 48) == {"preprocess"}
    other = make_dataset(tmp_path / "other", per_class={**DEFAULT_PER_CLASS, "train": 13})
    assert changed("data", "source", str(other)) == {"ingest"}
    # a weights file rewritten in place: DVC cannot see it (a param, not a dep); the cache key can
    calibrated_base(seed=1).save_weights(weights)
    params = load_params(work / "params.yaml")
    manifest = Manifest.read(params.path("processed"))
    with pytest.raises(StaleCacheError, match="weights_sha256"):
        check_features(params.path("features"), manifest,
                       load_model(params.path("features") / BASE_FILE), params.base, params.root)
