"""The ``features`` stage's per-image results in the store: pooled features and boundary tensors.

An image's entry is keyed by the sha256 of its preprocessed pixels and everything the frozen base
makes of them: image size, architecture, alpha, the weights file's hash and the base's weight
values, the cut (layer index and boundary layer names), the boundary dtype, the code building
the extractor and the TensorFlow and Keras versions. Only misses go through the base, batch by
batch in manifest order. That an image's outputs do not depend on the other images of its batch
nor on the batch's size (checked on CPU by ``tests/test_store.py``) makes the outputs the same
bytes as a run from scratch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.config.params import BaseParams
from warmstart.data.records import Manifest, pixel_batches
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
    stored. ``keying``: the store and :func:`image_parts`."""
    (batch_size, dtype), (store, parts) = batching, keying
    parts = {**parts, "dtype": dtype}
    size = manifest.image_size
    for encoded in pixel_batches(manifest, split, batch_size):
        keys = [store.key("features", hashlib.sha256(p).hexdigest(), parts) for p in encoded]
        found = [store.get(key) for key in keys]
        missing = [i for i, payload in enumerate(found) if payload is None]
        pixels = np.stack([np.frombuffer(encoded[i], np.uint8).reshape(size, size, 3)
                           for i in missing]) if missing else None
        computed = iter(per_image(forward(pixels.astype(np.float32)), dtype) if missing else [])
        rows = []
        for key, payload in zip(keys, found, strict=True):
            if payload is None:
                rows.append(next(computed))
                store.put(key, pack_arrays(rows[-1]))
            else:
                rows.append(unpack_arrays(payload))
        store.reused, store.computed = store.reused + len(keys) - len(missing), \
            store.computed + len(missing)
        yield [np.stack(column) for column in zip(*rows, strict=True)]


def per_image(outputs: list[np.ndarray], dtype: str) -> list[list[np.ndarray]]:
    """A batch's ``[pooled, *boundary]`` as one list per image (boundary cast to ``dtype``)."""
    pooled, *boundary = outputs
    cast = [pooled, *(array.astype(dtype) for array in boundary)]
    return [[array[i] for array in cast] for i in range(len(pooled))]
