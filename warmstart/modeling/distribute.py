"""`train.strategy`: which devices and machines the training stages (transfer, finetune) use.

* ``default``: one device (the first GPU if any, else the CPU).
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over every GPU of this machine (over the
  logical CPU devices when there is no GPU: that is how the tests run it); one model replica per
  device, gradients all-reduced every step.
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines listed in the
  ``TF_CONFIG`` environment variable (every machine runs the same stage with its own
  ``task.index``).

``train.batch_size`` is the GLOBAL batch: each step takes ``batch_size`` examples and splits
them across the replicas (``batch_size / replicas`` per device), so the same params mean the same
optimisation whatever the strategy. The stages build and compile their models inside
``strategy.scope()``. The caching stage (features) is inference only and does not use a strategy.

Keras 3.3 (TF backend) trains WRONGLY under a multi-replica strategy: its optimizer applies each
replica's gradients to that replica's copy of the weights without all-reducing them (the copies
drift apart and ``get_weights`` returns replica 0's), and its metric variables are not aggregated
either (keras-team/keras#19891, fixed upstream in later 3.x); once they are, its metric updates
(``v.assign(v + x)``) re-count every earlier batch, and under ``multi_worker`` its epoch logs
fail to reduce. :func:`patch_keras_distribution` fixes all of these for the versions it was
verified on; ``tests/test_strategy.py`` checks that a mirrored run follows the default one step
for step, ``tests/test_multi_worker.py`` the same of two worker processes. Only the chief
(worker 0) writes a stage's outputs (:func:`worker_outputs`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable

import keras
import tensorflow as tf
from keras import tree

from warmstart.config.params import Params
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

#: Keras versions whose tf.distribute training :func:`patch_keras_distribution` fixes.
PATCHED_KERAS = ("3.3.",)
_AGGREGATIONS = {"mean": tf.VariableAggregation.MEAN, "sum": tf.VariableAggregation.SUM,
                 "only_first_replica": tf.VariableAggregation.ONLY_FIRST_REPLICA}


class StrategyError(WarmstartError):
    """``train.strategy`` cannot be set up on this machine."""


def make_strategy(name: str, batch_size: int) -> tf.distribute.Strategy:
    """The tf.distribute strategy for ``train.strategy``; create it before other TF work."""
    if name == "default":
        return tf.distribute.get_strategy()
    patch_keras_distribution()
    if name == "mirrored":
        strategy = mirrored_strategy()
    elif name == "multi_worker":
        check_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        raise StrategyError(f"train.strategy is {name!r}: use default, mirrored or multi_worker.")
    describe(strategy, name, batch_size)
    return strategy


def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """Every GPU (TF's default all-reduce: NCCL), else every logical CPU device.

    On CPU devices TF's default (collective) all-reduce fails inside Keras' train step
    ("You must feed a value for placeholder tensor ... cond/Placeholder"): reduce via one device.
    """
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if gpus:
        return tf.distribute.MirroredStrategy(gpus)
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(cpus,
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def check_tf_config() -> dict:
    """``TF_CONFIG`` must name the cluster and this machine's task, or the strategy hangs."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError(
            "train.strategy is multi_worker but TF_CONFIG is not set. Set it on every machine, "
            'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' (index 1 on host2); see README, '
            "Reliability, reproducibility and scale-out.")
    try:
        config = json.loads(raw)
        workers, task = config["cluster"]["worker"], config["task"]
        if task["type"] != "worker" or not 0 <= int(task["index"]) < len(workers):
            raise ValueError(f"task {task} is not one of the {len(workers)} workers")
    except (ValueError, KeyError, TypeError) as exc:
        raise StrategyError(f"TF_CONFIG is not a valid multi-worker configuration ({exc}): it "
                            'needs {"cluster": {"worker": [...]}, "task": {"type": "worker", '
                            '"index": i}}.') from exc
    return config


def worker_outputs(params: Params, strategy: tf.distribute.Strategy, stage: str) -> Params:
    """``params`` with ``stage``'s outputs (``paths.<stage>_*``) and its per-epoch backups moved,
    on every worker but the chief (``TF_CONFIG`` index 0), to ``<paths.checkpoints>/worker-<i>/``.

    Every worker of a multi-worker run computes and saves the same model (TF's docs: the others
    write to their own temporary folder); the chief's are the outputs, so a worker sharing the
    chief's folder (one machine, a shared disk) must not overwrite them, nor its backups."""
    resolver = getattr(strategy, "cluster_resolver", None)
    index = resolver.task_id if resolver is not None and resolver.task_type else 0
    if not index:
        return params
    own = f"{params.paths.checkpoints}/worker-{index}"
    moved = {key: f"{own}/{value}" for key, value in dataclasses.asdict(params.paths).items()
             if key.startswith(f"{stage}_") or key == "checkpoints"}
    logger.info("worker %d of a multi-worker run: %s outputs go to %s, not the chief's", index,
                stage, own)
    return dataclasses.replace(params, paths=dataclasses.replace(params.paths, **moved))


