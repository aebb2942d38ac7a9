"""A hand-made colour classifier whose right answers are known (no training needed)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tests.helpers.images import CLASS_COLOURS, write_image
from warmstart.inference.predict import write_labels
from warmstart.layout import CLASSES_FILE

CLASSES = sorted(CLASS_COLOURS)  # birds (green), cats (red), dogs (blue)
SIZE = 32


def colour_model(classes: list[str] = CLASSES, scramble: bool = False) -> keras.Model:
    """Raw pixels -> [-1, 1] -> mean colour -> softmax: the class of the dominant channel.

    ``scramble`` rotates the class columns, so the model is wrong on every class.
    """
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(scaled)
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="head_dense")(pooled)
    model = keras.Model(inputs, outputs)
    weights = np.zeros((3, len(classes)), np.float32)
    for column, name in enumerate(classes):
        weights[int(np.argmax(CLASS_COLOURS[name])), column] = 10.0
    if scramble:
        weights = np.roll(weights, 1, axis=1)
    model.get_layer("head_dense").set_weights([weights, np.zeros(len(classes), np.float32)])
    return model


def calibrated_base(seed: int = 0, size: int = SIZE) -> keras.Model:
    """MobileNetV2 0.35 with random kernels and BatchNorm statistics of one random batch."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                          alpha=0.35, weights=None)
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0  # one training-mode call stores that batch's statistics
    base(np.random.default_rng(seed).uniform(-1, 1, (16, size, size, 3)).astype("float32"),
         training=True)
    for layer in norms:
        layer.momentum = 0.99
    return base


def save_colour_model(folder: Path, scramble: bool = False) -> Path:
    """:func:`colour_model` saved as ``folder/model.keras`` with its classes.json."""
    folder.mkdir(parents=True, exist_ok=True)
    colour_model(scramble=scramble).save(folder / "model.keras")
    write_labels(folder / CLASSES_FILE, CLASSES, SIZE, 0.5)
    return folder / "model.keras"


def write_colour_images(folder: Path) -> Path:
    """Two images per class (JPEG and PNG, odd sizes) in class folders, plus junk: a broken
    JPEG and a text file."""
    for seed, name in enumerate(CLASSES):
        write_image(folder / name / "a.jpg", CLASS_COLOURS[name], (50 + seed, 41), seed)
        write_image(folder / name / "b.png", CLASS_COLOURS[name], (23, 77), seed + 10, "PNG")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image: ignored, not an error")
    return folder
