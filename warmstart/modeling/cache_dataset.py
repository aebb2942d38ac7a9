"""Training batches streamed from the on-disk caches, in the order an in-memory shuffle gives.

Both caches (pooled features for ``transfer``, the frozen prefix for ``finetune``) are read the
same way: a dataset of row indices, shuffled per epoch when seeded
(``shuffle(n, seed, reshuffle_each_iteration=True)``), batched, and each batch's rows read from
the shards (``array_shards.ShardedArray.take``). Shuffling indices gives the order that
shuffling the rows themselves would with the same seed, without a shuffle buffer holding a copy
of the cache; the shuffle's seed generator lives in the dataset, so ``skip_epochs`` (resume)
brings a new run to the order of any epoch. Memory: the n indices and labels (16 bytes an image)
and the batches in flight, whatever the cache's size.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from warmstart.data.records import without_autotuning
from warmstart.modeling.array_shards import ShardedArray


def row_order(count: int, batch_size: int, seed: int | None) -> tf.data.Dataset:
    """Batches of row numbers: reshuffled each epoch (each iteration) when seeded, in stored
    order otherwise."""
    order = tf.data.Dataset.range(count)
    if seed is not None:
        order = order.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return order.batch(batch_size)


def cached_batches(arrays: list[ShardedArray], labels: np.ndarray, batch_size: int,
                   seed: int | None) -> tf.data.Dataset:
    """Batches of ((each array's rows as float32, ...), label), reshuffled each epoch when
    seeded, in stored order otherwise."""
    count = len(labels)
    if any(len(array) != count for array in arrays):
        raise ValueError(f"cached arrays of {[len(a) for a in arrays]} rows for {count} labels")
    label_values = tf.constant(labels)

    def take(indices: np.ndarray) -> list[np.ndarray]:
        return [array.take(indices) for array in arrays]

    def rows(indices: tf.Tensor) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
        values = tf.numpy_function(take, [indices], [tf.as_dtype(a.dtype) for a in arrays],
                                   stateful=False)
        for value, array in zip(values, arrays, strict=True):
            value.set_shape((None, *array.shape[1:]))
        return (tuple(tf.cast(value, tf.float32) for value in values),
                tf.gather(label_values, indices))

    batches = row_order(count, batch_size, seed).map(rows, num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotuning(batches.prefetch(tf.data.AUTOTUNE))
