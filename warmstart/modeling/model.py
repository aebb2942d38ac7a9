"""The classifier: MobileNetV2 base (ImageNet weights) + GlobalAveragePooling + Dense head.

The saved model takes raw 0-255 RGB pixels: the scaling MobileNetV2 expects ([-1, 1]) is a
layer inside the model. The base is called with ``training=False`` and its BatchNorm layers are
never trainable, so they stay in inference mode, also while fine-tuning.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import keras

from warmstart.atomic import atomic_path
from warmstart.config.params import BaseParams
from warmstart.errors import WarmstartError
from warmstart.hashing import sha256_of

logger = logging.getLogger(__name__)


class ModelError(WarmstartError):
    """A model or weights file is missing, wrong or unsafe."""


def resolve_weights(base: BaseParams, root: Path) -> str | None:
    """What to pass as ``weights=`` to Keras; verifies ``base.sha256`` when it is set."""
    if base.weights == "none":
        logger.warning("base.weights is `none`: the base starts from RANDOM weights. This is "
                       "for tests only; no transfer learning happens.")
        return None
    if base.weights == "imagenet":
        return "imagenet"
    path = base.weights_path(root)
    digest = sha256_of(path)
    if base.sha256 and digest != base.sha256.lower():
        raise ModelError(f"{path} has sha256 {digest}, but base.sha256 pins {base.sha256}. "
                         "Point base.weights at the right file or update base.sha256.")
    logger.info("Base weights %s (sha256 %s)", path, digest)
    return str(path)


def build_base(image_size: int, base: BaseParams, root: Path) -> keras.Model:
    """MobileNetV2 without its top, frozen. A wrong weights file fails loudly."""
    weights = resolve_weights(base, root)
    try:
        model = keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), include_top=False, alpha=base.alpha,
            weights=weights)
    except (ValueError, OSError) as exc:
        raise ModelError(f"Could not load MobileNetV2(alpha={base.alpha}) weights from "
                         f"{weights}: {exc}. Check base.weights and base.alpha match.") from exc
    except Exception as exc:  # Keras' download (get_file) raises a bare Exception
        if weights != "imagenet" or "URL fetch failure" not in str(exc):
            raise
        raise ModelError(f"base.weights is `imagenet`, but Keras could not download the ImageNet "
                         f"weights of MobileNetV2(alpha={base.alpha}) at {image_size} px: {exc}. "
                         "Without internet, point base.weights at a local Keras weights file of "
                         "MobileNetV2 without its top, e.g. `dvc exp run -S base.weights="
                         "path/to/mobilenet_v2_1.0_224_no_top.h5`.") from exc
    model.trainable = False
    return model


def head_layers(num_classes: int, dropout: float) -> list[keras.layers.Layer]:
    """Dropout + Dense: sigmoid unit for 2 classes, softmax over classes otherwise."""
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    return [keras.layers.Dropout(dropout, name="head_dropout"),
            keras.layers.Dense(units, activation=activation, name="head_dense")]


def scale_to_unit() -> keras.layers.Layer:
    """0-255 pixels -> [-1, 1], the range MobileNetV2 was trained on."""
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit")


def pooled_features(base: keras.Model) -> keras.Model:
    """Raw pixels -> [-1, 1] -> frozen base -> global average pool: the head's input."""
    inputs = keras.Input(shape=base.input_shape[1:], name="image")
    scaled = scale_to_unit()(inputs)
    features = base(scaled, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    return keras.Model(inputs, pooled, name="features")


def assemble_classifier(base: keras.Model, layers: list[keras.layers.Layer]) -> keras.Model:
    """The full model: ``pooled_features(base)`` followed by the (possibly trained) head layers."""
    extractor = pooled_features(base)
    outputs = extractor.output
    for layer in layers:
        outputs = layer(outputs)
    return keras.Model(extractor.input, outputs, name="warmstart_classifier")


def head_model(feature_dim: int, layers: list[keras.layers.Layer]) -> keras.Model:
    """The head alone, trained on cached pooled features; shares its layers with the classifier."""
    inputs = keras.Input(shape=(feature_dim,), name="pooled_features")
    outputs = inputs
    for layer in layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs, name="head")


def compile_model(model: keras.Model, num_classes: int, learning_rate: float,
                  label_smoothing: float) -> None:
    """RMSprop, as in the tutorial; loss and accuracy matching the head's activation."""
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy")]
    else:
        loss = SmoothedSparseCrossentropy(num_classes, label_smoothing)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate), loss=loss,
                  metrics=metrics)


@keras.saving.register_keras_serializable(package="warmstart")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy of integer labels with label smoothing: Keras 3.3's
    ``SparseCategoricalCrossentropy`` has no ``label_smoothing``. With 0 it equals it."""

    def __init__(self, num_classes: int, label_smoothing: float, **kwargs) -> None:
        super().__init__(name=kwargs.pop("name", "smoothed_sparse_crossentropy"), **kwargs)
        self.num_classes, self.label_smoothing = num_classes, label_smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"),
                                   self.num_classes)
        return keras.losses.categorical_crossentropy(labels, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing}


def find_base(model: keras.Model) -> keras.Model:
    """The MobileNetV2 sub-model inside a classifier."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name.startswith("mobilenetv2"):
            return layer
    raise ModelError(f"Model {model.name!r} has no MobileNetV2 base; was it made by warmstart?")


def unfreeze_from(base: keras.Model, fine_tune_at: int) -> int:
    """Make layers ``fine_tune_at`` and up trainable, earlier ones frozen; return trainable count.

    BatchNorm layers stay frozen, which in Keras 3 keeps them in inference mode. The
    ``training=False`` the classifier passes to the base is NOT enough: Keras 3.3 lets an outer
    ``fit`` (training=True) override it, so trainable BatchNorm layers would use batch
    statistics and update their moving averages (``tests/test_stages.py`` guards this).
    """
    if fine_tune_at >= len(base.layers):
        raise ModelError(f"finetune.fine_tune_at={fine_tune_at} but the base has only "
                         f"{len(base.layers)} layers.")
    base.trainable = True
    for index, layer in enumerate(base.layers):
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= fine_tune_at and not is_batch_norm
    return sum(layer.trainable for layer in base.layers)


def load_model(path: Path) -> keras.Model:
    """Load a .keras model with ``safe_mode=True`` (no arbitrary code from the file)."""
    if not path.is_file():
        raise ModelError(f"No model at {path}; run the stage that produces it (`dvc repro`).")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except ValueError as exc:
        raise ModelError(f"Refusing to load {path}: {exc}") from exc


def save_model(model: keras.Model, path: Path) -> None:
    """Save atomically (complete or absent) and reproducibly (same model, same bytes)."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        normalize_keras_archive(tmp)


#: Fixed timestamp for archive members (the zip format's earliest date).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def normalize_keras_archive(path: Path) -> None:
    """Make a .keras file a function of the model alone: Keras stamps the save time into
    ``metadata.json`` and the zip entry of the weights; drop the one and fix the other."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            archive.writestr(fixed, data)
