"""How much disk the ``features`` stage's caches take, checked before a byte is written.

The prefix cache grows with images x (image size)^2 x the channels crossing the fine-tune cut; at
100,000 images and 224 px it runs to tens of GiB. Running out of disk half-way would waste the
whole pass over the base (and fill the disk for everything else), so the stage estimates its
outputs from the extractor's output shapes, the split sizes and ``finetune.cache_dtype``, and
refuses to start when a filesystem cannot hold them with a margin.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from warmstart.errors import WarmstartError
from warmstart.layout import SPLITS, TRAIN

logger = logging.getLogger(__name__)

#: Safety factor on the estimate (npz and .keras headers, the model's config, the filesystem's
#: blocks) and fixed slack on top: space other processes may take meanwhile.
MARGIN = 1.1
SLACK_BYTES = 64 * 2**20
LABEL_BYTES = np.dtype(np.int64).itemsize
#: What a ``.keras`` file adds to its float32 weights (measured on MobileNetV2: HDF5 metadata per
#: weight, JSON config per layer).
KERAS_BYTES_PER_WEIGHT = 2048
KERAS_BYTES_PER_LAYER = 1024
MIB = 2**20


class DiskSpaceError(WarmstartError):
    """The caches would not fit on the disk."""


def cache_bytes(base: keras.Model, extractor: keras.Model, counts: dict[str, int],
                dtype: str) -> dict[str, int]:
    """Bytes of each cache output (``features``: ``base`` as .keras + pooled features, ``prefix``:
    boundary tensors, training split as ``dtype``, the others float32), before the margin."""
    pooled = math.prod(extractor.outputs[0].shape[1:]) * 4 + LABEL_BYTES
    boundary = sum(math.prod(t.shape[1:]) for t in extractor.outputs[1:])
    itemsize = {split: np.dtype(dtype if split == TRAIN else "float32").itemsize
                for split in SPLITS}
    model = (base.count_params() * 4 + len(base.weights) * KERAS_BYTES_PER_WEIGHT
             + len(base.layers) * KERAS_BYTES_PER_LAYER)
    return {"features": model + pooled * sum(counts.values()),
            "prefix": sum(counts[s] * (boundary * itemsize[s] + LABEL_BYTES) for s in SPLITS)}


def check_disk_space(targets: dict[str, Path], sizes: dict[str, int]) -> None:
    """Fail before writing when a filesystem cannot hold what goes to it (``targets``: output
    name -> folder, ``sizes``: output name -> bytes); log the estimate either way."""
    by_device: dict[int, list[str]] = {}
    for name, folder in targets.items():
        by_device.setdefault(os.stat(existing(folder)).st_dev, []).append(name)
    for names in by_device.values():
        needed = round(sum(sizes[n] for n in names) * MARGIN) + SLACK_BYTES
        free = shutil.disk_usage(existing(targets[names[0]])).free
        logger.info("cache size estimate: %s; %.0f MiB needed with the margin, %.0f MiB free "
                    "on the filesystem of %s", describe(names, sizes), needed / MIB, free / MIB,
                    targets[names[0]])
        if needed > free:
            raise DiskSpaceError(refusal(names, targets, sizes, needed, free))


def refusal(names: list[str], targets: dict[str, Path], sizes: dict[str, int], needed: int,
            free: int) -> str:
    where = ", ".join(str(targets[n]) for n in names)
    return (f"features: not enough disk space for the caches ({describe(names, sizes)}): about "
            f"{needed / MIB:,.0f} MiB are needed with a margin, {free / MIB:,.0f} MiB are free "
            f"on the filesystem of {where}. Nothing was written. Free some space, put the "
            "outputs on a larger disk (paths.features, paths.prefix), or shrink the prefix "
            "cache: finetune.cache_dtype: float16 (halves the training split), a smaller "
            "preprocess.image_size (the size goes with its square), or another "
            "finetune.fine_tune_at (the tensors crossing the cut set the size: prefix.json's "
            "'bytes' per split shows them; a cut just after a downsampling block is smaller).")


def describe(names: list[str], sizes: dict[str, int]) -> str:
    return " + ".join(f"{n} {sizes[n] / MIB:,.1f} MiB" for n in names)


def existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (outputs may not exist yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
