"""A source, whatever its layout, as ``<target>/<split>/<class>/<image>`` in the canonical splits.

Shared by the ``ingest`` stage (target: a staging folder swapped in as ``paths.raw``) and
``warmstart init`` (target: a temporary folder the schema is proposed from), so both see the same
layout, the same splits and the same duplicate groups.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from warmstart.config.params import Params
from warmstart.data.fetch import IngestError, extract_zip, local_source, source_label, verify_sha256
from warmstart.data.sources import Dataset, SourceImage, find_dataset
from warmstart.data.splitting import (
    Assignment,
    Leak,
    allowed_splits,
    assign,
    duplicate_groups,
    fingerprints,
    leaks,
)
from warmstart.layout import SPLITS
from warmstart.store import Store

logger = logging.getLogger(__name__)

#: Duplicate groups listed one by one in the log (all are in ``paths.split_assignments``).
MAX_LOGGED_GROUPS = 20


@dataclasses.dataclass(frozen=True)
class Ingested:
    """What an ingest found and did: the user's source, the dataset, each image's split."""

    label: str
    dataset: Dataset
    rows: list[Assignment]
    leaks: list[Leak]


def ingest_into(params: Params, target: Path, previous: dict[str, dict[str, str]],
                store: Store) -> Ingested:
    """Materialise ``data.source`` (downloading or extracting it) into ``target``, an empty
    folder; ``previous``: the last ingest's split assignments, which are kept; ``store``: the
    per-image store of the pHashes (see :func:`fingerprints`)."""
    label, source = source_label(params), local_source(params)
    if source.is_dir():
        return _place(params, (source, target), label, previous, (store, False))
    verify_sha256(source, params.data.sha256, label=label)
    extracted = target / "_extracted"  # beside the split folders: a rename, not a copy, away
    try:
        extract_zip(source, extracted, params.data.max_extract_bytes)
        return _place(params, (extracted, target), label, previous, (store, True))
    finally:
        shutil.rmtree(extracted, ignore_errors=True)


def _place(params: Params, folders: tuple[Path, Path], label: str,
           previous: dict[str, dict[str, str]], placing: tuple[Store, bool]) -> Ingested:
    """``folders``: (the source's top, the target); ``placing``: (the store, whether the files
    are moved: our own extraction, or copied: the user's folder)."""
    (top, target), (store, move) = folders, placing
    dataset = find_dataset(top, params.data, label)
    images = dataset.images
    if not images:
        raise IngestError(f"{label} holds no images ({dataset.layout} layout found in "
                          f"{dataset.root or 'its top'}); nothing to ingest.")
    needs_phash = [len(shares) > 1 for shares in allowed_splits(images, params.data)]
    prints = fingerprints(images, needs_phash, params.validate, store)
    groups = duplicate_groups(images, prints, params.validate.near_duplicate_distance)
    rows = assign(images, prints, groups, previous, params.data)
    _materialise(images, rows, target, move)
    return Ingested(label, dataset, rows, leaks(rows))


def _materialise(images: list[SourceImage], rows: list[Assignment], target: Path,
                 move: bool) -> None:
    """Copy (folder source: it stays untouched) or move (our extraction) each image to
    ``<split>/<class>/``; a name taken there gets the start of its sha256."""
    taken: set[Path] = set()
    for split in SPLITS:
        (target / split).mkdir(parents=True, exist_ok=True)
    for image, row in tqdm(sorted(zip(images, rows, strict=True), key=lambda p: p[0].path),
                           desc="ingest", unit="file"):
        dest = _free_name(target / row.split / row.label, PurePosixPath(image.path), row.sha256,
                          taken)
        dest.parent.mkdir(exist_ok=True)
        (shutil.move if move else shutil.copyfile)(image.file, dest)


def _free_name(folder: Path, path: PurePosixPath, sha256: str, taken: set[Path]) -> Path:
    """The source's file name, unless an image of another source folder took it."""
    dest, number = folder / path.name, 1
    while dest in taken:
        number += 1
        suffix = "" if number == 2 else f"-{number}"  # -2, -3...: byte-identical namesakes
        dest = folder / f"{path.stem}-{sha256[:12]}{suffix}{path.suffix}"
    taken.add(dest)
    return dest


def log_summary(result: Ingested) -> None:
    """Layout, splits and classes, imbalance, duplicate groups and leaks, in the log."""
    dataset, rows = result.dataset, result.rows
    logger.info("%s: %s layout in %s/, %d images, splits: %s", result.label, dataset.layout,
                dataset.root or ".", len(rows), ", ".join(
                    f"{s}={sum(r.split == s for r in rows)}" for s in SPLITS))
    for split, counts in class_counts(rows).items():
        logger.info("  %s: %s", split, ", ".join(f"{c}={n}" for c, n in sorted(counts.items()))
                    or "no images")
    totals = Counter(row.label for row in rows)
    (large, most), (small, least) = max(totals.items(), key=lambda kv: kv[1]), min(
        totals.items(), key=lambda kv: kv[1])
    logger.info("%d classes; imbalance (largest / smallest class) %.2f: %s %d / %s %d",
                len(totals), most / least, large, most, small, least)
    kept = sum(not row.new for row in rows)
    logger.info("Split assignments: %d kept from the previous ingest, %d new", kept,
                len(rows) - kept)
    _log_groups(rows)
    for leak in result.leaks:
        logger.warning("Leak across splits: near- or byte-identical images are in %s; new: %s. "
                       "Old images keep their split (validate reports the pair too): remove "
                       "the new copy, or delete paths.split_assignments to re-split.",
                       "; ".join(f"{s}: {', '.join(p)}" for s, p in sorted(leak.splits.items())),
                       ", ".join(leak.new) or "none")


def class_counts(rows: list[Assignment]) -> dict[str, dict[str, int]]:
    """split -> class -> images, for every canonical split."""
    counts: dict[str, dict[str, int]] = {split: defaultdict(int) for split in SPLITS}
    for row in rows:
        counts[row.split][row.label] += 1
    return {split: dict(c) for split, c in counts.items()}


def duplicate_sets(rows: list[Assignment]) -> list[list[Assignment]]:
    """The groups of more than one image (byte- or near-identical), largest first."""
    by_group: dict[str, list[Assignment]] = defaultdict(list)
    for row in rows:
        by_group[row.group].append(row)
    return sorted((g for g in by_group.values() if len(g) > 1), key=lambda g: (-len(g),
                                                                                g[0].group))


def _log_groups(rows: list[Assignment]) -> None:
    groups = duplicate_sets(rows)
    exact = sum(len({r.sha256 for r in g}) == 1 for g in groups)
    logger.info("Duplicate groups: %d (%d images; %d byte-identical, %d near-identical), each "
                "kept in one split", len(groups), sum(map(len, groups)), exact,
                len(groups) - exact)
    for number, group in enumerate(groups):
        labels = sorted({r.label for r in group})
        log = logger.info if number < MAX_LOGGED_GROUPS else logger.debug
        log("  %s -> %s%s", ", ".join(r.path for r in group),
            "/".join(sorted({r.split for r in group})),
            f" (conflicting labels: {', '.join(labels)})" if len(labels) > 1 else "")
