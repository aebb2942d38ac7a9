"""The ``features`` stage's per-image results in the store: pooled features and boundary tensors.

An image's entry is keyed by the sha256 of its preprocessed pixels and everything the frozen
base makes of them: image size, architecture, alpha, the weights file's hash and the base's
weight values, the cut (layer index and boundary layer names), the boundary dtype, the code
building the extractor and the TensorFlow and Keras versions. Only misses go through the base
(and only their pixels are read), batch by batch in manifest order. That an image's outputs do
not depend on the other images of its batch nor on the batch's size (checked on CPU by
``tests/test_store.py``) makes the outputs the same bytes as a run from scratch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.config.params import BaseParams
from warmstart.data.records import Manifest, selected_pixels
from warmstart.hashing import sha256_of
from warmstart.modeling.cache_keys import weights_digest
from warmstart.modeling.model import base_input
from warmstart.modeling.surgery import boundary_names, boundary_tensors
from warmstart.store import Store, code_digest, pack_arrays, unpack_arrays

#: Raw pixels (float32 batch) -> [pooled features, *boundary tensors], as numpy arrays.
Forward = Callable[[np.ndarray], list[np.ndarray]]


def image_parts(base: keras.Model, at: int, variant: BaseParams, root: Path,
                code: tuple) -> dict:
    """What an image's features depend on besides its pixels (and the dtype, per split).

    ``code``: the functions that build and run the extractor (their source is part of the key).
    """
    path = variant.weights_path(root)
    return {"image_size": int(base.input_shape[1]), "architecture": variant.architecture,
            "alpha": variant.alpha, "weights": "file" if path else variant.weights,
            "weights_sha256": sha256_of(path) if path else None,
            "base_weights": weights_digest(base.layers), "fine_tune_at": at,
            "boundary": boundary_names(base, at),
            "code": code_digest(*code, base_input, boundary_tensors),
            "tensorflow": tf.__version__, "keras": keras.__version__}


def stored_batches(forward: Forward, manifest: Manifest, split: str, batching: tuple[int, str],
                   keying: tuple[Store, dict]) -> Iterator[list[np.ndarray]]:
    """Per batch of ``batching[0]`` images in manifest order: ``[pooled, *boundary]`` (boundary
    as ``batching[1]``), from the store or computed (the batch's misses, in one forward) and
    stored. ``keying``: the store and :func:`image_parts`.

    Images are keyed by the pixel digests in the split's index, so only the misses' pixels are
    read from the shards: after 1 % new images, 1 % of them."""
    (batch_size, dtype), (store, parts) = batching, keying
    parts = {**parts, "dtype": dtype}
    keys = store.keys("features", manifest.index(split)["pixels_sha256"], parts)
    stored = np.array([store.contains(key) for key in keys], dtype=bool)
    misses = selected_pixels(manifest, split, ~stored)
    for start in range(0, len(keys), batch_size):
        batch = range(start, min(start + batch_size, len(keys)))
        found = {i: store.get(keys[i]) for i in batch if stored[i]}
        missing = [i for i in batch if found.get(i) is None]  # absent, or corrupt when read
        pixels = [next(misses) if not stored[i] else one_image(manifest, split, i)
                  for i in missing]
        computed = dict(zip(missing, per_image(forward(float_batch(pixels, manifest.image_size)),
                                               dtype) if missing else [], strict=True))
        for i, row in computed.items():
            store.put(keys[i], pack_arrays(row))
        store.reused, store.computed = store.reused + len(batch) - len(missing), \
            store.computed + len(missing)
        rows = [computed[i] if i in computed else unpack_arrays(found[i]) for i in batch]
        yield [np.stack(column) for column in zip(*rows, strict=True)]


def one_image(manifest: Manifest, split: str, index: int) -> bytes:
    """The pixels of the ``index``-th image of ``split`` (a store entry found corrupt)."""
    return next(selected_pixels(manifest, split, np.arange(manifest.count(split)) == index))


def float_batch(pixels: list[bytes], size: int) -> np.ndarray:
    """Raw uint8 pixel bytes as the float32 batch the base takes."""
    return np.stack([np.frombuffer(p, np.uint8).reshape(size, size, 3) for p in pixels]
                    ).astype(np.float32)


def per_image(outputs: list[np.ndarray], dtype: str) -> list[list[np.ndarray]]:
    """A batch's ``[pooled, *boundary]`` as one list per image (boundary cast to ``dtype``)."""
    pooled, *boundary = outputs
    cast = [pooled, *(array.astype(dtype) for array in boundary)]
    return [[array[i] for array in cast] for i in range(len(pooled))]
