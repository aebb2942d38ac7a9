"""Stage `finetune`: continue from the transfer checkpoint with the top of the base unfrozen.

Loads ``<transfer_model>/model.keras``, makes base layers ``finetune.fine_tune_at`` and up
trainable (BatchNorm stays in inference mode), recompiles with the lower
``finetune.learning_rate`` and trains ``finetune.epochs`` more epochs, continuing the epoch count
of the transfer stage. The frozen layers' outputs come from the prefix cache the `features` stage
writes (``paths.prefix``): only the trainable top (``modeling/surgery.py``: it shares its layers
with the classifier) runs each epoch, which computes exactly what training the whole classifier
would. With ``augment`` on, the cache is bypassed and the whole classifier trains on augmented
images. The full classifier is saved, and its validation-split predictions go to
``paths.finetune_predictions`` (the trained top on the float32 validation prefix: the full
model's outputs; ``inference/recorded.py``). Every epoch is backed up under
``paths.checkpoints``: a re-run after a crash resumes at the next epoch
(``modeling/training.py``, EpochBackup).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from warmstart.atomic import write_json
from warmstart.config.params import Params
from warmstart.data.records import Manifest, image_dataset
from warmstart.hashing import sha256_of
from warmstart.modeling.augment import describe, with_augmentation
from warmstart.modeling.distribute import make_strategy
from warmstart.modeling.model import compile_model, find_base, load_model, save_model, unfreeze_from
from warmstart.modeling.prefix_cache import INFO_FILE, check_prefix, prefix_dataset
from warmstart.modeling.surgery import top_model
from warmstart.modeling.training import (
    HISTORY_FIELDS,
    EpochBackup,
    final_metrics,
    fit_resumable,
    read_history,
    recorded_key,
    run_fingerprint,
    seed_everything,
    write_history,
)
from warmstart.stages.transfer import MODEL_FILE, write_validation_predictions

logger = logging.getLogger(__name__)

#: The params sections a finetune backup depends on (dvc.yaml's params of the stage, and data).
SECTIONS = ("data", "train", "finetune", "augment")


def run_finetune(params: Params) -> Path:
    strategy = make_strategy(params.train.strategy, params.train.batch_size)
    seed_everything(params.train.seed, params.train.deterministic)
    manifest = Manifest.read(params.path("processed"))
    with strategy.scope():
        model = load_model(params.path("transfer_model") / MODEL_FILE)
        trainable = unfreeze_from(find_base(model), params.finetune.fine_tune_at)
        logger.info("finetune: %d trainable base layers (from layer %d), %d trainable weights",
                    trainable, params.finetune.fine_tune_at, len(model.trainable_weights))
        done = len(read_history(params.path("transfer_history")))
        training, train, validation = training_setup(params, model, manifest)
        rows, backup = fit_more(params, training, (train, validation), done)
        save_model(model, params.path("finetune_model") / MODEL_FILE)
        outputs = training.predict(validation, verbose=0)
    write_validation_predictions(params, manifest, "finetune", outputs)
    write_history(params.path("finetune_history"), rows)
    write_json(params.path("finetune_metrics"), final_metrics(rows))
    if backup is not None:
        backup.clean()
    logger.info("finetune: %s", final_metrics(rows))
    return params.path("finetune_model") / MODEL_FILE


def training_setup(params: Params, model: keras.Model, manifest: Manifest
                   ) -> tuple[keras.Model, tf.data.Dataset | None, tf.data.Dataset]:
    """(model to fit, training data, validation data): the cached top, or full augmented images."""
    batch, seed = params.train.batch_size, params.train.seed
    train_split, val_split = params.data.train_split, params.data.validation_split
    if params.augment.enabled:
        logger.warning("finetune: augmentation is on (%s): the frozen-prefix cache is BYPASSED; "
                       "every epoch runs the whole base on augmented images (much slower)",
                       describe(params.augment))
        training = with_augmentation(model, params.augment, seed)
        train = image_dataset(manifest, train_split, batch, shuffle_seed=seed)
        validation = image_dataset(manifest, val_split, batch)
    else:
        check_prefix(params, manifest, find_base(model))
        training = top_model(model, params.finetune.fine_tune_at)
        folder = params.path("prefix")
        logger.info("finetune: training the layers from %d on the cached frozen prefix (%s)",
                    params.finetune.fine_tune_at, folder)
        train = prefix_dataset(folder, train_split, batch, seed)
        validation = prefix_dataset(folder, val_split, batch, None)
    compile_model(training, len(manifest.classes), params.finetune.learning_rate)
    return training, train, validation


def fit_more(params: Params, model: keras.Model, data: tuple[tf.data.Dataset, tf.data.Dataset],
             done: int) -> tuple[list[dict], EpochBackup | None]:
    """Train ``finetune.epochs`` epochs after the ``done`` transfer epochs: (history rows, backup).

    Resumes from the latest per-epoch backup of this same run, if a previous attempt crashed.
    """
    train, validation = data
    if params.finetune.epochs == 0:
        logger.info("finetune.epochs is 0: the transfer model is kept as it is")
        values = model.evaluate(validation, verbose=0, return_dict=True)
        row = {"stage": "finetune", "epoch": done, "loss": float("nan"),
               "accuracy": float("nan"), "val_loss": values["loss"],
               "val_accuracy": values["accuracy"]}
        return [{k: row[k] for k in HISTORY_FIELDS}], None
    backup = EpochBackup(params.path("checkpoints") / "finetune", "finetune",
                         finetune_fingerprint(params), train,
                         (done, done + params.finetune.epochs))
    return fit_resumable(model, train, validation, backup), backup


def finetune_fingerprint(params: Params) -> str:
    """This run's identity: params, the transfer model and history, the prefix cache's key.

    Regression: with augmentation on, the prefix cache is not read (and may be absent)."""
    bypassed = params.augment.enabled  # then training reads images, not the prefix cache
    inputs = {"prefix": "bypassed" if bypassed else recorded_key(params.path("prefix") / INFO_FILE),
              "transfer_model": sha256_of(params.path("transfer_model") / MODEL_FILE),
              "transfer_history": sha256_of(params.path("transfer_history"))}
    return run_fingerprint(params, "finetune", SECTIONS, inputs)
