"""Stage `features`: one pass of the frozen base over every image, kept for both training stages.

With the base frozen (and no augmentation) every transfer epoch would push every image through
the whole base to get the same numbers again, and every fine-tune epoch would recompute
the frozen layers below ``finetune.fine_tune_at``. This stage computes both once, in a single
pass, into two DVC outputs:

* ``paths.features``: ``base.keras`` (the exact base the caches came from: the transfer stage
  builds its classifier on it), ``<split>.npz`` for train, validation and test (pooled
  ``features``, ``labels`` and the image ``paths``, relative to ``paths.raw``: evaluate's
  label-issue search names the files) and ``features.json`` (counts, timings and the cache
  key: data, image size, architecture, alpha, weights file hash, base weights). The transfer
  stage depends on this output only, so changing ``fine_tune_at`` leaves it byte-identical and
  DVC does not re-run transfer.
* ``paths.prefix``: the boundary tensors of the fine-tune cut (see ``modeling/prefix_cache.py``):
  the training split as ``finetune.cache_dtype``, validation and test as float32, so that the
  finetune stage's validation and test predictions are exactly the full model's.

Each image's pooled features and boundary tensors are kept in the per-image store
(``warmstart/modeling/feature_store.py``): only images not found there go through the base, and
the caches are the same bytes as a run from scratch. ``paths.features_details`` records how many
images were computed and reused.
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
    FEATURES_INFO_FILE,
    PREFIX_INFO_FILE,
    SPLITS,
    TRAIN,
    features_file,
)
from warmstart.modeling.cache_keys import make_key
from warmstart.modeling.cache_size import cache_bytes, check_disk_space
from warmstart.modeling.feature_cache import features_key
from warmstart.modeling.feature_store import image_parts, stored_batches
from warmstart.modeling.model import FineTuneAt, base_input, build_base, fine_tune_index, save_model
from warmstart.modeling.prefix_cache import prefix_key, save_prefix
from warmstart.modeling.surgery import boundary_names, boundary_tensors
from warmstart.modeling.training import seed_everything
from warmstart.store import Store

logger = logging.getLogger(__name__)

def run_features(params: Params) -> Path:
    started = time.monotonic()
    seed_everything(params.train.seed, params.train.deterministic)
    manifest = Manifest.read(params.path("processed"))
    base = build_base(manifest.image_size, params.base, params.root)
    at = fine_tune_index(base, params.finetune.fine_tune_at)
    dtype = params.finetune.cache_dtype
    extractor = one_pass_extractor(base, at)
    counts = {split: manifest.count(split) for split in SPLITS}
    check_disk_space({key: params.path(key) for key in ("features", "prefix")},
                     cache_bytes(base, extractor, counts, dtype))
    features_info = {"image_size": manifest.image_size,
                     "architecture": params.base.architecture, "alpha": params.base.alpha,
                     "feature_dim": int(extractor.outputs[0].shape[-1]), "splits": {},
                     **make_key(features_key(manifest, base, params.base, params.root))}
    prefix_info = {"fine_tune_at": at, "boundary": boundary_names(base, at), "dtype": dtype,
                   "splits": {}, **make_key(prefix_key(manifest, base, params.finetune))}
    logger.info("prefix cache: frozen layers 0..%d, boundary %s", max(at, 1) - 1,
                prefix_info["boundary"])
    store = Store.of(params)
    keying = (store, image_parts(base, at, params.base, params.root,
                                 (one_pass_extractor, batch_forward)))
    with atomic_dir(params.path("features")) as features, \
            atomic_dir(params.path("prefix")) as prefix:
        save_model(base, features / BASE_FILE)
        for split in SPLITS:
            split_dtype = dtype if split == TRAIN else "float32"
            pooled, boundary, seconds = extract(extractor, manifest, split,
                                                (params.train.batch_size, split_dtype), keying)
            paths, labels = split_index(manifest, split)
            np.savez(features / features_file(split), features=pooled, labels=labels,
                     paths=np.array(paths, dtype=np.str_))
            save_prefix(prefix, split, boundary, labels)
            features_info["splits"][split] = {"count": len(pooled), "seconds": round(seconds, 2)}
            prefix_info["splits"][split] = {"count": len(pooled), "dtype": split_dtype,
                                            "bytes": int(sum(a.nbytes for a in boundary))}
        write_json(features / FEATURES_INFO_FILE, features_info)
        write_json(prefix / PREFIX_INFO_FILE, prefix_info)
    record_reuse(params, store, time.monotonic() - started)
    return params.path("features")


def record_reuse(params: Params, store: Store, seconds: float) -> None:
    """Evict from the store, then write and log how many images were computed and reused."""
    store.evict()
    write_json(params.path("features_details"), {**store.counts(), "seconds": round(seconds, 1)})
    logger.info("features: %d images through the base, %d reused from the store, in %.1f s",
                store.computed, store.reused, seconds)


def one_pass_extractor(base: keras.Model, fine_tune_at: FineTuneAt) -> keras.Model:
    """Raw pixels -> [pooled features, *boundary tensors at ``fine_tune_at``], in one forward."""
    inner = keras.Model(base.input, [base.output, *boundary_tensors(base, fine_tune_at)],
                        name="frozen_base")
    pixels = keras.Input(shape=base.input_shape[1:], name="image")
    feature_map, *boundary = tree.flatten(inner(base_input(base, pixels), training=False))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(feature_map)
    return keras.Model(pixels, [pooled, *boundary], name="caches")


def extract(extractor: keras.Model, manifest: Manifest, split: str, batching: tuple[int, str],
            keying: tuple[Store, dict]) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Batched and streamed into preallocated arrays: memory is the caches plus one batch.

    ``batching`` is (batch size, boundary dtype); ``keying`` the store and the images' key parts.
    """
    (batch_size, dtype), start, count = batching, time.perf_counter(), manifest.count(split)
    pooled = np.empty((count, *extractor.outputs[0].shape[1:]), np.float32)
    boundary = [np.empty((count, *t.shape[1:]), dtype) for t in extractor.outputs[1:]]
    offset, function = 0, batch_forward(extractor)
    batches = stored_batches(lambda x: [o.numpy() for o in tree.flatten(function(x))],
                             manifest, split, batching, keying)
    for outputs in tqdm(batches, total=-(-count // batch_size), desc=f"features {split}",
                        unit="batch"):
        for array, output in zip([pooled, *boundary], outputs, strict=True):
            array[offset:offset + len(output)] = output
        offset += len(outputs[0])
    seconds = time.perf_counter() - start
    size = sum(a.nbytes for a in boundary) / 2**20
    logger.info("%s: %d images -> features %s + %d boundary tensor(s) (%.0f MiB %s) in %.1f s "
                "(%.0f img/s)", split, count, pooled.shape[1:], len(boundary), size, dtype,
                seconds, count / max(seconds, 1e-9))
    return pooled, boundary, seconds


def batch_forward(model: keras.Model) -> tf.types.experimental.PolymorphicFunction:
    """``model`` in inference mode, traced once for any batch size (the last batch is smaller:
    ``predict_on_batch`` would trace the whole base a second time for it)."""
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda images: model(images, training=False), input_signature=[spec])
