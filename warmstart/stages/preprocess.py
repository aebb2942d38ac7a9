"""Stage `preprocess`: decode + resize every validated image once into TFRecord shards.

Output (``paths.processed``): ``<split>-NNNNN-of-MMMMM.tfrecord`` shards of raw uint8 pixels
(``image_size`` squared, RGB), the label index and the source path, plus ``manifest.json`` with
the class names, image size and per-split counts (in all and per class) of the train, validation
and test splits, and per split ``<split>-index.json``: each image's path, label and the sha256
of its pixels (what later stages look up without reading the shards). Training reads these
without any per-image Python work. Images are kept in the table's (sorted) order; shuffling
happens at training time.

Each image's pixels are kept in the per-image store (``warmstart/store.py``), keyed by its
content hash, the image size and the decoder (its code and TensorFlow's version): only images
not found there are decoded, and the shards are the same bytes as a run from scratch.
``paths.preprocess_details`` records how many images were decoded and reused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

import warmstart.data.decode as decode
from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import Params
from warmstart.data.decode import load_image
from warmstart.data.records import pixels_sha256, serialize_example, shard_name, write_index
from warmstart.data.validated import read_validated
from warmstart.errors import WarmstartError
from warmstart.layout import MANIFEST_FILE, SPLITS
from warmstart.store import Store, code_digest, pack_arrays, unpack_arrays

logger = logging.getLogger(__name__)


class PreprocessError(WarmstartError):
    """The validated data lacks a split."""


def run_preprocess(params: Params) -> Path:
    """Write the shards and manifest for the train, validation and test splits."""
    started = time.monotonic()
    table, classes = read_validated(params.path("validated"))
    raw = params.path("raw")
    size = params.preprocess.image_size
    store = Store.of(params)
    splits = {}
    with atomic_dir(params.path("processed")) as staging:
        for split in SPLITS:
            rows = split_rows(table, split)
            paths = list(rows["path"])  # relative to raw: shards do not depend on where it lies
            labels = [classes.index(label) for label in rows["label"]]
            files = (raw, paths, content_hashes(rows, params.path("validated")))
            shards = write_shards(staging, split, files, labels, size,
                                  (params.preprocess.shard_size, store))
            splits[split] = {"count": len(paths), "shards": shards,
                             "shard_size": params.preprocess.shard_size,
                             "class_counts": {name: labels.count(i)
                                              for i, name in enumerate(classes)}}
        write_json(staging / MANIFEST_FILE, {"classes": classes, "image_size": size,
                                             "splits": splits})
    store.evict()
    seconds = time.monotonic() - started
    write_json(params.path("preprocess_details"), {**store.counts(), "seconds": round(seconds, 1),
                                                   "images": len(table)})
    logger.info("preprocess: %d images decoded, %d reused from the store, in %.1f s",
                store.computed, store.reused, seconds)
    return params.path("processed")


def split_rows(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """The images of ``split`` that were not quarantined; every split must have some."""
    rows = table[(table["split"] == split) & (table["quarantined"] == 0)]
    if rows.empty:
        raise PreprocessError(f"The validated data has no {split} images (splits: "
                              f"{sorted(set(table['split']))}): ingest always writes "
                              f"{', '.join(SPLITS)}; re-run `dvc repro`.")
    return rows


def content_hashes(rows: pd.DataFrame, validated: Path) -> list[str]:
    """The files' sha256 as validate computed it (each file is read for it once, there): the
    store's key. A usable row always has one."""
    unhashed = rows.loc[rows["sha256"] == "", "path"].tolist()
    if unhashed:
        raise PreprocessError(f"{validated} lists usable images without a content hash "
                              f"({unhashed[:3]}): re-run `dvc repro --force validate`.")
    return list(rows["sha256"])


def write_shards(folder: Path, split: str, files: tuple[Path, list[str], list[str]],
                 labels: list[int],
                 size: int, sharding: tuple[int, Store]) -> list[str]:
    """Write fixed-size shards of the pixels (from the store, or decoded) in the given order,
    and the split's index (paths, labels, pixel digests).

    ``files`` is (raw folder, paths relative to it, their content sha256); the shards record
    the relative paths.
    ``sharding`` is (images per shard, the per-image store).
    """
    (raw, paths, hashes), (shard_size, store) = files, sharding
    count = -(-len(paths) // shard_size)
    names = [shard_name(split, i, count) for i in range(count)]
    images = stored_pixels([raw / path for path in paths], hashes, size, store)
    writer, digests = None, []
    progress = tqdm(zip(images, paths, labels, strict=True), total=len(paths),
                    desc=f"preprocess {split}", unit="img")
    for index, (image, path, label) in enumerate(progress):
        if index % shard_size == 0:
            if writer:
                writer.close()
            writer = tf.io.TFRecordWriter(str(folder / names[index // shard_size]))
        writer.write(serialize_example(image, label, path))
        digests.append(pixels_sha256(image))
    if writer:
        writer.close()
    write_index(folder, split, paths, labels, digests)
    logger.info("%s: %d images -> %d shard(s) of %dx%d pixels", split, len(paths), count,
                size, size)
    return names


def pixel_parts(size: int) -> dict:
    """What decoded pixels depend on besides the file's content: the size and the decoder."""
    return {"image_size": size, "decoder": code_digest(decode), "tensorflow": tf.__version__}


def stored_pixels(files: list[Path], hashes: list[str], size: int, store: Store
                  ) -> Iterator[np.ndarray]:
    """Each file's uint8 pixels, in order: from the store (keyed by ``hashes``, the files'
    content sha256), else decoded and stored. An entry that turns out corrupt when read is
    decoded on the spot."""
    parts = pixel_parts(size)
    keys = store.keys("pixels", hashes, parts)
    missing = {i for i, key in enumerate(keys) if not store.contains(key)}
    decoded = decode_files([file for i, file in enumerate(files) if i in missing], size)
    for index, (file, key) in enumerate(zip(files, keys, strict=True)):
        payload = None if index in missing else store.get(key)
        if payload is not None:
            store.reused += 1
            yield unpack_arrays(payload)[0]
            continue
        image = next(decoded) if index in missing else load_image(str(file), size).numpy()
        store.computed += 1
        store.put(key, pack_arrays([image]))
        yield image


def decode_files(files: list[Path], size: int) -> Iterator[np.ndarray]:
    """The files' pixels, decoded in parallel by tf.data, in order."""
    if not files:
        return iter(())
    paths = tf.data.Dataset.from_tensor_slices([str(file) for file in files])
    return paths.map(lambda p: load_image(p, size), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True).as_numpy_iterator()
