"""The per-image metadata table that data validation computes statistics and checks over.

One row per file under ``<raw>/<split>/...``: where it is and its label (class folder); what it
really is (format sniffed from the content, not the extension); its size, aspect ratio and colour
mode; whether the training decoder (``tf.io.decode_image``, the one preprocessing uses) can decode
it and, if not, why; its mean brightness and contrast; its exact content hash (sha256) and its
perceptual hash (pHash, for near-duplicates); its EXIF Orientation tag.

EXIF Orientation: phone photos are often stored sideways with a tag telling viewers to rotate
them. The training decoder (``tf.io.decode_image``) ignores the tag, and so does serving (the
same decoder), so warmstart trains and serves the pixels as stored: no train/serve skew. The
column only lets validate name the files a person sees rotated (an advisory warning).

Each file is read once and decoded once, in a pool of threads with a bounded number of files in
flight, so memory stays bounded whatever the dataset size. Nothing is decoded before its header
passed the size limits (decompression-bomb guard); symlinks are never followed.

What a row says about the content (everything but where the file is, its label, extension and
size, and the refusals made before reading it) is kept in the per-image store
(``warmstart/store.py``), keyed by the content hash, ``validate.max_image_pixels`` and the code
that computes it: a file already seen is read and hashed, not decoded again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import PIL
import tensorflow as tf
from PIL import Image, ImageStat, UnidentifiedImageError
from tqdm import tqdm

import warmstart.data.decode as decode
import warmstart.validation.phash as phash_module
from warmstart.config.params import ValidateParams
from warmstart.data.decode import decode_rgb, decoder_message
from warmstart.layout import STAT_FEATURES
from warmstart.store import Store, code_digest
from warmstart.validation.phash import phash

logger = logging.getLogger(__name__)

#: Every column of the table, in order.
COLUMNS = ["split", "label", "path", "format", "extension", "mode", "width", "height", "aspect",
           "channels", "orientation", "file_bytes", "decodable", "brightness", "contrast",
           "sha256", "phash", "status", "error"]
#: Columns TFDV computes statistics over (the rest identify files or explain errors).
STAT_COLUMNS = list(STAT_FEATURES)
CATEGORICAL_COLUMNS = ("label", "format", "extension", "mode")
FLOAT_COLUMNS = ("aspect", "brightness", "contrast")
#: Label of a file lying directly in a split folder instead of in a class folder.
NO_CLASS = "(no class folder)"
#: Formats recognised by their magic bytes; anything else is "other".
MAGIC = (("jpeg", 0, b"\xff\xd8\xff"), ("png", 0, b"\x89PNG\r\n\x1a\n"), ("gif", 0, b"GIF87a"),
         ("gif", 0, b"GIF89a"), ("bmp", 0, b"BM"), ("webp", 8, b"WEBP"))
#: Row status: "ok" or why the file could not be (fully) inspected.
OK = "ok"
#: The EXIF tag of the orientation a viewer shows (1: as stored; also without the tag).
EXIF_ORIENTATION = 0x0112

Image.MAX_IMAGE_PIXELS = None  # the pixel limit is enforced explicitly, before any decode

T = TypeVar("T")
R = TypeVar("R")


def list_image_files(raw: Path, splits: tuple[str, ...]) -> list[tuple[str, str, Path]]:
    """(split, label, path) for every file (or symlink) under each split, in a stable order."""
    found = []
    for split in splits:
        for path in sorted((raw / split).rglob("*")):
            if path.is_symlink() or not path.is_dir():
                rel = path.relative_to(raw / split)
                label = rel.parts[0] if len(rel.parts) > 1 else NO_CLASS
                found.append((split, label, path))
    return found


def empty_class_folders(raw: Path, splits: tuple[str, ...]) -> list[str]:
    """Class folders (``<split>/<class>``) holding no file at all, relative to ``raw``."""
    empty = []
    for split in splits:
        folder = raw / split
        for child in sorted(folder.iterdir()) if folder.is_dir() else []:
            if child.is_dir() and not child.is_symlink() and not _holds_files(child):
                empty.append(child.relative_to(raw).as_posix())
    return empty


def _holds_files(folder: Path) -> bool:
    return any(p.is_symlink() or not p.is_dir() for p in folder.rglob("*"))


def sniff_format(head: bytes) -> str:
    """jpeg, png, gif, bmp, webp by the content's magic bytes, else "other"."""
    for name, offset, magic in MAGIC:
        if head[offset:offset + len(magic)] == magic and (name != "webp" or head[:4] == b"RIFF"):
            return name
    return "other"


def describe_image(raw: Path, split: str, label: str, path: Path, limits: ValidateParams,
                   store: Store | None) -> tuple[dict, bool]:
    """One table row and whether its content facts came from ``store`` (None: no store).

    The file is read once; a file not found in the store is checked by its header, then
    decoded fully once."""
    row = _blank_row(raw, split, label, path)
    refusal = _refusal(path, row["file_bytes"], limits.max_file_bytes)
    if refusal:
        return {**row, **refusal}, False
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    key = store.key("row", sha256, row_parts(limits)) if store else ""
    stored = store.get(key) if store else None
    if stored is not None:
        return {**row, **json.loads(stored)}, True
    facts = {"sha256": sha256, **content_facts(data, limits)}
    if store:
        store.put(key, json.dumps(facts).encode())
    return {**row, **facts}, False


