"""Shared training plumbing: seeding, epoch logging, history files."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import keras
import tensorflow as tf

from warmstart.atomic import write_text

logger = logging.getLogger(__name__)

HISTORY_FIELDS = ["stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TF, and ask TF for deterministic kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class EpochLogger(keras.callbacks.Callback):
    """One log line per epoch (Prefect and DVC logs show progress without a TTY)."""

    def __init__(self, stage: str, last_epoch: int) -> None:
        super().__init__()
        self.stage = stage
        self.last_epoch = last_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        logger.info("%s epoch %d/%d: %s", self.stage, epoch + 1, self.last_epoch, values)


def history_rows(stage: str, history: keras.callbacks.History, first_epoch: int) -> list[dict]:
    """Per-epoch rows with a 1-based epoch number continuing from ``first_epoch``."""
    rows = []
    for offset in range(len(history.epoch)):
        row = {"stage": stage, "epoch": first_epoch + offset + 1}
        row.update({k: float(history.history[k][offset]) for k in HISTORY_FIELDS[2:]})
        rows.append(row)
    return rows


def write_history(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def final_metrics(rows: list[dict]) -> dict:
    """The last epoch's figures, as written to metrics/<stage>.json (NaNs left out)."""
    last = rows[-1]
    values = {k: round(float(last[k]), 6) for k in HISTORY_FIELDS[2:]}
    return {"epochs": int(last["epoch"]), **{k: v for k, v in values.items() if v == v}}
