"""Stage `features`: one pass of the frozen base over every image, kept for both training stages.

With the base frozen (and no augmentation) every transfer epoch would push every image through
the whole base to get the same numbers again, and every fine-tune epoch would recompute
the frozen layers below ``finetune.fine_tune_at``. This stage computes both once, in a single
pass, into two DVC outputs:

* ``paths.features``: ``base.keras`` (the exact base the caches came from: the transfer stage
  builds its classifier on it), for train, validation and test the pooled ``features``,
  ``labels`` and the image ``paths`` (relative to ``paths.raw``: evaluate's label-issue search
  names the files) and ``features.json`` (counts, each array's shards and the cache key: data,
  image size, architecture, alpha, weights file hash, base weights). The transfer stage depends
  on this output only, so changing ``fine_tune_at`` leaves it byte-identical and DVC does not
  re-run transfer.
* ``paths.prefix``: the boundary tensors of the fine-tune cut (see ``modeling/prefix_cache.py``):
  the training split as ``finetune.cache_dtype``, validation and test as float32, so that the
  finetune stage's validation and test predictions are exactly the full model's.

Every array is written as fixed-row ``.npy`` shards (``modeling/array_shards.py``), batch by
batch as the base computes it: the stage's memory is one batch of outputs (plus the split's
labels and paths), whatever the number of images. Each image's pooled features and boundary
tensors are also kept in the per-image store (``modeling/feature_store.py``): only images not
found there go through the base, and the caches are the same bytes as a run from scratch. Both
outputs are the same bytes for the same inputs: what differs between runs (seconds, images
computed and reused from the store) goes to ``paths.features_details``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import tree
from tqdm import tqdm

from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import Params
from warmstart.data.records import Manifest, split_index
from warmstart.layout import (
    BASE_FILE,
    FEATURES_ARRAY,
    FEATURES_INFO_FILE,
    LABELS_ARRAY,
    PATHS_ARRAY,
    PREFIX_INFO_FILE,
    SPLITS,
    TRAIN,
    boundary_array,
)
from warmstart.modeling.array_shards import ArraySpec, CacheWriter, ShardWriter
from warmstart.modeling.cache_keys import make_key
from warmstart.modeling.cache_size import cache_bytes, check_disk_space
from warmstart.modeling.feature_cache import features_key
from warmstart.modeling.feature_store import image_parts, stored_batches
from warmstart.modeling.model import FineTuneAt, base_input, build_base, fine_tune_index, save_model
from warmstart.modeling.prefix_cache import prefix_key
from warmstart.modeling.surgery import boundary_names, boundary_tensors
from warmstart.modeling.training import seed_everything
from warmstart.store import Store

logger = logging.getLogger(__name__)

#: What one split of the caches holds: the arrays computed batch by batch (pooled features,
#: then the boundary tensors) and the image index (labels, paths) known before the pass.
SplitCaches = dict[str, list[ArraySpec]]
#: How a split's outputs are computed: ((batch size, boundary dtype), (store, key parts)).
Computing = tuple[tuple[int, str], tuple[Store, dict]]
#: The extractor in inference mode as a tf.function (:func:`batch_forward`), traced once per
#: stage (a trace of the base takes about a second).
Traced = tf.types.experimental.PolymorphicFunction


def run_features(params: Params) -> Path:
    started = time.monotonic()
    seed_everything(params.train.seed, params.train.deterministic)
    manifest = Manifest.read(params.path("processed"))
    base = build_base(manifest.image_size, params.base, params.root)
    at = fine_tune_index(base, params.finetune.fine_tune_at)
    dtype = params.finetune.cache_dtype
    extractor = one_pass_extractor(base, at)
    index = {split: split_index(manifest, split) for split in SPLITS}
    specs = {split: split_specs(extractor, split_dtype(dtype, split), *index[split])
             for split in SPLITS}
    check_disk_space({key: params.path(key) for key in ("features", "prefix")},
                     cache_bytes(base, specs))
    features_info, prefix_info = cache_infos(params, manifest, base, extractor)
    store = Store.of(params)
    parts = image_parts(base, at, params.base, params.root, (one_pass_extractor, batch_forward))
    seconds, forward = {}, batch_forward(extractor)  # traced once for every split
    with atomic_dir(params.path("features")) as features, \
            atomic_dir(params.path("prefix")) as prefix:
        save_model(base, features / BASE_FILE)
        folders = {"features": features, "prefix": prefix}
        for split in SPLITS:
            computing = ((params.train.batch_size, split_dtype(dtype, split)), (store, parts))
            seconds[split] = round(write_split(forward, manifest, split, computing,
                                               ((folders, specs[split]), index[split])), 2)
            features_info["splits"][split] = split_info(specs[split]["features"], split)
            prefix_info["splits"][split] = split_info(specs[split]["prefix"], split)
        write_json(features / FEATURES_INFO_FILE, features_info)
        write_json(prefix / PREFIX_INFO_FILE, prefix_info)
    record_reuse(params, store, {"split_seconds": seconds,
                                 "seconds": round(time.monotonic() - started, 1)})
    return params.path("features")


def split_dtype(dtype: str, split: str) -> str:
    """The boundary dtype of a split: ``finetune.cache_dtype`` for train, else float32 (exact
    validation and test predictions)."""
    return dtype if split == TRAIN else "float32"


def cache_infos(params: Params, manifest: Manifest, base: keras.Model, extractor: keras.Model
                ) -> tuple[dict, dict]:
    """The two caches' info files without their splits: what they hold and their keys."""
    at = fine_tune_index(base, params.finetune.fine_tune_at)
    features_info = {"image_size": manifest.image_size,
                     "architecture": params.base.architecture, "alpha": params.base.alpha,
                     "feature_dim": int(extractor.outputs[0].shape[-1]), "splits": {},
                     **make_key(features_key(manifest, base, params.base, params.root))}
    prefix_info = {"fine_tune_at": at, "boundary": boundary_names(base, at),
                   "dtype": params.finetune.cache_dtype, "splits": {},
                   **make_key(prefix_key(manifest, base, params.finetune))}
    logger.info("prefix cache: frozen layers 0..%d, boundary %s", max(at, 1) - 1,
                prefix_info["boundary"])
    return features_info, prefix_info


