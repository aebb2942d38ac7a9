"""The classifier: a frozen ``base.architecture`` base + GlobalAveragePooling + Dropout + Dense.

The saved model takes raw 0-255 RGB pixels: the input scaling the family expects is part of the
model, either a ``scale_to_unit`` layer in front of the base or the family's own preprocessing
layers inside it (``modeling/backbones.py``). The base is called with ``training=False``; its
BatchNorm layers are never trainable and its dropout is off, so it stays in inference mode, also
while fine-tuning.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import keras

from warmstart.atomic import atomic_path
from warmstart.config.params import BaseParams, FinetuneParams, ParamsError
from warmstart.errors import WarmstartError
from warmstart.hashing import sha256_of
from warmstart.modeling.backbones import BACKBONES, Backbone

#: ``finetune.fine_tune_at`` as params.yaml holds it: a layer index, a layer name or a fraction.
FineTuneAt = int | float | str
#: What the optimizer is given: a fixed rate or a per-step schedule.
LearningRate = float | keras.optimizers.schedules.LearningRateSchedule

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
    """The ``base.architecture`` family without its top, frozen, dropout off. A wrong weights
    file fails loudly."""
    family = BACKBONES[base.architecture]
    weights = resolve_weights(base, root)
    model = construct(family, image_size, base.alpha, weights)
    without_dropout(model)
    model.trainable = False
    return model


def construct(family: Backbone, image_size: int, alpha: float, weights: str | None
              ) -> keras.Model:
    """Call the family's ``keras.applications`` constructor; Keras' failures say what to fix.

    The input is named as Keras names the first one of a process: left to Keras, a base built
    after other models in the same process (tests, the Python API, a notebook) would be saved
    as ``input_layer_3`` and its ``base.keras`` would differ from a stage process's."""
    options = {"alpha": alpha} if family.has_alpha else {}
    variant = f"{family.name}(alpha={alpha})" if family.has_alpha else family.name
    shape = (image_size, image_size, 3)
    try:
        return getattr(keras.applications, family.name)(
            input_shape=shape, input_tensor=keras.Input(shape, name="input_layer"),
            include_top=False, weights=weights, **options)
    except (ValueError, OSError) as exc:
        reason = str(exc).split("\n\n")[0].rstrip(":")  # not Keras' list of every layer
        raise ModelError(f"Could not load {variant} weights from {weights}: {reason}. Check that "
                         f"base.weights holds {family.name} weights without the top (and "
                         "base.architecture and base.alpha match the file).") from exc
    except Exception as exc:  # Keras' download (get_file) raises a bare Exception
        if weights != "imagenet" or "URL fetch failure" not in str(exc):
            raise
        raise ModelError(f"base.weights is `imagenet`, but Keras could not download the ImageNet "
                         f"weights of {variant} at {image_size} px: {exc}. Without internet, "
                         f"point base.weights at a local Keras weights file of {family.name} "
                         "without its top (e.g. one saved by `model.save_weights` on a machine "
                         "with internet): `dvc exp run -S base.weights=path/to/"
                         f"{family.name.lower()}_no_top.weights.h5`.") from exc


def without_dropout(base: keras.Model) -> None:
    """Set every dropout rate inside ``base`` to 0 (EfficientNetV2's stochastic depth).

    The base runs in inference mode, where dropout is off anyway, but Keras 3.3 lets an outer
    ``fit`` (training=True) override the ``training=False`` the classifier passes to the base
    (``unfreeze_from``), also for frozen layers: the cached features would then no longer be
    what training the whole classifier computes. A rate of 0 is inference mode for good.
    """
    for layer in sublayers(base):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0


def sublayers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of ``model``, those of nested models too (ConvNeXt nests Sequentials)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(sublayers(layer))
    return found


def family_of(base: keras.Model) -> Backbone | None:
    """The family a (nested) model was built from, by the name Keras gives it; None for others."""
    return next((family for family in BACKBONES.values()
                 if base.name.startswith(family.model_name)), None)


def head_layers(num_classes: int, dropout: float) -> list[keras.layers.Layer]:
    """Dropout + Dense: sigmoid unit for 2 classes, softmax over classes otherwise."""
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    return [keras.layers.Dropout(dropout, name="head_dropout"),
            keras.layers.Dense(units, activation=activation, name="head_dense")]


def scale_to_unit() -> keras.layers.Layer:
    """0-255 pixels -> [-1, 1], the range MobileNetV2 and ResNet50V2 were trained on."""
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit")


