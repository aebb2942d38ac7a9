"""Cache keys: what a cached tensor file was computed from, checked before it is used.

DVC re-runs a caching stage when its deps or params change (data, base params, image size,
``fine_tune_at``). The key adds what DVC cannot see — e.g. a weights file rewritten in place under
the same path — and guards against a cache and a model that do not belong together: the consumer
recomputes the key from what it is about to train and refuses a cache whose key differs, naming
the parts that changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import keras

from warmstart.data.records import Manifest
from warmstart.errors import WarmstartError
from warmstart.layout import MANIFEST_FILE

#: Bump when the layout of a cache changes, so older caches are refused.
FORMAT_VERSION = 2  # 2: .npy shards streamed from disk (was: one .npz per split)


class StaleCacheError(WarmstartError):
    """A cache was computed from other data, weights, image size or cut than the current run."""


def data_digest(manifest: Manifest) -> str:
    """sha256 over the manifest and each split's index: every image's path, label and pixels'
    sha256, in stored order. Any change of the processed data changes it, without reading the
    shards again (gigabytes at 100,000 images)."""
    digest = hashlib.sha256((manifest.folder / MANIFEST_FILE).read_bytes())
    for split in sorted(manifest.splits):
        digest.update(manifest.index_path(split).read_bytes())
    return digest.hexdigest()


def weights_digest(layers: list[keras.layers.Layer]) -> str:
    """sha256 over every weight (trainable or not: BatchNorm statistics too) of ``layers``.

    A weight is named by its layer and its position there, not by its own name: an unnamed
    weight (ConvNeXt's LayerScale ``gamma``) gets a process-wide counter as its name
    (``variable_18``), different once the model is saved and loaded again."""
    digest = hashlib.sha256()
    for layer in layers:
        for index, weight in enumerate(layer.weights):
            value = keras.ops.convert_to_numpy(weight)
            digest.update(f"{layer.name}/{index}:{value.dtype}:{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def make_key(parts: dict[str, Any]) -> dict[str, Any]:
    """``{"parts": ..., "key": sha256}`` for a cache's info file."""
    parts = {"format": FORMAT_VERSION, **parts}
    text = json.dumps(parts, sort_keys=True)
    return {"parts": parts, "key": hashlib.sha256(text.encode()).hexdigest()}


def check_cache(info_file: Path, expected: dict[str, Any]) -> None:
    """Refuse the cache described by ``info_file`` unless its key is ``expected``'s.

    The StaleCacheError names every part that differs and how to refresh the cache (both caches
    come from the ``features`` stage).
    """
    recorded = json.loads(info_file.read_text())
    wanted = make_key(expected)
    if recorded.get("key") == wanted["key"]:
        return
    old = recorded.get("parts", {})
    changed = sorted(k for k in set(old) | set(wanted["parts"])
                     if old.get(k) != wanted["parts"].get(k))
    details = "; ".join(f"{k}: cached {old.get(k)!r}, now {wanted['parts'].get(k)!r}"
                        for k in changed)
    raise StaleCacheError(f"The cache in {info_file.parent} is stale ({details}). Re-run the "
                          "features stage: `dvc repro --force features` (or `dvc repro` after "
                          "changing data or params).")
