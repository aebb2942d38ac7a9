"""Writing a features cache's arrays in tests: planted features, scrambled splits, old formats.

The arrays go through the stage's own writer (``warmstart/modeling/array_shards.py``), so every
reader sees a real cache; ``features.json``, where present, lists them as the stage does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from warmstart.layout import FEATURES_ARRAY, FEATURES_INFO_FILE, LABELS_ARRAY, PATHS_ARRAY
from warmstart.modeling.array_shards import ArraySpec, CacheWriter, ShardWriter


def write_feature_split(folder: Path, split: str, features: np.ndarray, labels: np.ndarray,
                        paths: list[str] | np.ndarray | None = None) -> None:
    """Replace (or add) one split of the features cache in ``folder``: its shards (and its
    entry in ``features.json`` if there is one). ``paths`` None: none recorded (as a cache of
    an older stage)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{split}/*.npy"):
        old.unlink()
    arrays = {FEATURES_ARRAY: np.asarray(features, np.float32),
              LABELS_ARRAY: np.asarray(labels, np.int64)}
    if paths is not None:
        arrays[PATHS_ARRAY] = np.asarray(paths, dtype=np.str_)
    specs = {name: ArraySpec.sized(name, len(v), v.shape[1:], v.dtype)
             for name, v in arrays.items()}
    with CacheWriter([ShardWriter(folder, split, spec) for spec in specs.values()]) as writer:
        writer.append(list(arrays.values()))
    info_file = folder / FEATURES_INFO_FILE
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        info["splits"][split]["arrays"] = {name: spec.to_json(split)
                                           for name, spec in specs.items()}
        info_file.write_text(json.dumps(info, indent=2))
