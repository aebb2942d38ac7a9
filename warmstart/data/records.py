
"""Reading and writing the preprocessed TFRecord shards as tf.data pipelines.

``Manifest`` (``warmstart.data.manifest``, no TensorFlow) says which shards each split has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from warmstart.atomic import write_json
from warmstart.data.manifest import Manifest
from warmstart.layout import index_file

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "path": tf.io.FixedLenFeature([], tf.string),
}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def serialize_example(image: np.ndarray, label: int, path: str) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def without_autotuning(data: tf.data.Dataset) -> tf.data.Dataset:
    """``data`` with tf.data's autotuning off (``AUTOTUNE`` then means one worker per core).

    Measured on 2 cores: the autotuner's background tuning stalled the first batch of some
    epochs by ~2.5 s while training on the prefix cache (about every third epoch); off, every
    epoch took the same ~2.3 s. These pipelines are short (read, gather, cast) and need no tuning.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def image_dataset(manifest: Manifest, split: str, batch_size: int, shuffle_seed: int | None = None,
                  cache: bool = True) -> tf.data.Dataset:
    """Batches of (float32 pixels in 0..255, int label); shuffled per epoch when a seed is given.

    Pixels are cached as uint8 (a quarter of the memory of float32) and cast per batch.
    The order is deterministic: shards are read in order and shuffling uses ``shuffle_seed``.
    The dataset knows its length (the manifest's count; shards holding another count fail when
    read): on a dataset of unknown length Keras 3.3's ``fit`` counts optimizer steps that never
    ran (8 for 2 epochs of 3 batches), which moves a learning-rate schedule ahead.
    """
    size = manifest.image_size

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        example = tf.io.parse_single_example(record, _FEATURES)
        pixels = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), (size, size, 3))
        return pixels, example["label"]

    records = tf.data.TFRecordDataset(manifest.shard_paths(split)).apply(
        tf.data.experimental.assert_cardinality(manifest.count(split)))
    data = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        data = data.cache()
    if shuffle_seed is not None:
        data = data.shuffle(manifest.count(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    batches = data.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return without_autotuning(batches.prefetch(tf.data.AUTOTUNE))


def selected_pixels(manifest: Manifest, split: str, selected: np.ndarray,
                    batch_size: int = 256) -> Iterator[bytes]:
    """The raw uint8 pixel bytes of the selected images (``selected``: one bool per image, in
    stored order), in stored order. Only the shards holding a selected image are read, and the
    others of their images are skipped inside tf.data, never parsed nor copied to Python: at
    100,000 images, reading every shard for 1 % new ones would read 4.9 GB for 49 MB."""
    size = manifest.shard_size(split)
    shards = [(path, selected[i * size:(i + 1) * size])
              for i, path in enumerate(manifest.shard_paths(split))]
    shards = [(path, picked) for path, picked in shards if picked.any()]
    if not shards:
        return
    mask = tf.constant(np.concatenate([picked for _, picked in shards]), tf.bool)
    records = tf.data.TFRecordDataset([path for path, _ in shards]).enumerate()
    picked = records.filter(lambda i, _: tf.gather(mask, i)).map(lambda _, record: record)
    pixels = picked.batch(batch_size).map(
        lambda r: tf.io.parse_example(r, {"image": _FEATURES["image"]})["image"])
    for batch in pixels.prefetch(1).as_numpy_iterator():
        yield from batch


def labels_of(manifest: Manifest, split: str) -> np.ndarray:
    """All labels of a split, in stored order."""
    return split_index(manifest, split)[1]


def split_index(manifest: Manifest, split: str) -> tuple[list[str], np.ndarray]:
    """(image paths, labels) of a split, in stored order (the order every split dataset has)."""
    index = manifest.index(split)
    return index["paths"], np.asarray(index["labels"], dtype=np.int64)


def pixels_sha256(image: np.ndarray) -> str:
    """The digest of an image's stored uint8 pixels that the index records (and that keys its
    features in the per-image store)."""
    return hashlib.sha256(image.tobytes()).hexdigest()


def write_index(folder: Path, split: str, paths: list[str], labels: list[int],
                digests: list[str]) -> None:
    """The split's index (``Manifest.index``) in ``folder``; ``digests``: :func:`pixels_sha256`
    of each image, in stored order."""
    write_json(folder / index_file(split), {"paths": paths, "pixels_sha256": digests,
                                            "labels": [int(label) for label in labels]})
