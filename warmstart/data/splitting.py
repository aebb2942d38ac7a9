"""The stable split: which images go to train, validation and test, and why they stay there.

An image whose split the source gives keeps it, except that a source without a test split gives
``data.test_fraction`` of each class's validation images to test. Images without a split (class
folders, a CSV without split column) get ``data.split_fractions``, per class. Byte-identical
(sha256) and near-identical images (pHash Hamming distance <= ``validate.near_duplicate_distance``)
of one pool form a group that lands in one split, so no copy of a photo is on both sides.

Stability: ``paths.split_assignments`` (from the previous ingest) is read first; every image in
it keeps its split. New groups are placed in hash order, each to the split furthest below its
target share of its class (ties by the hash): the same data and previous file give the same
splits. A new image that joins groups already in different splits is reported as a leak.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import PIL
from PIL import Image

from warmstart.atomic import write_text
from warmstart.config.params import DataParams, ValidateParams
from warmstart.data.fetch import IngestError
from warmstart.data.sources import UNSPLIT, SourceImage
from warmstart.hashing import sha256_of
from warmstart.layout import SPLIT_ASSIGNMENT_COLUMNS, SPLITS, TEST, VALIDATION
from warmstart.store import Store, code_digest
from warmstart.validation.phash import connected_groups, near_pairs, phash

logger = logging.getLogger(__name__)

#: Threads hashing and pHashing images (PIL and hashlib release the GIL while they work).
HASH_WORKERS = min(4, os.cpu_count() or 1)
#: The store entries of ingest: a file's pHash (empty: unreadable or over the limits).
PHASH_KIND = "phash"


@dataclasses.dataclass(frozen=True)
class Assignment:
    """One row of ``paths.split_assignments``; ``new``: not in the previous file."""

    path: str
    sha256: str
    label: str
    split: str
    group: str
    new: bool = True


@dataclasses.dataclass(frozen=True)
class Leak:
    """A group whose images are in more than one split (new images joined groups already apart)."""

    splits: dict[str, list[str]]
    new: list[str]


def allowed_splits(images: list[SourceImage], data: DataParams) -> list[dict[str, float]]:
    """Per image, the splits it may go to and their target shares."""
    has_test = any(image.pool == TEST for image in images)
    return [pool_fractions(image.pool, data, has_test) for image in images]


def pool_fractions(pool: str, data: DataParams, has_test: bool) -> dict[str, float]:
    """The target shares of the splits an image of ``pool`` may go to."""
    if pool == UNSPLIT:
        return {split: share for split, share in data.split_fractions.items() if share > 0}
    if pool == VALIDATION and not has_test and data.test_fraction > 0:
        return {VALIDATION: 1 - data.test_fraction, TEST: data.test_fraction}
    return {pool: 1.0}


def fingerprints(images: list[SourceImage], needs_phash: list[bool], limits: ValidateParams,
                 store: Store) -> list[tuple[str, str | None]]:
    """(sha256, pHash or None) per image; pHash only where a split is to be chosen. A pHash
    costs a decode (most of ingest's time): it comes from the per-image store when the store
    holds the file's, and is kept there otherwise; ``store`` counts both."""
    wanted = [need and limits.near_duplicate_distance >= 0 for need in needs_phash]
    parts = phash_parts(limits)

    def one(item: tuple[SourceImage, bool]) -> tuple[str, str | None, bool]:
        image, needed = item
        digest = sha256_of(image.file)
        if not needed:
            return digest, None, False
        key = store.key(PHASH_KIND, digest, parts)
        payload = store.get(key)
        if payload is not None:
            return digest, payload.decode() or None, True
        value = _phash_of(image.file, limits)
        store.put(key, (value or "").encode())
        return digest, value, False

    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        found = list(pool.map(one, zip(images, wanted, strict=True)))
    hits = sum(hit for *_, hit in found)
    store.reused, store.computed = store.reused + hits, store.computed + sum(wanted) - hits
    return [(digest, value) for digest, value, _ in found]


def phash_parts(limits: ValidateParams) -> dict:
    """What a file's pHash depends on besides its content: the code, Pillow and the limits
    above which a file is never decoded."""
    return {"code": code_digest(_phash_of, phash), "pillow": PIL.__version__,
            "max_file_bytes": limits.max_file_bytes, "max_image_pixels": limits.max_image_pixels}


def _phash_of(file: Path, limits: ValidateParams) -> str | None:
    """The pHash validate computes (grey of the RGB decode), by PIL; None if unreadable or over
    the size limits (validate reports those files; ingest never decodes a bomb)."""
    if limits.near_duplicate_distance < 0 or file.stat().st_size > limits.max_file_bytes:
        return None
    try:
        with Image.open(file) as image:
            if image.width * image.height > limits.max_image_pixels:
                return None
            return phash(image.convert("RGB").convert("L"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def duplicate_groups(images: list[SourceImage], prints: list[tuple[str, str | None]],
                     max_distance: int) -> list[str]:
    """The group of each image: the smallest sha256 of the byte- or near-identical images of
    its pool that it is connected to (its own sha256 when it has no duplicate)."""
    pairs = ((members[0], other, 0) for members in _linked(images, prints, max_distance)
             for other in members[1:])
    group_of = [digest for digest, _ in prints]
    for members in connected_groups(pairs, len(images)):
        smallest = min(prints[i][0] for i in members)
        for index in members:
            group_of[index] = smallest
    return group_of


def _linked(images: list[SourceImage], prints: list[tuple[str, str | None]],
            max_distance: int) -> Iterable[list[int]]:
    """Index lists that belong together: same pool and same sha256, or a near pHash pair."""
    by_pool: dict[str, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_pool[image.pool].append(index)
    for members in by_pool.values():
        same: dict[str, list[int]] = defaultdict(list)
        for index in members:
            same[prints[index][0]].append(index)
        yield from same.values()
        hashed = [i for i in members if prints[i][1] is not None]
        for a, b, _ in near_pairs([prints[i][1] for i in hashed], max_distance):
            yield [hashed[a], hashed[b]]


def read_assignments(path: Path) -> dict[str, dict[str, str]]:
    """The previous ingest's rows by source path ({} when there is no file yet)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    if tuple(reader.fieldnames or ()) != SPLIT_ASSIGNMENT_COLUMNS:
        raise IngestError(f"{path} (paths.split_assignments) has the columns "
                          f"{reader.fieldnames}, not {','.join(SPLIT_ASSIGNMENT_COLUMNS)}: "
                          "restore it from git/DVC, or delete it to split every image afresh.")
    return {row["path"]: row for row in rows}


def write_assignments(path: Path, rows: list[Assignment]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SPLIT_ASSIGNMENT_COLUMNS)
    for row in sorted(rows, key=lambda r: r.path):
        writer.writerow([row.path, row.sha256, row.label, row.split, row.group])
    write_text(path, out.getvalue())


def assign(images: list[SourceImage], prints: list[tuple[str, str | None]], groups: list[str],
           previous: dict[str, dict[str, str]], data: DataParams) -> list[Assignment]:
    """Each image's split: its previous one where allowed, else chosen group by group."""
    allowed = allowed_splits(images, data)
    old = _previous_splits(images, prints, previous, allowed)
    # Groups are formed within a pool; the same content in two pools (a copy in the source's
    # train/ and test/) is two groups: each keeps the split its pool allows.
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[images[index].pool, group].append(index)
    splits, counts = dict(old), _counts(images, old)
    for key in sorted(members):
        indices = sorted(members[key], key=lambda i: (prints[i][0], images[i].path))
        kept = [old[i] for i in indices if i in old]
        first = indices[0]
        split = kept[0] if kept else _furthest_below(
            counts[images[first].pool, images[first].label], allowed[first], key[1])
        for index in indices:
            if index not in old:
                splits[index] = split
                counts[images[index].pool, images[index].label][split] += 1
    return [Assignment(image.path, prints[i][0], image.label, splits[i], groups[i], i not in old)
            for i, image in enumerate(images)]


def _previous_splits(images: list[SourceImage], prints: list[tuple[str, str | None]],
                     previous: dict[str, dict[str, str]],
                     allowed: list[dict[str, float]]) -> dict[int, str]:
    """Index -> previous split, for images whose path and content are in the previous file
    (or, moved or renamed, whose content is) and whose pool still allows that split."""
    by_sha = {row["sha256"]: row["split"] for row in previous.values()}
    old = {}
    for index, image in enumerate(images):
        row = previous.get(image.path)
        split = row["split"] if row and row["sha256"] == prints[index][0] else by_sha.get(
            prints[index][0])
        if split in allowed[index]:
            old[index] = split
    return old


def _counts(images: list[SourceImage], splits: dict[int, str]) -> dict[tuple, Counter]:
    counts: dict[tuple, Counter] = defaultdict(Counter)
    for index, split in splits.items():
        counts[images[index].pool, images[index].label][split] += 1
    return counts


def _furthest_below(counts: Counter, shares: dict[str, float], key: str) -> str:
    """The split whose count of this class is furthest below its share once one more image is
    placed; ties go by the group's hash, so no split is favoured. A group counts as one image
    here (weighing it by its size would send nearly every duplicate pair to train, and
    validation and test would lack the kind of photos that come in bursts)."""
    total = sum(counts.values()) + 1
    deficits = {split: share * total - counts[split] for split, share in shares.items()}
    best = max(deficits.values())
    tied = [split for split in SPLITS if split in deficits and deficits[split] >= best - 1e-9]
    return tied[int(key[:8], 16) % len(tied)]


def leaks(rows: list[Assignment]) -> list[Leak]:
    """Groups found in more than one split: new images joined groups that were already apart
    (old images never move, so validate's cross-split duplicate check reports them too)."""
    by_group: dict[str, list[Assignment]] = defaultdict(list)
    for row in rows:
        by_group[row.group].append(row)
    found = []
    for members in by_group.values():
        splits: dict[str, list[str]] = defaultdict(list)
        for row in members:
            splits[row.split].append(row.path)
        if len(splits) > 1:
            found.append(Leak(dict(splits), [r.path for r in members if r.new]))
    return found
