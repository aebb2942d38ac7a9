"""Stage `finetune`: continue from the transfer checkpoint with the top of the base unfrozen.

Loads ``<transfer_model>/model.keras``, makes base layers ``finetune.fine_tune_at`` and up
trainable (BatchNorm stays in inference mode), recompiles with the lower
``finetune.learning_rate`` and trains ``finetune.epochs`` more epochs, continuing the epoch count
of the transfer stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

from warmstart.atomic import write_json
from warmstart.dataset import Manifest, image_dataset
from warmstart.model import compile_model, find_base, load_model, save_model, unfreeze_from
from warmstart.params import Params
from warmstart.stages.transfer import MODEL_FILE
from warmstart.training import (
    HISTORY_FIELDS,
    EpochLogger,
    final_metrics,
    history_rows,
    read_history,
    seed_everything,
    write_history,
)

logger = logging.getLogger(__name__)


def run_finetune(params: Params) -> Path:
    seed_everything(params.train.seed)
    manifest = Manifest.read(params.path("processed"))
    model = load_model(params.path("transfer_model") / MODEL_FILE)
    trainable = unfreeze_from(find_base(model), params.finetune.fine_tune_at)
    compile_model(model, len(manifest.classes), params.finetune.learning_rate)
    logger.info("finetune: %d trainable base layers (from layer %d), %d trainable weights",
                trainable, params.finetune.fine_tune_at, len(model.trainable_weights))
    done = len(read_history(params.path("transfer_history")))
    rows = fit_more(params, model, manifest, done)
    save_model(model, params.path("finetune_model") / MODEL_FILE)
    write_history(params.path("finetune_history"), rows)
    write_json(params.path("finetune_metrics"), final_metrics(rows))
    logger.info("finetune: %s", final_metrics(rows))
    return params.path("finetune_model") / MODEL_FILE


def fit_more(params: Params, model, manifest: Manifest, done: int) -> list[dict]:
    """Train ``finetune.epochs`` epochs after the ``done`` transfer epochs; return history rows."""
    batch = params.train.batch_size
    validation = image_dataset(manifest, params.data.validation_split, batch)
    if params.finetune.epochs == 0:
        logger.info("finetune.epochs is 0: the transfer model is kept as it is")
        values = model.evaluate(validation, verbose=0, return_dict=True)
        row = {"stage": "finetune", "epoch": done, "loss": float("nan"),
               "accuracy": float("nan"), "val_loss": values["loss"],
               "val_accuracy": values["accuracy"]}
        return [{k: row[k] for k in HISTORY_FIELDS}]
    train = image_dataset(manifest, params.data.train_split, batch, shuffle_seed=params.train.seed)
    last = done + params.finetune.epochs
    history = model.fit(train, validation_data=validation, initial_epoch=done, epochs=last,
                        verbose=0, callbacks=[EpochLogger("finetune", last)])
    return history_rows("finetune", history, first_epoch=done)
