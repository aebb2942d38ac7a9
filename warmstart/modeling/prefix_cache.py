"""The fine-tune prefix cache: the frozen layers' boundary tensors, stored once per image.

While fine-tuning, base layers before ``finetune.fine_tune_at`` are frozen and BatchNorm runs in
inference mode, so they compute the same activations every epoch. The ``features`` stage stores,
once per image, every tensor that crosses from the frozen layers into the trainable ones (the
*boundary*, see ``warmstart/modeling/surgery.py``) in ``paths.prefix``, the training split as
``finetune.cache_dtype`` (float16 halves the memory; measured: same accuracy), the validation
and test splits always as float32 (exact predictions, what `evaluate` scores): per split the
``boundary_<i>`` arrays and ``labels`` as ``.npy`` shards (``<split>/<array>-<i>-of-<n>.npy``,
``modeling/array_shards.py``) and ``prefix.json`` (boundary layers, sizes, each array's shards
and the cache key: data, image size, ``fine_tune_at``, the frozen layers' weights, dtype).
The finetune stage checks the key against the transfer model it trains, then streams the
prefix from disk batch by batch (``modeling/cache_dataset.py``): its memory does not grow with
the number of images.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from warmstart.config.params import FinetuneParams
from warmstart.data.records import Manifest
from warmstart.layout import LABELS_ARRAY, PREFIX_INFO_FILE, boundary_array
from warmstart.modeling.array_shards import open_split
from warmstart.modeling.cache_dataset import cached_batches
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


def prefix_dataset(folder: Path, split: str, batch_size: int,
                   seed: int | None) -> tf.data.Dataset:
    """Batches of ((boundary tensors as float32), label), shuffled per epoch when seeded, each
    batch's rows read from the shards (the same batches as shuffling the arrays in memory)."""
    arrays = open_split(folder, split)
    boundary = [arrays[boundary_array(i)] for i in range(len(arrays) - 1)]
    return cached_batches(boundary, arrays[LABELS_ARRAY].read(), batch_size, seed)
