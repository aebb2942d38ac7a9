"""The transfer cache: pooled features of the frozen base, stored once per image.

Written by the ``features`` stage into ``paths.features``: ``base.keras`` (the exact base the
features came from: the transfer stage builds its classifier on it), per split the pooled
``features``, ``labels`` and image ``paths`` as ``.npy`` shards
(``<split>/<array>-<i>-of-<n>.npy``, ``modeling/array_shards.py``) and ``features.json`` (counts,
each array's shards and the cache key: data, image size, architecture, alpha, weights
file hash, base weights). Training streams the features from the shards
(``modeling/cache_dataset.py``): no process holds a split's features whole. The key also
catches a weights file rewritten in place under the same path, which DVC cannot see; the
transfer stage refuses a stale cache.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.config.params import BaseParams
from warmstart.data.records import Manifest
from warmstart.hashing import sha256_of
from warmstart.layout import FEATURES_ARRAY, FEATURES_INFO_FILE, LABELS_ARRAY
from warmstart.modeling.array_shards import ShardedArray, open_split
from warmstart.modeling.cache_dataset import cached_batches
from warmstart.modeling.cache_keys import check_cache, data_digest, weights_digest


def features_key(manifest: Manifest, base: keras.Model, variant: BaseParams, root: Path) -> dict:
    """What the features depend on: data, image size, base variant, weights file and values."""
    path = variant.weights_path(root)
    return {"data": data_digest(manifest), "image_size": manifest.image_size,
            "architecture": variant.architecture, "alpha": variant.alpha,
            "weights": "file" if path else variant.weights,
            "weights_sha256": sha256_of(path) if path else None,
            "base_weights": weights_digest(base.layers)}


def check_features(folder: Path, manifest: Manifest, base: keras.Model, variant: BaseParams,
                   root: Path) -> None:
    """Refuse cached features that were not computed from this data, base and weights."""
    check_cache(folder / FEATURES_INFO_FILE, features_key(manifest, base, variant, root))


def open_features(folder: Path, split: str) -> tuple[ShardedArray, np.ndarray]:
    """(pooled features, read from disk on demand; labels in memory) of one split."""
    arrays = open_split(folder, split)
    return arrays[FEATURES_ARRAY], arrays[LABELS_ARRAY].read()


def feature_dataset(features: ShardedArray, labels: np.ndarray, batch_size: int,
                    seed: int | None) -> tf.data.Dataset:
    """Batches of (features, label), reshuffled each epoch when seeded."""
    batches = cached_batches([features], labels, batch_size, seed)
    return batches.map(lambda inputs, label: (inputs[0], label))