def base_input(base: keras.Model, pixels: keras.KerasTensor) -> keras.KerasTensor:
    """Raw 0-255 pixels as ``base`` takes them: scaled to [-1, 1] by a ``scale_to_unit`` layer
    for the families without preprocessing of their own, as they are for the others."""
    family = family_of(base)
    if family is None:
        raise ModelError(f"{base.name!r} is no base of warmstart's families")
    return scale_to_unit()(pixels) if family.scaling == "unit" else pixels


def pooled_features(base: keras.Model) -> keras.Model:
    """Raw pixels -> the base's input scaling -> frozen base -> global average pool: the head's
    input."""
    inputs = keras.Input(shape=base.input_shape[1:], name="image")
    features = base(base_input(base, inputs), training=False)
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


def fine_tune_rate(finetune: FinetuneParams, steps_per_epoch: int) -> LearningRate:
    """``finetune.learning_rate``, constant or (``schedule: cosine``) decayed to 0 along half a
    cosine over the stage's ``epochs x steps_per_epoch`` optimizer steps.

    The optimizer counts its steps and the per-epoch backups keep its state, so a resumed run
    continues the schedule where the crashed one stopped."""
    if finetune.schedule == "constant" or finetune.epochs == 0:
        return finetune.learning_rate
    return keras.optimizers.schedules.CosineDecay(finetune.learning_rate,
                                                  decay_steps=finetune.epochs * steps_per_epoch)


def compile_model(model: keras.Model, num_classes: int, learning_rate: LearningRate,
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
    """The base sub-model (of any family in ``modeling/backbones.py``) inside a classifier."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and family_of(layer) is not None:
            return layer
    raise ModelError(f"Model {model.name!r} has no base of warmstart's families "
                     f"({', '.join(BACKBONES)}); was it made by warmstart?")


def fine_tune_index(base: keras.Model, fine_tune_at: FineTuneAt) -> int:
    """``finetune.fine_tune_at`` as a layer index of ``base``: an index stays as it is, a layer
    name gives that layer's index, a fraction f in (0, 1) gives ``round(f * len(base.layers))``.

    The one place the three forms are resolved (the range checks need the built base)."""
    count = len(base.layers)
    if isinstance(fine_tune_at, str):
        names = [layer.name for layer in base.layers]
        if fine_tune_at not in names:
            raise _bad_cut(base, f"is {fine_tune_at!r}, which names no layer of the "
                           f"{base.name} base")
        return names.index(fine_tune_at)
    index = round(fine_tune_at * count) if isinstance(fine_tune_at, float) else fine_tune_at
    if not 0 <= index < count:
        raise _bad_cut(base, f"is {fine_tune_at!r}, layer {index}: outside the layers of the "
                       f"{base.name} base")
    return index


def _bad_cut(base: keras.Model, problem: str) -> ParamsError:
    layers = base.layers
    middle = min(100, len(layers) - 1)  # layer 100 has a stable name in every family
    return ParamsError("finetune.fine_tune_at", problem, (
        f"The base has {len(layers)} layers: give an index 0 to {len(layers) - 1}, a layer name "
        f"(e.g. {layers[middle].name!r}, layer {middle}) or a fraction of the layers in (0, 1)."))


def unfreeze_from(base: keras.Model, fine_tune_at: FineTuneAt) -> int:
    """Make layers ``fine_tune_at`` and up trainable, earlier ones frozen; return trainable count.

    BatchNorm layers stay frozen (nested ones too), which in Keras 3 keeps them in inference
    mode. The ``training=False`` the classifier passes to the base is NOT enough: Keras 3.3 lets
    an outer ``fit`` (training=True) override it, so trainable BatchNorm layers would use batch
    statistics and update their moving averages (``tests/test_stages.py`` and, per family,
    ``tests/test_backbones.py`` guard this; dropout is off for the same reason, see
    ``without_dropout``). Families with LayerNormalization instead (ConvNeXt) have no moving
    statistics: it normalises each image by itself, the same in training and inference, so its
    layers train like any other.
    """
    at = fine_tune_index(base, fine_tune_at)
    logger.info("%s: layers %d (%s) to %d trainable, BatchNorm frozen", base.name, at,
                base.layers[at].name, len(base.layers) - 1)
    base.trainable = True
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= at
    for layer in sublayers(base):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
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
