"""Any Keras backbone (``base.architecture``): the registry, the three forms of
``finetune.fine_tune_at``, and per family exact caches, inference-mode fine-tuning, safe loading
and export.

Per family the base has random kernels (``base.weights: none``) at the smallest input Keras allows
(32 px), and the BatchNorm statistics of the images the tests feed it (``IMAGES``): random
statistics would leave near-zero activations (or, for other images, exploding ones: EfficientNetV2
-B2's pooled features reach 3000), and "same result" would then prove nothing.
"""

from __future__ import annotations

import functools
import json
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from tests.helpers.project import prepare_project, tiny_params
from warmstart.config.params import BaseParams, FinetuneParams, ParamsError, load_params
from warmstart.data.records import Manifest, image_dataset
from warmstart.inference.predict import load_predictor
from warmstart.inference.recorded import class_probabilities, read_predictions
from warmstart.layout import MODEL_FILE, PREFIX_INFO_FILE
from warmstart.modeling.backbones import ARCHITECTURES, BACKBONES
from warmstart.modeling.cache_keys import StaleCacheError
from warmstart.modeling.model import (
    ModelError,
    assemble_classifier,
    build_base,
    family_of,
    find_base,
    fine_tune_index,
    head_layers,
    load_model,
    pooled_features,
    save_model,
    sublayers,
    unfreeze_from,
)
from warmstart.modeling.prefix_cache import check_prefix
from warmstart.modeling.surgery import boundary_tensors, prefix_model, top_model
from warmstart.stages.export import export_saved_model, write_tflite
from warmstart.stages.features import one_pass_extractor
from warmstart.stages.model_card import base_text, cut_text, header

SIZE = 32
#: The ``keras.applications`` module of each family: its ``preprocess_input`` is Keras' own
#: statement of the input each family expects (the identity where the base scales by itself).
KERAS_MODULES = {"MobileNetV2": "mobilenet_v2", "MobileNetV3Small": "mobilenet_v3",
                 "MobileNetV3Large": "mobilenet_v3", "EfficientNetV2B0": "efficientnet_v2",
                 "EfficientNetV2B1": "efficientnet_v2", "EfficientNetV2B2": "efficientnet_v2",
                 "EfficientNetV2B3": "efficientnet_v2", "ResNet50V2": "resnet_v2",
                 "ConvNeXtTiny": "convnext"}
#: Export (SavedModel + TFLite) per family took 10-50 s on 2 CPU cores (MobileNetV3Small 11,
#: MobileNetV2 13, MobileNetV3Large 14, ResNet50V2 16, ConvNeXtTiny 17, EfficientNetV2 B0-B3 29,
#: 40, 39, 49). The members of a family share its layers and its preprocessing, so one export
#: per family (its first, smallest member) tests the export path; every member still builds,
#: caches exactly and loads its weights below. These run with the slow tests only
#: (MobileNetV2's export is also test_export.py's).
FIRST_OF_EACH_FAMILY: dict[str, str] = {}
for _name in ARCHITECTURES:
    FIRST_OF_EACH_FAMILY.setdefault(KERAS_MODULES[_name], _name)
EXPORTED = tuple(FIRST_OF_EACH_FAMILY.values())
SLOW_EXPORTS = {"MobileNetV2", "ResNet50V2"}


def variant(architecture: str, weights: str = "none") -> BaseParams:
    return BaseParams(architecture=architecture, alpha=1.0, weights=weights, sha256=None)


def pixels(count: int, seed: int) -> np.ndarray:
    """Images of different colours, with noise: pure noise images all look alike to a deep
    random base."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, (count, 1, 1, 3))
    noise = rng.normal(0, 40, (count, SIZE, SIZE, 3))
    return np.clip(colours + noise, 0, 255).astype("float32")


#: The images of every per-family comparison, and the BatchNorm calibration batch.
IMAGES = pixels(8, seed=1)


def calibrate(base: keras.Model) -> keras.Model:
    """Store the BatchNorm statistics of ``IMAGES`` (momentum 0 for one training call), each
    variance at least its layer's median: a near-constant channel would otherwise get a gain of
    up to 1/sqrt(epsilon) and amplify float32 rounding past export's parity bound."""
    norms = [layer for layer in sublayers(base)
             if isinstance(layer, keras.layers.BatchNormalization)]
    scaled = IMAGES
    if family_of(base).scaling == "unit":
        scaled = scaled / 127.5 - 1.0
    base.trainable = True
    for layer in norms:
        layer.momentum = 0.0
    base(scaled, training=True)
    for layer in norms:
        layer.momentum = 0.99
        variance = keras.ops.convert_to_numpy(layer.moving_variance)
        layer.moving_variance.assign(np.maximum(variance, np.median(variance)))
    base.trainable = False
    return base