def row_parts(limits: ValidateParams) -> dict:
    """What a row's content facts depend on besides the content: the pixel limit (it decides
    whether an image is decoded) and the code and libraries computing them. The other limits
    act before the file is read or on whole rows later (checks.py), never on these facts."""
    return {"max_image_pixels": limits.max_image_pixels, **_row_code()}


@functools.cache
def _row_code() -> dict:
    return {"code": code_digest(sys.modules[__name__], decode, phash_module),
            "tensorflow": tf.__version__, "pillow": PIL.__version__, "numpy": np.__version__}


def content_facts(data: bytes, limits: ValidateParams) -> dict:
    """Format, header, decodability and measures of a file's bytes (the row without its place)."""
    facts = {"format": sniff_format(data[:16]), **_read_header(data)}
    if facts.get("status", OK) != OK:
        return facts
    pixels = facts["width"] * facts["height"]
    if pixels > limits.max_image_pixels:
        return {**facts, "status": "too_many_pixels",
                "error": f"{facts['width']}x{facts['height']} = {pixels} pixels exceeds "
                         f"validate.max_image_pixels={limits.max_image_pixels} (decompression "
                         "bomb guard: not decoded)"}
    return {**facts, **_decode_and_measure(data)}


def _blank_row(raw: Path, split: str, label: str, path: Path) -> dict:
    return {"split": split, "label": label, "path": path.relative_to(raw).as_posix(),
            "format": "other", "extension": path.suffix.lower().lstrip("."), "mode": "unknown",
            "width": 0, "height": 0, "aspect": math.nan, "channels": 0, "orientation": 1,
            "file_bytes": path.lstat().st_size, "decodable": 0, "brightness": math.nan,
            "contrast": math.nan, "sha256": "", "phash": "", "status": OK, "error": ""}


def _refusal(path: Path, size: int, max_bytes: int) -> dict | None:
    """Files that are not read at all: symlinks, non-regular files, empty and huge files."""
    if path.is_symlink():
        return {"status": "symlink",
                "error": f"symlink to {path.readlink()}: not followed (raw data must be regular "
                         "files inside the dataset)"}
    if not path.is_file():
        return {"status": "not_a_file", "error": "not a regular file"}
    if size == 0:
        return {"status": "empty", "error": "empty file (0 bytes)"}
    if size > max_bytes:
        return {"status": "too_many_bytes",
                "error": f"{size} bytes exceeds validate.max_file_bytes={max_bytes}: not read"}
    return None


def _read_header(data: bytes) -> dict:
    """Format details from the header only (Pillow decodes lazily: no pixels yet)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return {"mode": image.mode, "width": width, "height": height,
                    "channels": len(image.getbands()), "orientation": _orientation(image),
                    "aspect": max(width, height) / max(min(width, height), 1)}
    except UnidentifiedImageError:
        return {"status": "unreadable",
                "error": f"not a readable image: unknown format (starts with {data[:8]!r})"}
    except (OSError, ValueError, SyntaxError) as exc:
        return {"status": "unreadable", "error": f"not a readable image: {exc}"}


def _orientation(image: Image.Image) -> int:
    """The EXIF Orientation from the header's EXIF block (``getexif`` could decode a PNG)."""
    raw = image.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block says nothing about the pixels: as stored
        return 1


def _decode_and_measure(data: bytes) -> dict:
    """Decode with the training decoder; brightness, contrast and pHash of the result."""
    try:
        pixels = decode_rgb(tf.constant(data)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        return {"status": "undecodable",
                "error": f"training decoder failed: {decoder_message(exc)}"}
    grey = Image.fromarray(pixels, "RGB").convert("L")
    del pixels
    stat = ImageStat.Stat(grey)  # from the histogram: no float copy of the image
    return {"decodable": 1, "brightness": round(stat.mean[0], 3),
            "contrast": round(stat.stddev[0], 3), "phash": phash(grey)}


def bounded_map(function: Callable[[T], R], items: Iterable[T], workers: int,
                in_flight: int) -> Iterator[R]:
    """``map`` over threads, in order, with at most ``in_flight`` items submitted at once."""
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def build_table(raw: Path, splits: tuple[str, ...], limits: ValidateParams,
                store: Store | None) -> pd.DataFrame:
    """Describe every file under the splits (threads: TF decoding and Pillow release the GIL);
    with a ``store``, its ``reused`` and ``computed`` count the rows found there and not."""
    files = list_image_files(raw, splits)
    rows = bounded_map(lambda f: describe_image(raw, *f, limits, store), files, limits.workers,
                       in_flight=4 * limits.workers)
    records = []
    for record, reused in tqdm(rows, total=len(files), desc="inspect images", unit="img"):
        records.append(record)
        if store:
            store.reused, store.computed = store.reused + reused, store.computed + (not reused)
    table = pd.DataFrame(records, columns=COLUMNS)
    return table.astype({c: np.int64 for c in ("width", "height", "channels", "orientation",
                                               "file_bytes", "decodable")})