def describe(strategy: tf.distribute.Strategy, name: str, batch_size: int) -> None:
    replicas = strategy.num_replicas_in_sync
    logger.info("train.strategy %s: %d replica(s); global batch %d = %s per replica", name,
                replicas, batch_size, f"{batch_size / replicas:g}")
    if replicas == 1:
        logger.warning("train.strategy is %s but there is only one device: no speed-up", name)
    elif batch_size % replicas:
        logger.warning("train.batch_size %d is not a multiple of the %d replicas: replicas get "
                       "unequal shares of each batch", batch_size, replicas)


def patch_keras_distribution() -> None:
    """Make Keras 3.3 all-reduce gradients and aggregate variables under tf.distribute."""
    if not keras.__version__.startswith(PATCHED_KERAS):
        logger.warning("Keras %s: the tf.distribute fixes of warmstart/modeling/distribute.py "
                       "are verified on Keras %s only; run tests/test_strategy.py before trusting "
                       "a multi-replica run", keras.__version__, " ".join(PATCHED_KERAS))
        return
    from keras.src.backend.tensorflow import core, optimizer, trainer

    if getattr(optimizer.TFOptimizer, "_warmstart_patched", False):
        return
    core.Variable._initialize = _initialize_with_aggregation
    core.Variable._direct_assign = _assign_summing_replicas
    trainer.reduce_per_replica = _reducing_scalars_over_workers(trainer.reduce_per_replica)
    update_step = optimizer.TFOptimizer._backend_update_step

    def update_with_mean_gradients(self: object, grads: list, variables: list,
                                   learning_rate: object) -> None:
        update_step(self, mean_over_replicas(grads), variables, learning_rate)

    optimizer.TFOptimizer._backend_update_step = update_with_mean_gradients
    optimizer.TFOptimizer._warmstart_patched = True


def _reducing_scalars_over_workers(reduce_per_replica: Callable) -> Callable:
    """Keras 3.3 means ``fit``'s and ``evaluate``'s logs across workers with
    ``strategy.reduce("MEAN", v, axis=0)``, which fails on their scalars ("Invalid reduction
    dimension 0 for input with 0 dimensions"): mean them over the replicas instead (axis None).
    The metric variables are aggregated (:func:`_initialize_with_aggregation`), so every
    replica holds the same value and the mean is that value."""
    from keras.src.backend.tensorflow.trainer import _collective_all_reduce_multi_worker

    def reduce(values: object, strategy: tf.distribute.Strategy, reduction: str) -> object:
        if reduction in ("auto", "mean") and _collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    return reduce


def _initialize_with_aggregation(self: keras.Variable, value: object) -> None:
    """Keras 3.3 drops ``aggregation`` when making the tf.Variable: pass it on (int -> first)."""
    aggregation = _AGGREGATIONS[self.aggregation]
    if aggregation == tf.VariableAggregation.MEAN and not tf.as_dtype(self.dtype).is_floating:
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self._value = tf.Variable(value, dtype=self._dtype, trainable=self.trainable, name=self.name,
                              aggregation=aggregation)


def _assign_summing_replicas(self: keras.Variable, value: object) -> None:
    """Keras 3.3 metrics update as ``v.assign(v + x)``; on a SUM-aggregated variable (every
    metric's) in replica context tf.distribute sums the assigned values, giving ``n * v + sum(x)``
    on n replicas: every step re-counts all earlier ones. Assign the replica's increment
    instead, which tf.distribute sums into ``v + sum(x)``. Elsewhere (resets between epochs run in
    cross-replica context, one replica) an assignment stays an assignment."""
    value = tf.cast(value, self._value.dtype)
    context = tf.distribute.get_replica_context()
    if self.aggregation == "sum" and context is not None and context.num_replicas_in_sync > 1:
        self._value.assign_add(value - self._value)
    else:
        self._value.assign(value)


def mean_over_replicas(grads: list) -> list:
    """The replicas' gradients averaged, in replica context (before Keras' merge call, where
    Keras 3.3 skips the reduction). Each replica's gradient is the mean over its share of the
    global batch, so their mean is the global batch's gradient (for equal shares): what one
    device computes."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return grads
    present = [g for g in grads if g is not None]
    values = iter(context.all_reduce(tf.distribute.ReduceOp.MEAN, present) if present else [])
    return [None if g is None else next(values) for g in grads]