def classifier(architecture: str, tmp_path: Path) -> keras.Model:
    """A calibrated base and a 3-class head whose logits are about unit size (not saturated)."""
    keras.utils.set_random_seed(0)
    base = calibrate(build_base(SIZE, variant(architecture), tmp_path))
    model = assemble_classifier(base, head_layers(3, dropout=0.0))
    pooled = keras.ops.convert_to_numpy(pooled_features(base)(IMAGES))
    dense = model.get_layer("head_dense")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / np.sqrt(np.mean(pooled**2)), bias])
    return model


@functools.cache
def shared_classifier(architecture: str) -> keras.Model:
    """One classifier per family for the tests that leave it as it is."""
    return classifier(architecture, Path.cwd())  # no weights file: the root is not read


@functools.cache
def reference(architecture: str) -> types.SimpleNamespace:
    """The shared classifier's outputs and pooled features on ``IMAGES`` (inference), computed
    once: the reference of the per-family comparisons."""
    model = shared_classifier(architecture)
    pooled = keras.Model(model.input, model.get_layer("pool").output)(IMAGES)
    return types.SimpleNamespace(outputs=keras.ops.convert_to_numpy(model(IMAGES)),
                                 pooled=keras.ops.convert_to_numpy(pooled))


def params_error(tmp_path: Path, dataset: Path, **overrides: dict) -> ParamsError:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(dataset, **overrides)))
    with pytest.raises(ParamsError) as caught:
        load_params(tmp_path / "params.yaml")
    return caught.value


# ---- params.yaml ----------------------------------------------------------------------------

def test_unknown_architecture_lists_the_valid_ones(tmp_path: Path, dataset: Path) -> None:
    error = params_error(tmp_path, dataset, base={"architecture": "ResNet9000"})
    assert error.key == "base.architecture" and "'ResNet9000'" in str(error)
    assert all(name in str(error) for name in ARCHITECTURES)


def test_alpha_is_refused_where_it_does_not_apply(tmp_path: Path, dataset: Path) -> None:
    error = params_error(tmp_path, dataset, base={"architecture": "ResNet50V2", "alpha": 0.35})
    assert error.key == "base.alpha"
    assert "ResNet50V2 has no width multiplier" in str(error) and "base.alpha: 1.0" in str(error)
    assert "MobileNetV3Small" in str(error)  # where alpha does apply


def test_imagenet_weights_follow_the_family(tmp_path: Path, dataset: Path) -> None:
    """MobileNetV3 has ImageNet weights for alpha 0.75 and 1.0 only; EfficientNetV2, unlike
    MobileNetV2, for any input size."""
    error = params_error(tmp_path, dataset, base={"architecture": "MobileNetV3Small",
                                                  "weights": "imagenet"})
    assert error.key == "base.alpha" and "(0.75, 1.0)" in str(error)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(dataset, base={
        "architecture": "EfficientNetV2B0", "alpha": 1.0, "weights": "imagenet"})))
    assert load_params(path).preprocess.image_size == SIZE


def test_missing_weights_file_names_the_architecture(tmp_path: Path, dataset: Path) -> None:
    error = params_error(tmp_path, dataset, base={"architecture": "ConvNeXtTiny", "alpha": 1.0,
                                                  "weights": "convnext.weights.h5"})
    assert error.key == "base.weights" and "file of ConvNeXtTiny without its top" in str(error)


@pytest.mark.parametrize("value", [100, "block_11_expand_relu", 0.65])
def test_fine_tune_at_takes_an_index_a_name_or_a_fraction(tmp_path: Path, dataset: Path,
                                                          value: int | str | float) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(dataset, finetune={"fine_tune_at": value})))
    assert load_params(path).finetune.fine_tune_at == value


@pytest.mark.parametrize(("value", "hint"), [(1.5, "fraction"), (0.0, "fraction"),
                                             (-3, "outside"), ("", "empty"), (True, "bool"),
                                             ([100], "list")])
