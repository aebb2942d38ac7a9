"""Stage `ingest`: bring a dataset (http(s) URL, local .zip or local folder) into ``paths.raw``.

The output layout is ``<raw>/<split>/<class>/<image>`` for the two configured splits. The source
is never modified. Archives are checked before anything is extracted: members that would land
outside the target (zip-slip), symlinks, and archives larger than ``data.max_extract_bytes`` are
refused. Downloads stream to a temporary file with a progress bar and are renamed into place only
when complete and, if ``data.sha256`` is set, verified.
"""

from __future__ import annotations

import logging
import shutil
import stat
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from warmstart.atomic import atomic_dir, atomic_path
from warmstart.config.params import DataParams, Params, is_url
from warmstart.errors import WarmstartError
from warmstart.hashing import CHUNK_BYTES, sha256_of

logger = logging.getLogger(__name__)

class IngestError(WarmstartError):
    """The dataset source cannot be ingested safely; the message says why and how to fix it."""


def run_ingest(params: Params) -> Path:
    """Materialise ``data.source`` as ``paths.raw``; return the raw folder."""
    data = params.data
    source = _local_source(params)
    raw = params.path("raw")
    with atomic_dir(raw) as staging:
        if source.is_dir():
            root = _find_dataset_root(source, data)
            _copy_splits(root, staging, data)
        else:
            _verify_sha256(source, data.sha256)
            _extract_zip(source, staging / "_extracted", data.max_extract_bytes)
            root = _find_dataset_root(staging / "_extracted", data)
            _move_splits(root, staging, data)
            shutil.rmtree(staging / "_extracted")
    _log_summary(raw, data)
    return raw


def _local_source(params: Params) -> Path:
    """The source as a local path: downloading it first (atomically) when it is a URL."""
    source = params.data.source
    if not is_url(source):
        return (params.root / source).resolve()
    name = PurePosixPath(urllib.parse.urlparse(source).path).name or "dataset.zip"
    target = params.path("downloads") / name
    if target.is_file() and _sha256_matches(target, params.data.sha256):
        logger.info("Using already downloaded %s", target)
        return target
    download(source, target, params.data.sha256, params.data.max_download_bytes)
    return target


def download(url: str, target: Path, sha256: str | None, max_bytes: int) -> None:
    """Stream ``url`` to ``target`` atomically, with progress, a size limit and a checksum."""
    if not is_url(url):
        raise IngestError(f"Refusing to download {url!r}: only http(s) URLs are supported.")
    logger.info("Downloading %s -> %s", url, target)
    with atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        if total and total > max_bytes:
            raise IngestError(f"{url} is {total} bytes, over data.max_download_bytes={max_bytes}.")
        _stream(response, tmp, total, max_bytes, url)
        _verify_sha256(tmp, sha256, label=url)


def _stream(response, tmp: Path, total: int | None, max_bytes: int, url: str) -> None:
    written = 0
    with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                      desc="download") as bar:
        while chunk := response.read(CHUNK_BYTES):
            written += len(chunk)
            if written > max_bytes:
                raise IngestError(f"{url} exceeds data.max_download_bytes={max_bytes}; "
                                  "raise the limit if the dataset really is that large.")
            out.write(chunk)
            bar.update(len(chunk))


def _verify_sha256(path: Path, expected: str | None, label: str | None = None) -> None:
    if expected is None:
        logger.info("sha256 of %s: %s (set data.sha256 to pin it)", label or path, sha256_of(path))
        return
    if not _sha256_matches(path, expected):
        raise IngestError(
            f"Checksum mismatch for {label or path}: expected sha256 {expected}, got "
            f"{sha256_of(path)}. The file is not the one params.yaml pins: fix data.source "
            "or data.sha256.")


def _sha256_matches(path: Path, expected: str | None) -> bool:
    return expected is None or sha256_of(path) == expected.lower()


def _extract_zip(archive: Path, target: Path, max_bytes: int) -> None:
    """Extract after checking every member: no escape from ``target``, no symlink, size bound."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not _is_junk(m.filename)]
        _check_members(members, target, archive, max_bytes)
        for member in tqdm(members, desc="extract", unit="file"):
            zf.extract(member, target)


def _check_members(members: list[zipfile.ZipInfo], target: Path, archive: Path,
                   max_bytes: int) -> None:
    root = target.resolve()
    for member in members:
        dest = (root / member.filename).resolve()
        if not dest.is_relative_to(root) or PurePosixPath(member.filename).is_absolute():
            raise IngestError(f"{archive}: member {member.filename!r} would be written outside "
                              "the extraction folder (zip-slip); refusing the whole archive.")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise IngestError(f"{archive}: member {member.filename!r} is a symlink; archives "
                              "with symlinks are refused. Re-create the zip without links.")
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise IngestError(f"{archive} expands to {total} bytes, over data.max_extract_bytes="
                          f"{max_bytes} (possible zip bomb); raise the limit if it is genuine.")


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p == "__MACOSX" or p.startswith("._") or p == ".DS_Store" for p in parts)


def _find_dataset_root(top: Path, data: DataParams) -> Path:
    """The folder holding both split folders: ``top`` itself or a single level below it."""
    splits = (data.train_split, data.validation_split)
    candidates = [top, *sorted(p for p in top.iterdir() if p.is_dir())]
    for candidate in candidates:
        if all((candidate / split).is_dir() for split in splits):
            return candidate
    raise IngestError(
        f"{top} has no {splits[0]}/ and {splits[1]}/ folders (looked in it and one level below). "
        "Expected <split>/<class>/<image>; set data.train_split/data.validation_split if the "
        "split folders have other names.")


def _copy_splits(root: Path, staging: Path, data: DataParams) -> None:
    for split in (data.train_split, data.validation_split):
        _refuse_symlinks(root / split)
        shutil.copytree(root / split, staging / split)


def _move_splits(root: Path, staging: Path, data: DataParams) -> None:
    for split in (data.train_split, data.validation_split):
        shutil.move(root / split, staging / split)
    extras = sorted(p.name for p in root.iterdir() if p.name not in (data.train_split,
                                                                     data.validation_split))
    if extras:
        logger.info("Ignoring entries beside the split folders: %s", ", ".join(extras))


def _refuse_symlinks(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise IngestError(f"{path} is a symlink; the dataset folder must hold real files "
                              "(a link may point outside the dataset). Replace it with a copy.")


def _log_summary(raw: Path, data: DataParams) -> None:
    for split in (data.train_split, data.validation_split):
        classes = sorted(p for p in (raw / split).iterdir() if p.is_dir())
        counts = ", ".join(f"{c.name}={sum(1 for f in c.iterdir() if f.is_file())}"
                           for c in classes)
        logger.info("%s: %s", split, counts or "no class folders")
