"""Stage `transfer`: train the classification head on the frozen base's cached features.

Training on ``paths.features`` is exactly training the full model with the base frozen and in
inference mode (no augmentation), at a tiny fraction of the cost. The trained head layers are
then attached to the same base, so ``model.keras`` is the complete model on raw pixels. Its
validation-split predictions go to ``paths.transfer_predictions`` (``inference/recorded.py``):
the trained head on the cached validation features, i.e. the full model's outputs.
With ``augment`` on, every epoch sees different images, so the cache cannot be used: the full
model (base frozen) is trained on augmented images instead, and the log says so. Every epoch is
backed up under ``paths.checkpoints``: a re-run after a crash resumes at the next epoch, with the
same result as an uninterrupted run (``modeling/training.py``, EpochBackup).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.config.params import Params
from warmstart.data.records import Manifest, without_autotuning
from warmstart.layout import BASE_FILE, FEATURES_INFO_FILE, MODEL_FILE
from warmstart.modeling.augment import augmented_training
from warmstart.modeling.feature_cache import check_features, load_features
from warmstart.modeling.model import (
    assemble_classifier,
    compile_model,
    head_layers,
    head_model,
    load_model,
    save_model,
)
from warmstart.modeling.training import (
    RESULT_FILES,
    EpochBackup,
    fit_resumable,
    recorded_key,
    run_fingerprint,
    start_training,
    write_results,
)

logger = logging.getLogger(__name__)

#: The params sections a transfer backup depends on (dvc.yaml's params of the stage, and data).
SECTIONS = ("data", "base", "head", "train", "transfer", "augment")


def run_transfer(params: Params) -> Path:
    strategy, manifest = start_training(params.train, params.path("processed"))
    with strategy.scope():
        model, backup, outputs = train_classifier(params, manifest)
        save_model(model, params.path("transfer_model") / MODEL_FILE)
    files = {kind: params.path(f"transfer_{kind}") for kind in RESULT_FILES}
    metrics = write_results(files, manifest, params.data.validation_split, outputs, backup.rows)
    backup.clean()
    logger.info("transfer: %s", metrics)
    return params.path("transfer_model") / MODEL_FILE


def train_classifier(params: Params, manifest: Manifest
                     ) -> tuple[keras.Model, EpochBackup, np.ndarray]:
    """(classifier with its head trained, backup, its outputs on the validation split).

    Call inside the strategy's scope."""
    base = load_model(params.path("features") / BASE_FILE)
    base.trainable = False
    check_features(params.path("features"), manifest, base, params.base, params.root)
    layers = head_layers(len(manifest.classes), params.head.dropout)
    model = assemble_classifier(base, layers)
    if params.augment.enabled:
        backup, outputs = train_augmented(params, model, manifest)
    else:
        splits = (params.data.train_split, params.data.validation_split)
        backup, outputs = train_head(params, layers, len(manifest.classes), splits)
    compile_model(model, len(manifest.classes), params.transfer.learning_rate)
    return model, backup, outputs


def transfer_backup(params: Params, train: tf.data.Dataset) -> EpochBackup:
    """Per-epoch backup of this run (resumed after a crash, discarded if params/inputs changed)."""
    inputs = {"features": recorded_key(params.path("features") / FEATURES_INFO_FILE)}
    fingerprint = run_fingerprint(params, "transfer", SECTIONS, inputs)
    return EpochBackup(params.path("checkpoints") / "transfer", "transfer", fingerprint, train,
                       (0, params.transfer.epochs))


def train_head(params: Params, layers: list[keras.layers.Layer], num_classes: int,
               splits: tuple[str, str]) -> tuple[EpochBackup, np.ndarray]:
    x_train, y_train = load_features(params.path("features"), splits[0])
    x_val, y_val = load_features(params.path("features"), splits[1])
    logger.info("transfer: training the head on cached features (%d + %d images, %d dims)",
                len(y_train), len(y_val), x_train.shape[1])
    head = head_model(x_train.shape[1], layers)
    compile_model(head, num_classes, params.transfer.learning_rate)
    batch = params.train.batch_size
    train_data = feature_dataset(x_train, y_train, batch, seed=params.train.seed)
    val_data = feature_dataset(x_val, y_val, batch, seed=None)
    backup = transfer_backup(params, train_data)
    fit_resumable(head, train_data, val_data, backup)
    return backup, head.predict(val_data, verbose=0)


def train_augmented(params: Params, model: keras.Model, manifest: Manifest
                    ) -> tuple[EpochBackup, np.ndarray]:
    """The whole classifier (base frozen) on augmented images: no cache can hold them."""
    splits = (params.data.train_split, params.data.validation_split)
    training, train, validation = augmented_training(
        model, params.augment, manifest, splits, params.train.batch_size, params.train.seed,
        "transfer")
    compile_model(training, len(manifest.classes), params.transfer.learning_rate)
    backup = transfer_backup(params, train)
    fit_resumable(training, train, validation, backup)
    return backup, model.predict(validation, verbose=0)


def feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int,
                    seed: int | None) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((features, labels))
    if seed is not None:
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return without_autotuning(data.batch(batch_size).prefetch(tf.data.AUTOTUNE))
