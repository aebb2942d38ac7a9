"""Synthetic images: a distinct noisy colour per class, in ``<split>/<class>/`` datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: A distinct mean colour per class, so even a random-weights base separates them.
CLASS_COLOURS = {"cats": (200, 60, 60), "dogs": (60, 60, 200), "birds": (60, 200, 60)}


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int], seed: int,
                fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
    pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, fmt)
    return path


def make_dataset(root: Path, classes: tuple[str, ...] = ("cats", "dogs"),
                 per_class: dict[str, int] | None = None) -> Path:
    """``root/<split>/<class>/<n>.jpg`` with class-coloured noisy images of varied sizes."""
    per_class = per_class or {"train": 12, "validation": 6}
    seed = 0
    for split, count in per_class.items():
        for label in classes:
            for index in range(count):
                seed += 1
                size = (40 + (seed * 7) % 30, 36 + (seed * 5) % 30)
                write_image(root / split / label / f"{label}.{index}.jpg", CLASS_COLOURS[label],
                            size, seed)
    return root
