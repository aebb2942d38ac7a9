"""Shared training plumbing: seeding, epoch logging, per-epoch backups (resume), history files."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import Params, TrainParams, as_dict
from warmstart.data.records import Manifest, split_index
from warmstart.errors import WarmstartError
from warmstart.inference.recorded import RECORDED_SPLITS, make_predictions, write_predictions
from warmstart.layout import TRAIN
from warmstart.live import log_epoch, open_live, write_history
from warmstart.modeling.distribute import make_strategy
from warmstart.modeling.stopping import Stopping

logger = logging.getLogger(__name__)

#: The files every training stage writes: ``paths.<stage>_<kind>`` for each kind (history: its
#: DVCLive folder, ``warmstart/live.py``).
RESULT_FILES = ("predictions", "history", "metrics")
HISTORY_FIELDS = ["stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
#: A training stage's metrics: its kept epoch's figures, named by split.
KEPT_FIGURES = {"train_loss": "loss", "train_accuracy": "accuracy",
                "validation_loss": "val_loss", "validation_accuracy": "val_accuracy"}
#: Files of one epoch's backup folder, and the pointer to the latest complete one.
WEIGHTS_FILE = "model.weights.h5"
SEEDS_FILE = "seeds.npz"
ROWS_FILE = "history.json"
POINTER_FILE = "latest.json"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TF; with ``deterministic``, ask TF for deterministic kernels."""
    keras.utils.set_random_seed(seed)
    if deterministic:
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


