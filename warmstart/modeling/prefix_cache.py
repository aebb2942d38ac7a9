"""The fine-tune prefix cache: the frozen layers' boundary tensors, stored once per image.

While fine-tuning, base layers before ``finetune.fine_tune_at`` are frozen and BatchNorm runs in
inference mode, so they compute the same activations every epoch. The ``features`` stage stores,
once per image, every tensor that crosses from the frozen layers into the trainable ones (the
*boundary*, see ``warmstart/modeling/surgery.py``) in ``paths.prefix``, the training split as
``finetune.cache_dtype`` (float16 halves the memory; measured: same accuracy), the validation
and test splits always as float32 (exact predictions, what `evaluate` scores):
``<split>.npz`` (``boundary_<i>`` arrays and ``labels``) and ``prefix.json`` (boundary layers,
sizes, timings and the cache key: data, image size, ``fine_tune_at``, the frozen layers' weights,
dtype). The finetune stage checks the key against the transfer model it trains.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.config.params import FinetuneParams
from warmstart.data.records import Manifest, without_autotuning
from warmstart.layout import PREFIX_INFO_FILE
from warmstart.modeling.cache_keys import check_cache, data_digest, weights_digest
from warmstart.modeling.model import fine_tune_index
from warmstart.modeling.surgery import boundary_names


def prefix_key(manifest: Manifest, base: keras.Model, finetune: FinetuneParams) -> dict:
    """What the cached activations depend on; ``base`` is any base holding the frozen weights.

    The cut as a layer index (``fine_tune_at`` resolved against ``base``: a name or a fraction
    giving the same index gives the same cache) and the names of the boundary layers."""
    at = fine_tune_index(base, finetune.fine_tune_at)
    return {"data": data_digest(manifest), "image_size": manifest.image_size,
            "fine_tune_at": at, "boundary": boundary_names(base, at),
            "frozen_weights": weights_digest(base.layers[:max(at, 1)]),
            "dtype": finetune.cache_dtype}


def check_prefix(folder: Path, manifest: Manifest, base: keras.Model,
                 finetune: FinetuneParams) -> None:
    """Refuse a prefix cache not computed from this data, cut and these frozen weights."""
    check_cache(folder / PREFIX_INFO_FILE, prefix_key(manifest, base, finetune))


def save_prefix(folder: Path, split: str, arrays: list[np.ndarray], labels: np.ndarray) -> None:
    named = {f"boundary_{i}": array for i, array in enumerate(arrays)}
    np.savez(folder / f"{split}.npz", labels=labels, **named)


def prefix_dataset(folder: Path, split: str, batch_size: int,
                   seed: int | None) -> tf.data.Dataset:
    """Batches of ((boundary tensors as float32), label), shuffled per epoch when seeded.

    The arrays stay in memory once; each batch gathers its rows by index. Shuffling indices
    instead of elements gives the same order as shuffling the elements with the same seed,
    without a shuffle buffer holding a second copy of the cache.
    """
    with np.load(folder / f"{split}.npz") as data:
        names = sorted((k for k in data.files if k.startswith("boundary_")),
                       key=lambda k: int(k.split("_")[1]))
        arrays = tuple(tf.constant(data[k]) for k in names)
        labels = tf.constant(data["labels"])
    order = tf.data.Dataset.range(int(labels.shape[0]))
    if seed is not None:
        order = order.shuffle(int(labels.shape[0]), seed=seed, reshuffle_each_iteration=True)

    def rows(indices: tf.Tensor) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
        return (tuple(tf.cast(tf.gather(a, indices), tf.float32) for a in arrays),
                tf.gather(labels, indices))

    batches = order.batch(batch_size).map(rows, num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotuning(batches.prefetch(tf.data.AUTOTUNE))
