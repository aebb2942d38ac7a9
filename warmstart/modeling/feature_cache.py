"""The transfer cache: pooled features of the frozen base, stored once per image.

Written by the ``features`` stage into ``paths.features``: ``base.keras`` (the exact base the
features came from: the transfer stage builds its classifier on it), ``<split>.npz`` (pooled
``features``, ``labels``, image ``paths``) and ``features.json`` (counts, timings and the cache
key: data, image size, architecture, alpha, weights file hash, base weights). The key also
catches a weights file rewritten in place under the same path, which DVC cannot see; the
transfer stage refuses a stale cache.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.config.params import BaseParams
from warmstart.data.records import Manifest, without_autotuning
from warmstart.hashing import sha256_of
from warmstart.layout import FEATURES_INFO_FILE, features_file
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


def load_features(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / features_file(split)) as data:
        return data["features"], data["labels"]


def feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int,
                    seed: int | None) -> tf.data.Dataset:
    """Batches of (features, label), reshuffled each epoch when seeded."""
    data = tf.data.Dataset.from_tensor_slices((features, labels))
    if seed is not None:
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return without_autotuning(data.batch(batch_size).prefetch(tf.data.AUTOTUNE))