class EpochBar(keras.callbacks.Callback):
    """A progress bar per epoch on a terminal (epoch k/N, batch, loss, ETA); tqdm turns it off
    when stderr is not a TTY (Prefect, CI, logs), which keep :class:`EpochLogger`'s lines."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.bar: tqdm | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.bar = tqdm(total=self.params.get("steps"), unit="batch", leave=False, disable=None,
                        desc=f"{self.label} epoch {epoch + 1}/{self.params.get('epochs')}")

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{float((logs or {}).get('loss', 0.0)):.4f}",
                                 refresh=False)
            self.bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()


class LiveHistory(keras.callbacks.Callback):
    """The stage's DVCLive history folder, rewritten after every epoch from ``backup``'s rows
    (so a resumed run's files equal an uninterrupted one's): ``dvc exp show`` and ``dvc plots``
    see each epoch while the stage runs. Put it AFTER :class:`EpochBackup` in ``callbacks``."""

    def __init__(self, folder: Path, backup: EpochBackup) -> None:
        super().__init__()
        self.folder, self.backup = folder, backup

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.live = open_live(self.folder)
        for row in self.backup.rows:  # the epochs a resumed run restored
            log_epoch(self.live, row)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        log_epoch(self.live, self.backup.rows[-1])


def final_metrics(rows: list[dict], stopping: Stopping) -> dict:
    """A training stage's metrics (metrics/<stage>.json): ``epochs`` run, ``kept_epoch`` (the
    best on validation with early stopping, else the last) and its figures named by split,
    ``train_loss`` (class-weighted with ``train.class_weight: balanced``), ``train_accuracy``,
    ``validation_loss``, ``validation_accuracy`` (NaNs left out). The test split is never seen
    while training."""
    kept = stopping.kept_row(rows)
    figures = {name: round(float(kept[key]), 6) for name, key in KEPT_FIGURES.items()}
    return {"epochs": int(rows[-1]["epoch"]), "kept_epoch": int(kept["epoch"]),
            **{name: value for name, value in figures.items() if value == value}}


class BackupError(WarmstartError):
    """A training backup exists for this run but cannot be restored."""


class EpochBackup(keras.callbacks.BackupAndRestore):
    """Keras ``BackupAndRestore`` (weights, optimizer state, epoch), made exact and crash-safe.

    Each epoch's backup goes into a new folder ``epoch-<n>`` and only then does ``latest.json``
    point at it, so a SIGKILL during a save leaves the previous backup intact (Keras overwrites its
    files in place). It also keeps what ``save_weights`` leaves out: the random-seed state of
    Dropout and augmentation layers, and the history rows of the epochs already run (``History``
    only sees this process). ``latest.json`` records the run's fingerprint (params, inputs, code):
    a backup of another run is discarded. Put it BEFORE :class:`EpochLogger` in ``callbacks``: an
    epoch is logged once its backup is complete. :meth:`clean` removes the folder once the stage's
    outputs are written (not at the end of ``fit``: a crash in between must not lose the epochs).
    """

    def __init__(self, folder: Path, stage: str, fingerprint: str, train_data: tf.data.Dataset,
                 epochs: tuple[int, int], stopping: Stopping) -> None:
        super().__init__(backup_dir=str(folder), delete_checkpoint=False)
        self.folder, self.stage, self.fingerprint = folder, stage, fingerprint
        self.train_data = train_data
        self.first_epoch, self.last_epoch = epochs
        self.stopping = stopping
        self.rows: list[dict] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        state = self._latest()
        if state is not None:
            self._restore(state)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.rows.append(history_row(self.stage, epoch + 1, logs or {}))
        name = epoch_folder(epoch + 1)
        with atomic_dir(self.folder / name) as staging:
            self.model.save_weights(str(staging / WEIGHTS_FILE))
            np.savez(staging / SEEDS_FILE, *[v.numpy() for v in seed_states(self.model)])
            write_json(staging / ROWS_FILE, self.rows)
        best = int(self.stopping.kept_row(self.rows)["epoch"])
        kept = epoch_folder(best)
        write_json(self.folder / POINTER_FILE, {"stage": self.stage, "epoch": epoch + 1,
                                                "folder": name, "kept": kept,
                                                "fingerprint": self.fingerprint})
        for old in self.folder.glob("epoch-*"):
            if old.name not in (name, kept):
                shutil.rmtree(old, ignore_errors=True)
        if self.stopping.should_stop(self.rows):
            logger.info("%s: stopping early after epoch %d: %s has not improved for %d epochs "
                        "(the best, epoch %d, is kept)", self.stage, epoch + 1,
                        self.stopping.monitor, self.stopping.patience, best)
            self.model.stop_training = True

    def keep_best(self) -> None:
        """Load the kept epoch's weights (the best one with early stopping) after ``fit``."""
        kept = self.stopping.kept_row(self.rows)["epoch"]
        if kept != self.rows[-1]["epoch"]:
            self.model.load_weights(str(self.folder / epoch_folder(kept) / WEIGHTS_FILE))
            logger.info("%s: keeping epoch %d (best %s %.4f)", self.stage, kept,
                        self.stopping.monitor, float(self.stopping.kept_row(self.rows)[
                            self.stopping.monitor]))

    def clean(self) -> None:
        """Remove the backups: call once the stage's outputs are safely written."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _latest(self) -> dict | None:
        """The latest complete backup of THIS run, or None (discarding leftovers of others)."""
        pointer = self.folder / POINTER_FILE
        if not pointer.is_file():
            shutil.rmtree(self.folder, ignore_errors=True)  # half-written first epoch, if any
            return None
        state = json.loads(pointer.read_text())
        if state.get("fingerprint") != self.fingerprint:
            logger.warning("%s: discarding the backup of epoch %s in %s: it belongs to a run "
                           "with other params, inputs or code; starting from the first epoch",
                           self.stage, state.get("epoch"), self.folder)
            shutil.rmtree(self.folder, ignore_errors=True)
            return None
        return state

    def _restore(self, state: dict) -> None:
        folder = self.folder / state["folder"]
        try:
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:
                optimizer.build(self.model.trainable_variables)
            self.model.load_weights(str(folder / WEIGHTS_FILE))
            restore_seed_states(self.model, folder / SEEDS_FILE)
            self.rows = json.loads((folder / ROWS_FILE).read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise BackupError(f"Cannot restore the {self.stage} backup in {folder}: {exc}. "
                              f"Delete {self.folder} to train from the first epoch.") from exc
        self.model._initial_epoch = state["epoch"]  # what BackupAndRestore itself sets
        if self.stopping.should_stop(self.rows):  # it had stopped early: no epoch is left
            self.model._initial_epoch = self.last_epoch
        skip_epochs(self.train_data, state["epoch"] - self.first_epoch)
        logger.info("resuming %s at epoch %d/%d: weights, optimizer, random-seed state and "
                    "history of epochs 1..%d restored from %s", self.stage, state["epoch"] + 1,
                    self.last_epoch, state["epoch"], folder)


def epoch_folder(epoch: int) -> str:
    return f"epoch-{int(epoch):04d}"


def seed_states(model: keras.Model) -> list[keras.Variable]:
    """The seed-generator states (Dropout, augmentation) that ``save_weights`` does not keep."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def restore_seed_states(model: keras.Model, path: Path) -> None:
    states = seed_states(model)
    with np.load(path) as saved:
        if len(saved.files) != len(states):
            raise ValueError(f"{len(saved.files)} saved seed states, the model has {len(states)}")
        for index, variable in enumerate(states):
            variable.assign(saved[f"arr_{index}"])


def skip_epochs(data: tf.data.Dataset, epochs: int) -> None:
    """Bring a reshuffling dataset to the order of its epoch ``epochs`` without reading it.

    ``shuffle(seed=s, reshuffle_each_iteration=True)`` draws each new iterator's order from a seed
    generator kept with the dataset, so an uninterrupted fit's epoch k reads the k-th order. Making
    (and dropping) one iterator per completed epoch gives the resumed epoch that same order
    (``tests/test_resume.py`` checks this against TF).
    """
    for _ in range(epochs):
        iter(data)