def test_bad_fine_tune_at_names_the_key_and_the_three_forms(tmp_path: Path, dataset: Path,
                                                            value: object, hint: str) -> None:
    error = params_error(tmp_path, dataset, finetune={"fine_tune_at": value})
    assert error.key == "finetune.fine_tune_at" and hint in str(error)
    assert "layer index" in str(error) and "layer name" in str(error)


def test_an_index_past_the_family_layers_fails_when_params_are_read(tmp_path: Path,
                                                                    dataset: Path) -> None:
    error = params_error(tmp_path, dataset, base={"architecture": "ConvNeXtTiny", "alpha": 1.0},
                         finetune={"fine_tune_at": 140})
    assert error.key == "finetune.fine_tune_at"
    assert "133 layers: use 0 to 132" in str(error)
    assert "'convnext_tiny_stage_2_block_7_pointwise_conv_2', layer 100" in str(error)


# ---- resolving fine_tune_at against the base -------------------------------------------------

@pytest.fixture(scope="module")
def mobilenet() -> keras.Model:
    return find_base(shared_classifier("MobileNetV2"))


@pytest.mark.parametrize(("value", "index"), [(100, 100), ("block_11_expand_relu", 100),
                                              (0.65, 100), (0.5, 77), (0, 0), (153, 153)])
def test_fine_tune_index_resolves_each_form(mobilenet: keras.Model, value: int | str | float,
                                            index: int) -> None:
    assert fine_tune_index(mobilenet, value) == index
    assert fine_tune_index(mobilenet, fine_tune_index(mobilenet, value)) == index


@pytest.mark.parametrize(("value", "problem"), [
    ("block_99_relu", "'block_99_relu', which names no layer of the mobilenetv2_1.00_32 base"),
    (154, "is 154, layer 154: outside the layers"), (0.999, "is 0.999, layer 154: outside")])
def test_a_cut_outside_the_base_names_the_key_count_and_an_example(
        mobilenet: keras.Model, value: int | str | float, problem: str) -> None:
    with pytest.raises(ParamsError) as caught:
        fine_tune_index(mobilenet, value)
    assert caught.value.key == "finetune.fine_tune_at" and problem in str(caught.value)
    assert "The base has 154 layers: give an index 0 to 153" in str(caught.value)
    assert "'block_11_expand_relu', layer 100" in str(caught.value)


def test_the_surgery_and_unfreezing_resolve_the_same_cut(tmp_path: Path) -> None:
    model = classifier("MobileNetV2", tmp_path)
    base = find_base(model)
    by_name = [t.name for t in boundary_tensors(base, "block_11_expand_relu")]
    assert by_name == [t.name for t in boundary_tensors(base, 100)]
    assert by_name == [t.name for t in boundary_tensors(base, 0.65)]
    assert unfreeze_from(base, "block_11_expand_relu") == unfreeze_from(base, 100)
    assert [layer.trainable for layer in base.layers].index(True) == 100


# ---- the registry, per family -----------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_registry_row_matches_keras(architecture: str) -> None:
    """Layer count, layer 100, model name, and the input scaling: the classifier on raw pixels
    computes what Keras' own ``preprocess_input`` + the base compute."""
    family, model = BACKBONES[architecture], shared_classifier(architecture)
    base = find_base(model)
    assert family_of(base) is family
    assert len(base.layers) == family.layers and base.layers[100].name == family.layer_100
    assert (model.layers[1].name == "scale_to_unit") == (family.scaling == "unit")
    module = getattr(keras.applications, KERAS_MODULES[architecture])
    expected = keras.ops.mean(base(module.preprocess_input(IMAGES.copy())), axis=(1, 2))
    # x / 127.5 - 1 vs x * (1 / 127.5) - 1: float32 rounding, not another scaling (off by O(1))
    np.testing.assert_allclose(reference(architecture).pooled, expected, rtol=1e-3, atol=1e-3)


def test_a_model_without_a_known_base_is_refused() -> None:
    inputs = keras.Input((SIZE, SIZE, 3))
    inner = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs), name="mystery_net")
    outer = keras.Model(inputs, inner(inputs))
    assert family_of(inner) is None
    with pytest.raises(ModelError, match=r"no base of warmstart's families \(MobileNetV2, "):
        find_base(outer)


