"""How much disk the ``features`` stage's caches take, checked before a byte is written.

The prefix cache grows with images x (image size)^2 x the channels crossing the fine-tune cut; at
100,000 images and 224 px it runs to tens of GiB. Running out of disk half-way would waste the
whole pass over the base (and fill the disk for everything else), so the stage estimates its
outputs from the arrays it is about to write (the extractor's output shapes, the split sizes,
``finetune.cache_dtype``, the paths' length; ``array_shards.ArraySpec``: rows and shards),
and refuses to start when a filesystem cannot hold them with a margin.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import keras

from warmstart.errors import WarmstartError
from warmstart.modeling.array_shards import ArraySpec

logger = logging.getLogger(__name__)

#: Safety factor on the estimate (.keras headers, the model's config, the filesystem's blocks)
#: and fixed slack on top: space other processes may take meanwhile.
MARGIN = 1.1
SLACK_BYTES = 64 * 2**20
#: A ``.npy`` shard's header (numpy pads it to a multiple of 64 bytes; 128 for these arrays).
NPY_HEADER_BYTES = 128
#: What a ``.keras`` file adds to its float32 weights (measured on MobileNetV2: HDF5 metadata per
#: weight, JSON config per layer).
KERAS_BYTES_PER_WEIGHT = 2048
KERAS_BYTES_PER_LAYER = 1024
MIB = 2**20


class DiskSpaceError(WarmstartError):
    """The caches would not fit on the disk."""


def cache_bytes(base: keras.Model, specs: dict[str, dict[str, list[ArraySpec]]]
                ) -> dict[str, int]:
    """Bytes of each cache output before the margin: ``features``: ``base`` as .keras plus its
    arrays, ``prefix``: its arrays (``specs``: split -> output name -> the arrays written)."""
    model = (base.count_params() * 4 + len(base.weights) * KERAS_BYTES_PER_WEIGHT
             + len(base.layers) * KERAS_BYTES_PER_LAYER)
    sizes = {"features": model, "prefix": 0}
    for outputs in specs.values():
        for name, arrays in outputs.items():
            sizes[name] += sum(array_bytes(spec) for spec in arrays)
    return sizes


def array_bytes(spec: ArraySpec) -> int:
    """One array's shards on disk: rows plus a header per shard."""
    return spec.rows * spec.row_bytes + len(spec.shard_lengths()) * NPY_HEADER_BYTES


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
