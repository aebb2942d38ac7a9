"""Stage `finetune`: continue from the transfer checkpoint with the top of the base unfrozen.

Loads ``<transfer_model>/model.keras``, makes base layers ``finetune.fine_tune_at`` and up trainable
(BatchNorm stays in inference mode: with a few thousand images, batch statistics of 128 would
replace ImageNet's; and Keras 3.3 would let ``fit`` override ``training=False``, see
``modeling/model.py``), recompiles with the lower ``finetune.learning_rate`` (by default decayed
to 0 along a cosine over the epochs, ``finetune.schedule``) and trains at most
``finetune.epochs`` more epochs, continuing the epoch count of the transfer stage, stopping early
after ``finetune.patience`` epochs without a better ``train.monitor`` on validation (the best
epoch's weights are kept). Whether the result beats the transfer model is decided on validation by
`evaluate` (the candidate, ``inference/candidate.py``). The frozen layers' outputs come from the
prefix cache the `features` stage writes (``paths.prefix``): only the trainable top
(``modeling/surgery.py``: it shares its layers with the classifier) runs each epoch, which computes
exactly what training the whole classifier would. With ``augment`` on, the cache is bypassed and the
whole classifier trains on augmented images. ``fit`` monitors the validation split, with
``train.class_weight`` on the training loss. The full classifier is saved, and its validation- and
test-split predictions (made after training: test never enters it) go to
``paths.finetune_predictions`` (the trained top on the float32 prefix: the full model's outputs;
``inference/recorded.py``). Every epoch is backed up under ``paths.checkpoints``: a re-run after a
crash resumes at the next epoch (``modeling/training.py``, EpochBackup).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import tensorflow as tf

from warmstart.config.params import Params
from warmstart.data.records import Manifest
from warmstart.hashing import sha256_of
from warmstart.layout import MODEL_FILE, PREFIX_INFO_FILE, SPLITS, TRAIN, VALIDATION
from warmstart.modeling.augment import augmented_training
from warmstart.modeling.distribute import worker_outputs
from warmstart.modeling.model import (
    LearningRate,
    compile_model,
    find_base,
    fine_tune_rate,
    load_model,
    save_model,
    unfreeze_from,
)
from warmstart.modeling.prefix_cache import check_prefix, prefix_dataset
from warmstart.modeling.stopping import Stopping
from warmstart.modeling.surgery import top_model
from warmstart.modeling.training import (
    RESULT_FILES,
    EpochBackup,
    class_weights,
    fit_resumable,
    history_row,
    predict_splits,
    recorded_key,
    run_fingerprint,
    start_training,
    write_results,
)

logger = logging.getLogger(__name__)

#: The params sections a finetune backup depends on (dvc.yaml's params of the stage, and data).
SECTIONS = ("data", "train", "finetune", "augment")


def run_finetune(params: Params) -> Path:
    strategy, manifest = start_training(params.train, params.path("processed"))
    params = worker_outputs(params, strategy, "finetune")
    with strategy.scope():
        model = load_model(params.path("transfer_model") / MODEL_FILE)
        trainable = unfreeze_from(find_base(model), params.finetune.fine_tune_at)
        logger.info("finetune: %d trainable base layers (from layer %s), %d trainable weights",
                    trainable, params.finetune.fine_tune_at, len(model.trainable_weights))
        done = json.loads(params.path("transfer_metrics").read_text())["epochs"]
        training, data = training_setup(params, model, manifest)
        weights = class_weights(params.train, manifest)
        rows, backup = fit_more(params, training, data, done, weights)
        save_model(model, params.path("finetune_model") / MODEL_FILE)
        outputs = predict_splits(training, data)
    files = {kind: params.path(f"finetune_{kind}") for kind in RESULT_FILES}
    metrics = write_results(files, manifest, outputs, rows,
                            Stopping.of(params.train, params.finetune.patience))
    if backup is not None:
        backup.clean()
    logger.info("finetune: %s", metrics)
    return params.path("finetune_model") / MODEL_FILE


def training_setup(params: Params, model: keras.Model, manifest: Manifest
                   ) -> tuple[keras.Model, dict[str, tf.data.Dataset]]:
    """(model to fit, ``{split: its data}``): the cached top, or full augmented images."""
    batch, seed = params.train.batch_size, params.train.seed
    if params.augment.enabled:
        training, data = augmented_training(model, params.augment, manifest, batch, seed,
                                            "finetune")
    else:
        check_prefix(params.path("prefix"), manifest, find_base(model), params.finetune)
        training = top_model(model, params.finetune.fine_tune_at)
        folder = params.path("prefix")
        logger.info("finetune: training the layers from %s on the cached frozen prefix (%s)",
                    params.finetune.fine_tune_at, folder)
        data = {split: prefix_dataset(folder, split, batch, seed if split == TRAIN else None)
                for split in SPLITS}
    compile_model(training, len(manifest.classes), stage_rate(params, manifest),
                  params.train.label_smoothing)
    return training, data


def stage_rate(params: Params, manifest: Manifest) -> LearningRate:
    """The optimizer's learning rate: ``finetune.schedule`` over the stage's epochs of
    ``train.batch_size`` (the global batch: one optimizer step) training images each."""
    steps_per_epoch = -(-manifest.count(TRAIN) // params.train.batch_size)
    return fine_tune_rate(params.finetune, steps_per_epoch)


def fit_more(params: Params, model: keras.Model, data: dict[str, tf.data.Dataset], done: int,
             class_weight: dict[int, float] | None) -> tuple[list[dict], EpochBackup | None]:
    """Train ``finetune.epochs`` epochs after the ``done`` transfer epochs: (history rows,
    backup). Only validation is monitored.

    Resumes from the latest per-epoch backup of this same run, if a previous attempt crashed.
    """
    if params.finetune.epochs == 0:
        logger.info("finetune.epochs is 0: the transfer model is kept as it is")
        values = model.evaluate(data[VALIDATION], verbose=0, return_dict=True)
        logs = {"loss": float("nan"), "accuracy": float("nan"), "val_loss": values["loss"],
                "val_accuracy": values["accuracy"]}
        return [history_row("finetune", done, logs)], None
    backup = EpochBackup(params.path("checkpoints") / "finetune", "finetune",
                         finetune_fingerprint(params), data[TRAIN],
                         (done, done + params.finetune.epochs),
                         Stopping.of(params.train, params.finetune.patience))
    rows = fit_resumable(model, (data[TRAIN], data[VALIDATION]), backup,
                         params.path("finetune_history"), class_weight)
    return rows, backup


def finetune_fingerprint(params: Params) -> str:
    """This run's identity: params, the transfer model and history, the prefix cache's key.

    Regression: with augmentation on, the prefix cache is not read (and may be absent)."""
    bypassed = params.augment.enabled  # then training reads images, not the prefix cache
    prefix = "bypassed" if bypassed else recorded_key(params.path("prefix") / PREFIX_INFO_FILE)
    inputs = {"prefix": prefix,
              "transfer_model": sha256_of(params.path("transfer_model") / MODEL_FILE),
              "transfer_metrics": sha256_of(params.path("transfer_metrics"))}
    return run_fingerprint(params, "finetune", SECTIONS, inputs)
