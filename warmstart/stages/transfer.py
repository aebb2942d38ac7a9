"""Stage `transfer`: train the classification head on the frozen base's cached features.

Training on ``paths.features`` is exactly training the full model with the base frozen and in
inference mode (no augmentation), at a tiny fraction of the cost. The trained head layers are then
attached to the same base, so ``model.keras`` is the complete model on raw pixels. Every choice is
made on the validation split: ``transfer.learning_rate: auto`` picks the head's rate from
``transfer.learning_rates`` by trials on the cached features (``modeling/lr_search.py``), and
training stops once ``train.monitor`` has not improved for ``transfer.patience`` epochs, keeping the
best epoch's weights (``modeling/stopping.py``). Once trained, the head's outputs on the cached
validation and test features (the full model's outputs) go to ``paths.transfer_predictions``
(``inference/recorded.py``): the test split never enters training. ``train.class_weight`` weighs the
training loss per class (``modeling/training.py``, class_weights). With ``augment`` on, every epoch
sees different images, so the cache cannot be used: the full model (base frozen) is trained on
augmented images instead, and the log says so. Every epoch is backed up under ``paths.checkpoints``:
a re-run after a crash resumes at the next epoch, with the same result as an uninterrupted run
(``modeling/training.py``, EpochBackup).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.atomic import write_json
from warmstart.config.params import Params
from warmstart.data.records import Manifest
from warmstart.layout import BASE_FILE, FEATURES_INFO_FILE, MODEL_FILE, SPLITS, TRAIN, VALIDATION
from warmstart.modeling.array_shards import ShardedArray
from warmstart.modeling.augment import augmented_training
from warmstart.modeling.distribute import worker_outputs
from warmstart.modeling.feature_cache import check_features, feature_dataset, open_features
from warmstart.modeling.lr_search import choose_learning_rate
from warmstart.modeling.model import (
    assemble_classifier,
    compile_model,
    head_layers,
    head_model,
    load_model,
    save_model,
)
from warmstart.modeling.stopping import Stopping
from warmstart.modeling.training import (
    RESULT_FILES,
    EpochBackup,
    class_weights,
    fit_resumable,
    predict_splits,
    recorded_key,
    run_fingerprint,
    seed_everything,
    start_training,
    write_results,
)

logger = logging.getLogger(__name__)

#: The params sections a transfer backup depends on (dvc.yaml's params of the stage, and data).
SECTIONS = ("data", "base", "head", "train", "transfer", "augment")


def run_transfer(params: Params) -> Path:
    strategy, manifest = start_training(params.train, params.path("processed"))
    params = worker_outputs(params, strategy, "transfer")
    with strategy.scope():
        base = checked_base(params, manifest)
    cached = {split: open_features(params.path("features"), split) for split in SPLITS}
    weights = class_weights(params.train, manifest)
    # Outside the strategy's scope: the trials' own loop runs on this process's device (every
    # worker of multi_worker makes the same, seeded choice).
    choice = choose_learning_rate(params, cached, len(manifest.classes), weights)
    with strategy.scope():
        model, backup, outputs = train_classifier(params, manifest, base, (cached, weights),
                                                  choice["learning_rate"])
        save_model(model, params.path("transfer_model") / MODEL_FILE)
    files = {kind: params.path(f"transfer_{kind}") for kind in RESULT_FILES}
    write_json(params.path("transfer_details"), choice)
    metrics = write_results(files, manifest, outputs, backup.rows, backup.stopping,
                            {"learning_rate": choice["learning_rate"]})
    backup.clean()
    logger.info("transfer: %s", metrics)
    return params.path("transfer_model") / MODEL_FILE


def checked_base(params: Params, manifest: Manifest) -> keras.Model:
    """The frozen base the features came from, after checking the cache is this data's and
    this base's. Call inside the strategy's scope."""
    base = load_model(params.path("features") / BASE_FILE)
    base.trainable = False
    check_features(params.path("features"), manifest, base, params.base, params.root)
    return base


def train_classifier(params: Params, manifest: Manifest, base: keras.Model,
                     data: tuple[dict[str, tuple[ShardedArray, np.ndarray]],
                                 dict[int, float] | None], rate: float
                     ) -> tuple[keras.Model, EpochBackup, dict[str, np.ndarray]]:
    """(classifier of ``base`` with its head trained at ``rate``, backup, its outputs on
    validation and test). ``data``: the features cache by split and the class weights. Call
    inside the strategy's scope."""
    cached, weights = data
    num_classes = len(manifest.classes)
    seed_everything(params.train.seed, params.train.deterministic)  # whatever the trials drew
    layers = head_layers(num_classes, params.head.dropout)
    model = assemble_classifier(base, layers)
    if params.augment.enabled:
        backup, outputs = train_augmented(params, model, manifest, weights, rate)
    else:
        backup, outputs = train_head(params, layers, cached, num_classes, weights, rate)
    compile_model(model, num_classes, rate, params.train.label_smoothing)
    return model, backup, outputs


def transfer_backup(params: Params, train: tf.data.Dataset) -> EpochBackup:
    """Per-epoch backup of this run (resumed after a crash, discarded if params/inputs changed)."""
    inputs = {"features": recorded_key(params.path("features") / FEATURES_INFO_FILE)}
    fingerprint = run_fingerprint(params, "transfer", SECTIONS, inputs)
    return EpochBackup(params.path("checkpoints") / "transfer", "transfer", fingerprint, train,
                       (0, params.transfer.epochs),
                       Stopping.of(params.train, params.transfer.patience))


def train_head(params: Params, layers: list[keras.layers.Layer],
               cached: dict[str, tuple[ShardedArray, np.ndarray]], num_classes: int,
               class_weight: dict[int, float] | None, rate: float
               ) -> tuple[EpochBackup, dict[str, np.ndarray]]:
    """Fit the head on the cached training features (``cached``: (features, labels) by split),
    monitoring validation; then its outputs on the validation and test features."""
    logger.info("transfer: training the head on cached features (%s images, %d dims)",
                {split: len(labels) for split, (_, labels) in cached.items()},
                cached[TRAIN][0].shape[1])
    head = head_model(cached[TRAIN][0].shape[1], layers)
    compile_model(head, num_classes, rate, params.train.label_smoothing)
    batch = params.train.batch_size
    data = {split: feature_dataset(*cached[split], batch,
                                   seed=params.train.seed if split == TRAIN else None)
            for split in SPLITS}
    backup = transfer_backup(params, data[TRAIN])
    fit_resumable(head, (data[TRAIN], data[VALIDATION]), backup, params.path("transfer_history"),
                  class_weight)
    return backup, predict_splits(head, data)


def train_augmented(params: Params, model: keras.Model, manifest: Manifest,
                    class_weight: dict[int, float] | None, rate: float
                    ) -> tuple[EpochBackup, dict[str, np.ndarray]]:
    """The whole classifier (base frozen) on augmented images: no cache can hold them."""
    training, data = augmented_training(model, params.augment, manifest, params.train.batch_size,
                                        params.train.seed, "transfer")
    compile_model(training, len(manifest.classes), rate, params.train.label_smoothing)
    backup = transfer_backup(params, data[TRAIN])
    fit_resumable(training, (data[TRAIN], data[VALIDATION]), backup,
                  params.path("transfer_history"), class_weight)
    return backup, predict_splits(model, data)
