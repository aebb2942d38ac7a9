"""Stage `features`: run the frozen base once over every image and keep the pooled features.

With the base frozen (and no augmentation) every transfer epoch would push every image through
the whole MobileNetV2 to get the same numbers again; this stage does it once. Output
(``paths.features``): ``base.keras`` (the exact base the features came from: the transfer stage
builds its classifier on it), ``<split>.npz`` (``features``, ``labels``) and ``features.json``.
DVC re-runs the stage, and so invalidates the cache, when the data, image size or base change.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from warmstart.atomic import atomic_dir, write_json
from warmstart.dataset import Manifest, image_dataset, labels_of
from warmstart.model import build_base, pooled_features, save_model
from warmstart.params import Params
from warmstart.training import seed_everything

logger = logging.getLogger(__name__)

BASE_FILE = "base.keras"
INFO_FILE = "features.json"


def run_features(params: Params) -> Path:
    seed_everything(params.train.seed)
    manifest = Manifest.read(params.path("processed"))
    base = build_base(manifest.image_size, params.base, params.root)
    extractor = pooled_features(base)
    info = {"image_size": manifest.image_size, "alpha": params.base.alpha,
            "feature_dim": int(extractor.output.shape[-1]), "splits": {}}
    with atomic_dir(params.path("features")) as staging:
        save_model(base, staging / BASE_FILE)
        for split in manifest.splits:
            features, seconds = extract(extractor, manifest, split, params.train.batch_size)
            np.savez(staging / f"{split}.npz", features=features,
                     labels=labels_of(manifest, split))
            info["splits"][split] = {"count": len(features), "seconds": round(seconds, 2)}
        write_json(staging / INFO_FILE, info)
    return params.path("features")


def extract(extractor, manifest: Manifest, split: str, batch_size: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    images = image_dataset(manifest, split, batch_size, cache=False).map(lambda x, y: x)
    features = extractor.predict(images, verbose=2)
    seconds = time.perf_counter() - start
    logger.info("%s: %d images -> features %s in %.1f s (%.0f img/s)", split, len(features),
                features.shape[1:], seconds, len(features) / max(seconds, 1e-9))
    return features.astype(np.float32), seconds


def load_features(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / f"{split}.npz") as data:
        return data["features"], data["labels"]
