"""Stage `preprocess`: decode + resize every validated image once into TFRecord shards.

Output (``paths.processed``): ``<split>-NNNNN-of-MMMMM.tfrecord`` shards of raw uint8 pixels
(``image_size`` squared, RGB), the label index and the source path, plus ``manifest.json`` with
the class names, image size and per-split counts (in all and per class) of the train,
validation and test splits. Training reads these without any per-image
Python work. Images are kept in the table's (sorted) order; shuffling happens at training time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import Params
from warmstart.data.decode import load_image
from warmstart.data.records import serialize_example, shard_name
from warmstart.data.validated import read_validated
from warmstart.errors import WarmstartError
from warmstart.layout import MANIFEST_FILE, SPLITS

logger = logging.getLogger(__name__)


class PreprocessError(WarmstartError):
    """The validated data lacks a split."""


def run_preprocess(params: Params) -> Path:
    """Write the shards and manifest for the train, validation and test splits."""
    table, classes = read_validated(params.path("validated"))
    raw = params.path("raw")
    size = params.preprocess.image_size
    splits = {}
    with atomic_dir(params.path("processed")) as staging:
        for split in SPLITS:
            rows = split_rows(table, split)
            paths = list(rows["path"])  # relative to raw: shards do not depend on where it lies
            labels = [classes.index(label) for label in rows["label"]]
            shards = write_shards(staging, split, (raw, paths), labels, size,
                                  params.preprocess.shard_size)
            splits[split] = {"count": len(paths), "shards": shards,
                             "class_counts": {name: labels.count(i)
                                              for i, name in enumerate(classes)}}
        write_json(staging / MANIFEST_FILE, {"classes": classes, "image_size": size,
                                             "splits": splits})
    return params.path("processed")


def split_rows(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """The images of ``split`` that were not quarantined; every split must have some."""
    rows = table[(table["split"] == split) & (table["quarantined"] == 0)]
    if rows.empty:
        raise PreprocessError(f"The validated data has no {split} images (splits: "
                              f"{sorted(set(table['split']))}): ingest always writes "
                              f"{', '.join(SPLITS)}; re-run `dvc repro`.")
    return rows


def write_shards(folder: Path, split: str, files: tuple[Path, list[str]], labels: list[int],
                 size: int, shard_size: int) -> list[str]:
    """Decode in parallel with tf.data (order preserved) and write fixed-size shards.

    ``files`` is (raw folder, paths relative to it); the shards record the relative paths.
    """
    raw, paths = files
    count = -(-len(paths) // shard_size)
    names = [shard_name(split, i, count) for i in range(count)]
    absolute = [str(raw / path) for path in paths]
    images = tf.data.Dataset.from_tensor_slices(absolute).map(
        lambda p: load_image(p, size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    writer = None
    progress = tqdm(zip(images, paths, labels, strict=True), total=len(paths),
                    desc=f"preprocess {split}", unit="img")
    for index, (image, path, label) in enumerate(progress):
        if index % shard_size == 0:
            if writer:
                writer.close()
            writer = tf.io.TFRecordWriter(str(folder / names[index // shard_size]))
        writer.write(serialize_example(image.numpy(), label, path))
    if writer:
        writer.close()
    logger.info("%s: %d images -> %d shard(s) of %dx%d pixels", split, len(paths), count,
                size, size)
    return names
