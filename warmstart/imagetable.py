"""The per-image metadata table that data validation computes statistics over.

One row per file under ``<raw>/<split>/...``: where it is, its label (class folder), what it
really is (format sniffed from content, not the extension), its size and colour mode, and whether
the training decoder can decode it (a full decode, guarded against decompression bombs).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from warmstart.imaging import decode_rgb

logger = logging.getLogger(__name__)

#: Columns TFDV computes statistics over (path and error are for reports only).
STAT_COLUMNS = ["label", "format", "extension", "mode", "width", "height", "channels",
                "file_bytes", "decodable"]
#: Label of a file lying directly in a split folder instead of in a class folder.
NO_CLASS = "(no class folder)"

Image.MAX_IMAGE_PIXELS = None  # the pixel limit is enforced explicitly in describe_image


@dataclass(frozen=True)
class ImageRecord:
    split: str
    label: str
    path: str  # relative to the raw folder, POSIX separators
    format: str
    extension: str
    mode: str
    width: int
    height: int
    channels: int
    file_bytes: int
    decodable: int
    error: str


def list_image_files(raw: Path, splits: tuple[str, ...]) -> list[tuple[str, str, Path]]:
    """(split, label, path) for every file under each split, in a stable order."""
    found = []
    for split in splits:
        for path in sorted((raw / split).rglob("*")):
            if path.is_file() or path.is_symlink():
                rel = path.relative_to(raw / split)
                label = rel.parts[0] if len(rel.parts) > 1 else NO_CLASS
                found.append((split, label, path))
    return found


def describe_image(raw: Path, split: str, label: str, path: Path,
                   max_pixels: int) -> ImageRecord:
    """Sniff the header with Pillow, then fully decode with the training decoder."""
    fields = {"split": split, "label": label, "path": path.relative_to(raw).as_posix(),
              "extension": path.suffix.lower().lstrip("."),
              "file_bytes": path.lstat().st_size}
    header = _read_header(path)
    fields.update(header)
    if header["error"]:
        return ImageRecord(decodable=0, **fields)
    pixels = header["width"] * header["height"]
    if pixels > max_pixels:
        fields["error"] = (f"{header['width']}x{header['height']} = {pixels} pixels exceeds "
                           f"validate.max_image_pixels={max_pixels} (decompression bomb guard)")
        return ImageRecord(decodable=0, **fields)
    fields["error"] = _full_decode_error(path)
    return ImageRecord(decodable=int(not fields["error"]), **fields)


def _read_header(path: Path) -> dict:
    unknown = {"format": "unknown", "mode": "unknown", "width": 0, "height": 0, "channels": 0}
    if path.is_symlink():
        return {**unknown, "error": f"symlink to {path.readlink()} (not a regular file)"}
    try:
        with Image.open(path) as image:
            return {"format": (image.format or "unknown").lower(), "mode": image.mode,
                    "width": image.width, "height": image.height,
                    "channels": len(image.getbands()), "error": ""}
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return {**unknown, "error": f"not a readable image: {exc}"}


def _full_decode_error(path: Path) -> str:
    try:
        decode_rgb(tf.io.read_file(str(path)))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        return f"decode failed: {exc.message.splitlines()[0]}"
    return ""


def build_table(raw: Path, splits: tuple[str, ...], workers: int,
                max_pixels: int) -> pd.DataFrame:
    """Describe every file (in parallel threads; TF decoding releases the GIL)."""
    files = list_image_files(raw, splits)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(describe_image, raw, s, lab, p, max_pixels) for s, lab, p in files]
        records = [job.result() for job in tqdm(jobs, desc="inspect images", unit="img")]
    columns = list(ImageRecord.__dataclass_fields__)
    return pd.DataFrame([asdict(r) for r in records], columns=columns)
