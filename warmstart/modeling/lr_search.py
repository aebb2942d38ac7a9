"""``transfer.learning_rate: auto``: the head's learning rate, chosen on the validation split.

The tutorial's fixed head schedule (1e-4 for 50 epochs) under-fits datasets it was not tuned
on. Training the head on the cached pooled features is cheap, so every candidate of
``transfer.learning_rates`` gets a full trial: a fresh head (same seed each, so neither the
order nor the set of the trials changes one's result) trained for at most ``transfer.epochs``
with the stage's early stopping, scored by its best ``train.monitor`` on the VALIDATION split.
The best wins by the rule early stopping uses: a larger rate must be better by more than
``train.min_delta``, so ties (differences that change nothing) go to the smaller rate. The
trials read the training and validation features only: the test split, which the gate judges
on, plays no part in the choice.

All trials train together, on the same batches, as one Dense layer holding every rate's head
(:class:`FusedHeads`): one step and one validation pass per batch serve every rate, and one
graph call runs a whole chunk of batches (:class:`TrialChunks`: the whole epoch, up to
:data:`CHUNK_BYTES` of features). Keras ``fit`` costs about 100 ms an epoch per trial here, nearly
all of it overhead, for a few ms of work; with a graph call per batch, Python between the calls
still took about half of the search. Each head's figures are those of a ``fit`` of the stage's
head at its rate (to float rounding; ``tests/test_selection.py`` compares them); the stage's
model still comes from its own ``fit`` at the chosen rate, with backups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from warmstart.config.params import Params
from warmstart.layout import TRAIN, VALIDATION
from warmstart.modeling.array_shards import ShardedArray
from warmstart.modeling.cache_dataset import row_order
from warmstart.modeling.model import compile_model, head_layers, head_model
from warmstart.modeling.stopping import Stopping
from warmstart.modeling.training import seed_everything

logger = logging.getLogger(__name__)

#: The splits a trial reads: never the test split.
SEARCH_SPLITS = (TRAIN, VALIDATION)

#: (features, labels) of one split: pooled features on disk, labels in memory.
Cached = dict[str, tuple[ShardedArray, np.ndarray]]

#: A split's pooled features up to this size are read into memory once for the trials (which
#: read them once an epoch); larger ones are read from disk chunk by chunk.
IN_MEMORY_BYTES = 2**29
#: The features one graph call trains or scores on: whole batches, at least one.
CHUNK_BYTES = 2**26


def choose_learning_rate(params: Params, cached: Cached, num_classes: int,
                         class_weight: dict[int, float] | None) -> dict:
    """``{"learning_rate": ..., "learning_rate_search": ...}`` for the transfer details: the
    value from params, or with ``auto`` the winner and every trial's score. ``cached``: the
    features cache by split; only ``SEARCH_SPLITS`` are read."""
    transfer = params.transfer
    if transfer.learning_rate != "auto":
        return {"learning_rate": transfer.learning_rate}
    cached = {split: cached[split] for split in SEARCH_SPLITS}
    stopping = Stopping.of(params.train, transfer.patience)
    trials = run_trials(params, cached, (num_classes, class_weight),
                        sorted(set(transfer.learning_rates)), stopping)
    best = stopping.best_row(trials)  # smallest rate first: ties (within min_delta) go to it
    logger.info("transfer.learning_rate auto: %s (best %s on the validation split of %s)",
                best["learning_rate"], stopping.monitor,
                {t["learning_rate"]: t[stopping.monitor] for t in trials})
    return {"learning_rate": best["learning_rate"],
            "learning_rate_search": {"split": VALIDATION, "monitor": stopping.monitor,
                                     "trials": trials}}


def run_trials(params: Params, cached: Cached,
               classes: tuple[int, dict[int, float] | None], rates: list[float],
               stopping: Stopping) -> list[dict]:
    """Every rate's trial (``classes``: class count, class weights): its kept epoch's
    validation figures, in the order of ``rates``."""
    heads = FusedHeads(params, cached[TRAIN][0].shape[1], classes, rates)
    batch, seed = params.train.batch_size, params.train.seed
    train = TrialChunks(*cached[TRAIN], batch, seed)
    validation = TrialChunks(*cached[VALIDATION], batch, None)
    rows: list[list[dict]] = [[] for _ in rates]
    running = list(range(len(rates)))
    epochs = tqdm(range(1, params.transfer.epochs + 1), unit="epoch", leave=False,
                  disable=None, desc=f"transfer learning-rate trials {rates}")
    for epoch in epochs:
        for features, labels in train:
            heads.train(features, labels)
        figures = sum(heads.score(features, labels) for features, labels in validation)
        figures = figures.numpy() / len(cached[VALIDATION][1])
        for k in running:
            rows[k].append({"epoch": epoch, "val_loss": float(figures[k, 0]),
                            "val_accuracy": float(figures[k, 1])})
        running = [k for k in running if not stopping.should_stop(rows[k])]
        if not running:
            break
    epochs.close()
    return [trial_result(rate, stopping.kept_row(history))
            for rate, history in zip(rates, rows, strict=True)]


class FusedHeads:
    """One head per rate, side by side in one Dense layer: every trial's step is one matmul.

    Every trial starts from the stage's seeded head, so all heads have the same initial
    weights and draw the same dropout masks: one Dropout layer serves them all, and the fused
    kernel is the head's kernel repeated once per rate. Each head's block of the kernel and bias
    is updated by RMSprop (Keras 3.3's update, no momentum, not centred) at its own rate, from
    the gradient of its own loss. ``tests/test_selection.py`` checks a trial against a Keras
    ``fit`` of the same head.
    """

    def __init__(self, params: Params, feature_dim: int,
                 classes: tuple[int, dict[int, float] | None], rates: list[float]) -> None:
        seed_everything(params.train.seed, params.train.deterministic)
        head = head_model(feature_dim, head_layers(classes[0], params.head.dropout))
        compile_model(head, classes[0], rates[0], params.train.label_smoothing)
        dropout, dense = head.layers[1:]
        optimizer = head.optimizer
        self.dropout, self.loss, self.activation = dropout, head.loss, dense.activation
        self.units, self.count = dense.units, len(rates)
        self.variables = [tf.Variable(tf.tile(weights, [1] * (weights.ndim - 1) + [len(rates)]))
                          for weights in (dense.kernel.numpy(), dense.bias.numpy())]
        self.velocities = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self.rates = tf.repeat(tf.constant(rates, tf.float32), self.units)
        self.rho, self.epsilon = float(optimizer.rho), float(optimizer.epsilon)
        self.table = None if classes[1] is None else tf.constant(
            [classes[1][c] for c in range(classes[0])], tf.float32)
        self.batch_size = params.train.batch_size
        spec = [tf.TensorSpec((None, feature_dim), tf.float32), tf.TensorSpec((None,), tf.int64)]
        # Explicit while loops: AutoGraph would also convert Keras' loss code (seconds of tracing).
        self.train = tf.function(self._train, input_signature=spec, autograph=False)
        self.score = tf.function(self._score_all, input_signature=spec, autograph=False)

    def losses(self, features: tf.Tensor, labels: tf.Tensor, training: bool
               ) -> tuple[tf.Tensor, tf.Tensor]:
        """(each image's loss under each head, [images, heads]; the heads' outputs, one row per
        image and head). Every head's rows go through the head's activation and its loss's own
        per-sample ``call`` at once: one op chain, not one per head."""
        kernel, bias = self.variables
        logits = tf.matmul(self.dropout(features, training=training), kernel) + bias
        # Image i's head k: row i * count + k, as the fused kernel's columns are ordered.
        outputs = self.activation(tf.reshape(logits, (-1, self.units)))
        truth = tf.cast(tf.repeat(labels, self.count), tf.float32)
        return tf.reshape(self.loss.call(truth, outputs), (-1, self.count)), outputs

    def _step(self, features: tf.Tensor, labels: tf.Tensor) -> list[tf.Operation]:
        """One RMSprop step of every head on the batch; the variables' updates."""
        with tf.GradientTape() as tape:
            losses, _ = self.losses(features, labels, training=True)
            if self.table is not None:  # Keras: weighted, then averaged over the batch
                losses *= tf.gather(self.table, tf.cast(labels, tf.int32))[:, None]
            loss = tf.reduce_sum(tf.reduce_mean(losses, axis=0))  # the sum of the heads' losses
        updates = []
        for variable, velocity, gradient in zip(self.variables, self.velocities,
                                                tape.gradient(loss, self.variables), strict=True):
            square = velocity.assign(self.rho * velocity + (1 - self.rho) * tf.square(gradient))
            updates.append(variable.assign_sub(self.rates * gradient / tf.sqrt(square
                                                                               + self.epsilon)))
        return updates

    def _over_batches(self, features: tf.Tensor, labels: tf.Tensor,
                      body: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor],
                      total: tf.Tensor) -> tf.Tensor:
        """``total = body(batch features, batch labels, total)`` for each batch of the chunk
        (whole batches, the last one maybe short), in order, in one graph loop."""
        size = tf.shape(labels, out_type=tf.int64)[0]

        def step(start: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            end = start + self.batch_size
            return end, body(features[start:end], labels[start:end], total)

        return tf.while_loop(lambda start, _: start < size, step,
                             (tf.constant(0, tf.int64), total))[1]

    def _train(self, features: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """One step per batch of the chunk, in order."""
        def body(x: tf.Tensor, y: tf.Tensor, done: tf.Tensor) -> tf.Tensor:
            with tf.control_dependencies(self._step(x, y)):
                return done + 1
        return self._over_batches(features, labels, body, tf.constant(0))

    def _score_all(self, features: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """:meth:`_score` summed over the chunk's batches (the order a batch loop sums in)."""
        return self._over_batches(features, labels, lambda x, y, total: total + self._score(x, y),
                                  tf.zeros((self.count, 2), tf.float32))

    def _score(self, features: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """Per head, the batch's summed loss (unweighted, as Keras validates) and correct
        count."""
        losses, outputs = self.losses(features, labels, training=False)
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        right = tf.reshape(correct(tf.repeat(labels, self.count), outputs, self.units),
                           (-1, self.count))
        return tf.stack([tf.reduce_mean(losses, axis=0) * count, tf.reduce_sum(right, axis=0)],
                        axis=1)


class TrialChunks:
    """A split's rows for the trials, epoch after epoch, in chunks of whole batches: the row
    order of :func:`~warmstart.modeling.cache_dataset.cached_batches` (so a trial sees the
    batches ``fit`` on the stage's dataset would), rows taken by Python rather than by a tf.data
    map (a third of the time). A chunk holds at most :data:`CHUNK_BYTES` of features (at least
    one batch); the trials step through its batches in one graph call."""

    def __init__(self, features: ShardedArray, labels: np.ndarray, batch_size: int,
                 seed: int | None) -> None:
        rows = max(1, CHUNK_BYTES // (features.spec.row_bytes * batch_size)) * batch_size
        self.per_epoch = -(-len(labels) // rows)
        # The same shuffled rows (batching follows the shuffle), cut every `rows` rows; one
        # iterator for every epoch (each repetition reshuffles, as a new iteration would).
        self.chunks = iter(row_order(len(labels), rows, seed).repeat())
        self.labels, self.take = labels, row_reader(features)
        # Unshuffled, every epoch reads the same chunks: when in memory, made once (and the
        # array they came from let go, so the split is held once).
        self.fixed = None
        if seed is None and self.take != features.take:  # row_reader read it into memory
            self.fixed, self.take = list(self), features.take

    def __iter__(self) -> Iterator[tuple[tf.Tensor, tf.Tensor]]:
        if self.fixed is not None:
            yield from self.fixed
            return
        for _ in range(self.per_epoch):
            rows = next(self.chunks).numpy()
            yield (tf.constant(self.take(rows), tf.float32),
                   tf.constant(self.labels[rows], tf.int64))


def row_reader(features: ShardedArray) -> Callable[[np.ndarray], np.ndarray]:
    """Rows by index: from memory when the array is at most :data:`IN_MEMORY_BYTES`."""
    if features.spec.rows * features.spec.row_bytes > IN_MEMORY_BYTES:
        return features.take
    whole = features.read()
    return lambda rows: whole[rows]


def trial_result(rate: float, kept: dict) -> dict:
    return {"learning_rate": rate, "epoch": int(kept["epoch"]),
            **{key: round(float(kept[key]), 6) for key in ("val_loss", "val_accuracy")}}


def correct(labels: tf.Tensor, outputs: tf.Tensor, units: int) -> tf.Tensor:
    """1 for each output row that a head gets right, else 0 (the stage's accuracy: sigmoid >
    0.5 for two classes, one unit; the arg-max otherwise)."""
    predicted = tf.cast(outputs[:, 0] > 0.5, tf.int64) if units == 1 \
        else tf.argmax(outputs, axis=-1)
    return tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32)
