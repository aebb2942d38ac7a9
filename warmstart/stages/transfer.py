"""Stage `transfer`: train the classification head on the frozen base's cached features.

Training on ``paths.features`` is exactly training the full model with the base frozen and in
inference mode (no augmentation), at a tiny fraction of the cost. The trained head layers are
then attached to the same base, so ``model.keras`` is the complete model on raw pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.atomic import write_json
from warmstart.dataset import Manifest
from warmstart.model import (
    assemble_classifier,
    compile_model,
    head_layers,
    head_model,
    load_model,
    save_model,
)
from warmstart.params import Params
from warmstart.stages.features import BASE_FILE, load_features
from warmstart.training import (
    EpochLogger,
    final_metrics,
    history_rows,
    seed_everything,
    write_history,
)

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


def run_transfer(params: Params) -> Path:
    seed_everything(params.train.seed)
    manifest = Manifest.read(params.path("processed"))
    train, validation = params.data.train_split, params.data.validation_split
    layers = head_layers(len(manifest.classes), params.head.dropout)
    history = train_head(params, layers, len(manifest.classes), (train, validation))
    base = load_model(params.path("features") / BASE_FILE)
    base.trainable = False
    model = assemble_classifier(base, layers)
    compile_model(model, len(manifest.classes), params.transfer.learning_rate)
    save_model(model, params.path("transfer_model") / MODEL_FILE)
    rows = history_rows("transfer", history, first_epoch=0)
    write_history(params.path("transfer_history"), rows)
    write_json(params.path("transfer_metrics"), final_metrics(rows))
    logger.info("transfer: %s", final_metrics(rows))
    return params.path("transfer_model") / MODEL_FILE


def train_head(params: Params, layers: list[keras.layers.Layer], num_classes: int,
               splits: tuple[str, str]) -> keras.callbacks.History:
    x_train, y_train = load_features(params.path("features"), splits[0])
    x_val, y_val = load_features(params.path("features"), splits[1])
    head = head_model(x_train.shape[1], layers)
    compile_model(head, num_classes, params.transfer.learning_rate)
    batch = params.train.batch_size
    train_data = feature_dataset(x_train, y_train, batch, seed=params.train.seed)
    val_data = feature_dataset(x_val, y_val, batch, seed=None)
    epochs = params.transfer.epochs
    return head.fit(train_data, validation_data=val_data, epochs=epochs, verbose=0,
                    callbacks=[EpochLogger("transfer", epochs)])


def feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int,
                    seed: int | None) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((features, labels))
    if seed is not None:
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)
