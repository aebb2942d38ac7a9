"""Dataset sources in the layouts people have: class folders, CSV manifests, zips, and images
with a chosen pHash (to build near-duplicates, and images that are not)."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import idctn

from tests.helpers.images import CLASS_COLOURS, write_image
from warmstart.validation.phash import HASH_SIZE, THUMB_SIZE


def make_class_folders(root: Path, counts: dict[str, int], first_seed: int = 0) -> Path:
    """``root/<class>/<class>.<n>.jpg``: class-coloured noisy images, ``counts`` per class."""
    colours = list(CLASS_COLOURS.values())
    for number, (label, count) in enumerate(counts.items()):
        for index in range(count):
            seed = first_seed + number * 10_000 + index
            size = (40 + seed % 23, 36 + seed % 19)
            write_image(root / label / f"{label}.{index + first_seed}.jpg",
                        colours[number % len(colours)], size, seed)
    return root


def zip_tree(folder: Path, archive: Path, prefix: str = "",
             extra: dict[str, bytes] | None = None) -> Path:
    """Zip ``folder``'s files under ``prefix/`` (if any), plus ``extra`` members as given."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            zf.write(path, f"{prefix}/{name}" if prefix else name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


def write_csv(path: Path, rows: list[tuple[str, ...]],
              header: tuple[str, ...] = ("path", "label", "split")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def bits_with_ones(ones: list[int]) -> list[int]:
    """A 63-bit pHash body (the AC bits) with exactly 31 ones: the median then lies between
    the ones and the zeros, so the hash of :func:`write_phash_image` is exactly these bits."""
    assert len(set(ones)) == 31 and all(0 <= i < 63 for i in ones)
    return [1 if i in ones else 0 for i in range(63)]


def write_phash_image(path: Path, bits: list[int], size: int = 64) -> Path:
    """A grey PNG whose pHash is ``0`` followed by ``bits``: its 8x8 lowest DCT frequencies are
    set (+ for a one, - for a zero, well away from the median), the rest are 0."""
    low = np.zeros(HASH_SIZE * HASH_SIZE)
    low[0] = 128.0 * THUMB_SIZE  # mean grey 128 under the orthonormal DCT
    low[1:] = [(12 + i % 5) if bit else -(12 + i % 5) for i, bit in enumerate(bits)]
    coefficients = np.zeros((THUMB_SIZE, THUMB_SIZE))
    coefficients[:HASH_SIZE, :HASH_SIZE] = low.reshape(HASH_SIZE, HASH_SIZE)
    thumb = np.clip(np.rint(idctn(coefficients, norm="ortho")), 0, 255).astype(np.uint8)
    scale = size // THUMB_SIZE  # a whole multiple: the BOX thumbnail gives the values back
    pixels = np.kron(thumb, np.ones((scale, scale), np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(path, "PNG")
    return path