def history_row(stage: str, epoch: int, logs: dict) -> dict:
    """One row of a stage's history file (``epoch`` is 1-based, continuing across stages)."""
    return {"stage": stage, "epoch": epoch, **{k: float(logs[k]) for k in HISTORY_FIELDS[2:]}}


def run_fingerprint(params: Params, stage: str, sections: tuple[str, ...],
                    inputs: dict[str, str]) -> str:
    """What a backup belongs to: the stage's params sections, its inputs' digests, the code."""
    values = as_dict(params)
    parts = {"stage": stage, "params": {s: values[s] for s in sections}, "inputs": inputs,
             "code": code_digest(), "keras": keras.__version__, "tensorflow": tf.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def code_digest() -> str:
    """sha256 over the warmstart package's sources: a backup is not resumed by other code."""
    digest = hashlib.sha256()
    package = Path(__file__).parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def recorded_key(info_file: Path) -> str:
    """The cache key a caching stage recorded in its info file (see modeling/cache_keys.py)."""
    return json.loads(info_file.read_text())["key"]


def fit_resumable(model: keras.Model, data: tuple[tf.data.Dataset, tf.data.Dataset],
                  backup: EpochBackup, history: Path,
                  class_weight: dict[int, float] | None) -> list[dict]:
    """``fit`` from ``backup``'s latest epoch (or its first); the history rows of ALL epochs,
    logged live to the DVCLive folder ``history`` as they finish.

    ``data``: (train, validation), the only split ``fit`` monitors; ``class_weight`` (see
    :func:`class_weights`) weighs the training loss only."""
    first, last = backup.first_epoch, backup.last_epoch
    callbacks = [EpochBar(backup.stage), backup, LiveHistory(history, backup),
                 EpochLogger(backup.stage, last)]
    model.fit(data[0], validation_data=data[1], initial_epoch=first, epochs=last, verbose=0,
              callbacks=callbacks, class_weight=class_weight)
    backup.keep_best()
    return backup.rows


def predict_splits(model: keras.Model, data: dict[str, tf.data.Dataset]
                   ) -> dict[str, np.ndarray]:
    """The trained model's outputs on the validation and test data (test: only now, after
    training; it never enters ``fit``)."""
    return {split: model.predict(data[split], verbose=0) for split in RECORDED_SPLITS}


def class_weights(train: TrainParams, manifest: Manifest) -> dict[int, float] | None:
    """Keras ``class_weight`` for ``train.class_weight``: None (``none``), or n / (k * n_c) for
    each class c of the training split (``balanced``: every class weighs the same in total)."""
    if train.class_weight == "none":
        return None
    counts = manifest.class_counts(TRAIN)
    empty = [name for name, count in zip(manifest.classes, counts, strict=True) if not count]
    if empty:
        raise WarmstartError(f"train.class_weight is balanced but the training split has no "
                             f"images of {empty}: add some, or use class_weight none.")
    total, k = sum(counts), len(counts)
    weights = {index: total / (k * count) for index, count in enumerate(counts)}
    logger.info("train.class_weight balanced: %s (training images per class %s)",
                {name: round(weights[i], 4) for i, name in enumerate(manifest.classes)},
                dict(zip(manifest.classes, counts, strict=True)))
    return weights


def start_training(train: TrainParams, processed: Path
                   ) -> tuple[tf.distribute.Strategy, Manifest]:
    """What every training stage does first: its strategy, seeded TF, the shards' manifest."""
    strategy = make_strategy(train.strategy, train.batch_size)
    seed_everything(train.seed, train.deterministic)
    return strategy, Manifest.read(processed)


def write_results(files: dict[str, Path], manifest: Manifest, outputs: dict[str, np.ndarray],
                  rows: list[dict], stopping: Stopping, extra: dict | None = None) -> dict:
    """A training stage's ``predictions``, ``history`` and ``metrics`` files (``extra``: more
    metrics of the stage); the metrics."""
    record_predictions(files["predictions"], manifest, outputs)
    write_history(files["history"], rows)
    metrics = {**final_metrics(rows, stopping), **(extra or {})}
    write_json(files["metrics"], metrics)
    return metrics


def record_predictions(path: Path, manifest: Manifest, outputs: dict[str, np.ndarray]) -> None:
    """The trained model's outputs on each split's images (``{split: outputs}``, the splits'
    stored order), for `evaluate` (and export's check)."""
    runs = {split: make_predictions(*split_index(manifest, split), values, manifest.classes)
            for split, values in outputs.items()}
    write_predictions(path, runs)
