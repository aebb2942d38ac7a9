"""``transfer.learning_rate: auto``: the head's learning rate, chosen on the validation split.

The tutorial's fixed head schedule (1e-4 for 50 epochs) under-fits datasets it was not tuned
on. Training the head on the cached pooled features costs milliseconds an epoch, so every
candidate of ``transfer.learning_rates`` gets a full trial: a fresh head (same seed each, so the
order of the trials does not matter) trained for at most ``transfer.epochs`` with the stage's
early stopping, scored by its best ``train.monitor`` on the VALIDATION split. The best wins by
the rule early stopping uses: a larger rate must be better by more than ``train.min_delta``, so
ties (differences that change nothing) go to the smaller rate. The trials read the training and
validation features only: the test split, which the gate judges on, plays no part in the choice.
"""

from __future__ import annotations

import logging

import numpy as np

from warmstart.config.params import Params
from warmstart.layout import TRAIN, VALIDATION
from warmstart.modeling.array_shards import ShardedArray
from warmstart.modeling.feature_cache import feature_dataset
from warmstart.modeling.model import compile_model, head_layers, head_model
from warmstart.modeling.stopping import StopOnPlateau, Stopping
from warmstart.modeling.training import EpochBar, seed_everything

logger = logging.getLogger(__name__)

#: The splits a trial reads: never the test split.
SEARCH_SPLITS = (TRAIN, VALIDATION)


def choose_learning_rate(params: Params, cached: dict[str, tuple[ShardedArray, np.ndarray]],
                         num_classes: int, class_weight: dict[int, float] | None) -> dict:
    """``{"learning_rate": ..., "learning_rate_search": ...}`` for the transfer details: the
    value from params, or with ``auto`` the winner and every trial's score. ``cached``: the
    features cache by split; only ``SEARCH_SPLITS`` are read."""
    transfer = params.transfer
    if transfer.learning_rate != "auto":
        return {"learning_rate": transfer.learning_rate}
    cached = {split: cached[split] for split in SEARCH_SPLITS}
    stopping = Stopping.of(params.train, transfer.patience)
    trials = [trial(params, cached, num_classes, class_weight, rate, stopping)
              for rate in sorted(set(transfer.learning_rates))]
    best = stopping.best_row(trials)  # smallest rate first: ties (within min_delta) go to it
    logger.info("transfer.learning_rate auto: %s (best %s on the validation split of %s)",
                best["learning_rate"], stopping.monitor,
                {t["learning_rate"]: t[stopping.monitor] for t in trials})
    return {"learning_rate": best["learning_rate"],
            "learning_rate_search": {"split": VALIDATION, "monitor": stopping.monitor,
                                     "trials": trials}}


def trial(params: Params, cached: dict[str, tuple[ShardedArray, np.ndarray]], num_classes: int,
          class_weight: dict[int, float] | None, rate: float, stopping: Stopping) -> dict:
    """One candidate rate: a fresh head trained on the cached features; its kept epoch's
    validation figures."""
    seed_everything(params.train.seed, params.train.deterministic)
    head = head_model(cached[TRAIN][0].shape[1], head_layers(num_classes, params.head.dropout))
    compile_model(head, num_classes, rate, params.train.label_smoothing)
    batch, seed = params.train.batch_size, params.train.seed
    train = feature_dataset(*cached[TRAIN], batch, seed=seed)
    validation = feature_dataset(*cached[VALIDATION], batch, seed=None)
    plateau = StopOnPlateau(stopping)
    bar = EpochBar(f"transfer learning-rate trial {rate:g}")
    head.fit(train, validation_data=validation, epochs=params.transfer.epochs, verbose=0,
             callbacks=[bar, plateau], class_weight=class_weight)
    kept = stopping.kept_row(plateau.rows)
    return {"learning_rate": rate, "epoch": int(kept["epoch"]),
            **{key: round(float(kept[key]), 6) for key in ("val_loss", "val_accuracy")}}