def record_reuse(params: Params, store: Store, timings: dict) -> None:
    """Evict from the store, then write and log how many images were computed and reused."""
    store.evict()
    write_json(params.path("features_details"), {**store.counts(), **timings})
    logger.info("features: %d images through the base, %d reused from the store, in %.1f s",
                store.computed, store.reused, timings["seconds"])


def split_specs(extractor: keras.Model, dtype: str, paths: list[str], labels: np.ndarray
                ) -> SplitCaches:
    """The arrays of one split in each cache, in the order they are written: the computed ones
    first (``extractor``'s outputs: pooled features as float32, boundary tensors as
    ``dtype``), then the index."""
    count, pooled, *boundary = len(labels), *extractor.outputs
    paths_dtype = np.dtype(f"<U{max(map(len, paths), default=1)}")
    index = [ArraySpec.sized(LABELS_ARRAY, count, (), labels.dtype)]
    return {"features": [ArraySpec.sized(FEATURES_ARRAY, count, pooled.shape[1:], "float32"),
                         *index, ArraySpec.sized(PATHS_ARRAY, count, (), paths_dtype)],
            "prefix": [*(ArraySpec.sized(boundary_array(i), count, t.shape[1:], dtype)
                         for i, t in enumerate(boundary)), *index]}


def split_info(specs: list[ArraySpec], split: str) -> dict:
    """One split's entry in an info file: count, dtype, bytes and every array's shards."""
    computed = [s for s in specs if s.name not in (LABELS_ARRAY, PATHS_ARRAY)]
    return {"count": specs[0].rows, "dtype": np.dtype(computed[-1].dtype).name,
            "bytes": sum(s.rows * s.row_bytes for s in computed),
            "arrays": {s.name: s.to_json(split) for s in specs}}


def write_split(forward: Traced, manifest: Manifest, split: str, computing: Computing,
                outputs: tuple[tuple[dict[str, Path], SplitCaches], tuple[list[str], np.ndarray]]
                ) -> float:
    """One split of both caches: the computed arrays streamed batch by batch, then the index
    (labels, paths: known whole). ``outputs``: ((folders, specs), index). The seconds the pass
    over the base took."""
    (folders, specs), (paths, labels) = outputs
    known = {LABELS_ARRAY: labels, PATHS_ARRAY: np.array(paths, dtype=np.str_)}
    computed, indexed = [], []
    for cache in ("features", "prefix"):
        for spec in specs[cache]:
            writers = indexed if spec.name in known else computed
            writers.append(ShardWriter(folders[cache], split, spec))
    with CacheWriter(computed) as writer:
        seconds = extract(forward, manifest, split, computing, writer)
    with CacheWriter(indexed) as writer:
        writer.append([known[w.spec.name] for w in indexed])
    return seconds


def one_pass_extractor(base: keras.Model, fine_tune_at: FineTuneAt) -> keras.Model:
    """Raw pixels -> [pooled features, *boundary tensors at ``fine_tune_at``], in one forward."""
    inner = keras.Model(base.input, [base.output, *boundary_tensors(base, fine_tune_at)],
                        name="frozen_base")
    pixels = keras.Input(shape=base.input_shape[1:], name="image")
    feature_map, *boundary = tree.flatten(inner(base_input(base, pixels), training=False))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(feature_map)
    return keras.Model(pixels, [pooled, *boundary], name="caches")


def extract(forward: Traced, manifest: Manifest, split: str, computing: Computing,
            writer: CacheWriter) -> float:
    """Batched and streamed into ``writer``'s shards: memory is one batch. Each batch's
    ``[pooled, *boundary]`` comes from the store or the base (``computing``: see
    :data:`Computing`). The seconds taken."""
    (batch_size, _), keying = computing
    start, count = time.perf_counter(), manifest.count(split)
    batches = stored_batches(lambda x: [o.numpy() for o in tree.flatten(forward(x))],
                             manifest, split, computing[0], keying)
    for outputs in tqdm(batches, total=-(-count // batch_size), desc=f"features {split}",
                        unit="batch"):
        writer.append(outputs)  # [pooled, *boundary]
    seconds = time.perf_counter() - start
    pooled, *boundary = (w.spec for w in writer.writers)
    size = sum(spec.rows * spec.row_bytes for spec in boundary) / 2**20
    logger.info("%s: %d images -> features %s + %d boundary tensor(s) (%.0f MiB %s) in %.1f s "
                "(%.0f img/s)", split, count, pooled.row_shape, len(boundary), size,
                np.dtype(boundary[-1].dtype).name, seconds, count / max(seconds, 1e-9))
    return seconds


def batch_forward(model: keras.Model) -> Traced:
    """``model`` in inference mode, traced once for any batch size (the last batch is smaller:
    ``predict_on_batch`` would trace the whole base a second time for it)."""
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda images: model(images, training=False), input_signature=[spec])