def test_readme_table_lists_every_family_with_its_facts() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for family in BACKBONES.values():
        row = next((line for line in readme.splitlines()
                    if line.startswith(f"| `{family.name}` |")), "")
        assert f"| {family.native_size} |" in row and f"| {family.layers} |" in row, family.name


# ---- exact caches, per family ----------------------------------------------------------------

def cuts_of(base: keras.Model) -> list[int | float | str]:
    """A few cuts, plus the first whose boundary holds an operation that is not a layer."""
    cuts: list[int | float | str] = [1, 0.3, BACKBONES[family_of(base).name].layer_100, 0.9,
                                     len(base.layers) - 1]
    for index in range(2, len(base.layers)):
        producers = [t._keras_history.operation for t in boundary_tensors(base, index)]
        if any(not isinstance(op, keras.layers.Layer) for op in producers):
            return [*cuts, index]
    return cuts


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_prefix_then_top_computes_the_classifier(architecture: str) -> None:
    model, full = shared_classifier(architecture), reference(architecture).outputs
    base = find_base(model)
    assert full.std(axis=0).max() > 1e-3, "degenerate model: the comparison would prove nothing"
    for cut in cuts_of(base):
        split = top_model(model, cut)(prefix_model(base, cut)(IMAGES))
        np.testing.assert_allclose(split, full, atol=1e-5, err_msg=f"cut {cut!r}")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_one_pass_gives_the_classifiers_pooled_features_and_the_prefix(architecture: str) -> None:
    base = find_base(shared_classifier(architecture))
    pooled, *boundary = one_pass_extractor(base, 100)(IMAGES)
    np.testing.assert_allclose(pooled, pooled_features(base)(IMAGES), atol=1e-5)
    np.testing.assert_allclose(pooled, reference(architecture).pooled, atol=1e-5)
    prefix = prefix_model(base, 100)(IMAGES)
    for ours, theirs in zip(boundary, prefix, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_classifier_loads_in_safe_mode_and_fine_tunes_in_inference_mode(
        architecture: str, tmp_path: Path) -> None:
    """Saved and read back (safe mode), the classifier computes what it did, also with
    training=True. Then the read-back copy (a model of its own: the shared one stays frozen) is
    unfrozen from layer 100: no BatchNorm trains, and training=True still computes what
    inference does (no batch statistics, no dropout: Keras 3.3 passes fit's training=True to
    the base)."""
    expected = reference(architecture).outputs
    save_model(shared_classifier(architecture), tmp_path / MODEL_FILE)
    model = load_model(tmp_path / MODEL_FILE)
    base = find_base(model)
    assert family_of(base) is BACKBONES[architecture]
    np.testing.assert_allclose(model(IMAGES), expected, atol=1e-6, err_msg="read back")
    np.testing.assert_allclose(model(IMAGES, training=True), expected, atol=1e-6,
                               err_msg="read back, training=True")
    unfreeze_from(base, 100)
    assert not any(layer.trainable for layer in sublayers(base)
                   if isinstance(layer, keras.layers.BatchNormalization)), "a BatchNorm trains"
    assert all(not layer.trainable for layer in base.layers[:100])
    assert model.trainable_weights
    np.testing.assert_allclose(model(IMAGES, training=True), expected, atol=1e-6,
                               err_msg="unfrozen from layer 100, training=True")


@pytest.mark.parametrize("architecture", [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW_EXPORTS else name
    for name in EXPORTED])
def test_classifier_exports_within_the_float32_bound(architecture: str, tmp_path: Path) -> None:
    """The export stage's SavedModel and TFLite float32 agree with Keras (export's bound)."""
    model, expected = shared_classifier(architecture), reference(architecture).outputs
    export_saved_model(model, tmp_path / "saved_model", SIZE)
    write_tflite(tmp_path / "saved_model", tmp_path / "model.tflite", quantize=False)
    assert expected.std(axis=0).max() > 1e-3, "degenerate model: the comparison proves nothing"
    for artefact in (tmp_path / "saved_model", tmp_path / "model.tflite"):
        got = load_predictor(artefact)(IMAGES)
        assert np.abs(got - expected).max() <= 1e-4, artefact.name


# ---- weights -----------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_weights_file_loads_for_every_family(architecture: str, tmp_path: Path) -> None:
    source = find_base(shared_classifier(architecture))
    source.save_weights(tmp_path / "base.weights.h5")
    loaded = build_base(SIZE, variant(architecture, str(tmp_path / "base.weights.h5")), tmp_path)
    for ours, theirs in zip(loaded.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert not loaded.trainable


def test_a_weights_file_of_another_family_fails_naming_base_weights(tmp_path: Path) -> None:
    find_base(shared_classifier("MobileNetV3Small")).save_weights(tmp_path / "small.weights.h5")
    with pytest.raises(ModelError, match=r"MobileNetV3Large\(alpha=1.0\) weights from .*small"
                                         r".*could not be loaded.*Check that base.weights "
                                         r"holds MobileNetV3Large weights"):
        build_base(SIZE, variant("MobileNetV3Large", str(tmp_path / "small.weights.h5")),
                   tmp_path)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_offline_imagenet_download_names_base_weights(architecture: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from keras.src.utils import file_utils

    def unreachable(*args: object, **kwargs: object) -> str:
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- "  # noqa: TRY002
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", unreachable)
    with pytest.raises(ModelError, match=rf"base.weights is `imagenet`.*{architecture}.*local "
                                         rf"Keras weights file of {architecture} without its top"):
        build_base(SIZE, variant(architecture, "imagenet"), tmp_path)


# ---- the model card ---------------------------------------------------------------------------

def test_model_card_names_the_architecture(tmp_path: Path, dataset: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(dataset, base={
        "architecture": "ConvNeXtTiny", "alpha": 1.0}, finetune={"fine_tune_at": 0.75})))
    card = header(load_params(path), types.SimpleNamespace(classes=["a", "b"], image_size=SIZE))
    assert "ConvNeXtTiny (base weights `none`) with a GlobalAveragePooling" in card
    assert "the top 25% of the base's layers" in card
    assert base_text(variant("MobileNetV2")) == "MobileNetV2 (alpha 1.0, base weights `none`)"
    assert cut_text("block_11_expand_relu") == "base layers from `block_11_expand_relu` on"
    assert cut_text(100) == "base layers 100+"


# ---- the stages, with another family -----------------------------------------------------------

@pytest.mark.parametrize("architecture", ["MobileNetV3Small",
                                          pytest.param("ConvNeXtTiny", marks=pytest.mark.slow)])
def test_stages_cache_exactly_with_another_family_and_a_named_cut(
        architecture: str, tmp_path: Path) -> None:
    """features -> transfer -> finetune with the cut given as a layer name: the prefix cache
    records the resolved index, the same cut as an index keeps it valid, another cut does not,
    and the recorded predictions are the saved model's outputs on the images."""
    family = BACKBONES[architecture]
    params = prepare_project(tmp_path, upto="finetune", skip_validation=True,
                             base={"architecture": architecture, "alpha": 1.0},
                             transfer={"epochs": 1},  # one epoch each: the caches are the point
                             finetune={"fine_tune_at": family.layer_100, "epochs": 1,
                                       "cache_dtype": "float32"})
    info = json.loads((params.path("prefix") / PREFIX_INFO_FILE).read_text())
    assert info["fine_tune_at"] == info["parts"]["fine_tune_at"] == 100
    features = json.loads((params.path("features") / "features.json").read_text())
    assert features["architecture"] == architecture
    manifest = Manifest.read(params.path("processed"))
    transfer = find_base(load_model(params.path("transfer_model") / MODEL_FILE))
    same = FinetuneParams(fine_tune_at=100, epochs=1, learning_rate=1e-3, schedule="cosine",
                          patience=None, cache_dtype="float32")
    check_prefix(params.path("prefix"), manifest, transfer, same)
    with pytest.raises(StaleCacheError, match="fine_tune_at"):
        check_prefix(params.path("prefix"), manifest, transfer,
                     FinetuneParams(fine_tune_at=0.5, epochs=1, learning_rate=1e-3,
                                    schedule="cosine", patience=None, cache_dtype="float32"))
    model = load_model(params.path("finetune_model") / MODEL_FILE)
    images = next(iter(image_dataset(manifest, "validation", batch_size=1000, cache=False)))[0]
    recorded = read_predictions(params.path("finetune_predictions"))["validation"]
    np.testing.assert_allclose(recorded.probabilities,
                               class_probabilities(model.predict(images, verbose=0)), atol=1e-5)
