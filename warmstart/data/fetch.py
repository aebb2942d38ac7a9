"""Getting a dataset source onto local disk safely: downloads and zip extraction.

Downloads stream to a temporary file with a progress bar, a size limit and an optional sha256,
and are renamed into place only when complete. Archives are checked before anything is
extracted: members that would land outside the target (zip-slip), symlinks, and archives larger
than ``data.max_extract_bytes`` are refused. Junk (macOS metadata, dotfiles) is never extracted.
"""

from __future__ import annotations

import logging
import os
import stat
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from warmstart.atomic import atomic_path
from warmstart.config.params import Params, is_url
from warmstart.errors import WarmstartError
from warmstart.hashing import CHUNK_BYTES, sha256_of

logger = logging.getLogger(__name__)


class IngestError(WarmstartError):
    """The dataset source cannot be ingested safely; the message says why and how to fix it."""


def source_label(params: Params) -> str:
    """The source as the user gave it (a URL, or the absolute zip/folder path): what every
    message names, never a download or extraction folder of ours."""
    source = params.data.source
    return source if is_url(source) else os.path.abspath(params.root / source)


def local_source(params: Params) -> Path:
    """The source as a local path: downloading it first (atomically) when it is a URL."""
    source = params.data.source
    if not is_url(source):
        return Path(source_label(params))
    name = PurePosixPath(urllib.parse.urlparse(source).path).name or "dataset.zip"
    target = params.path("downloads") / name
    if target.is_file() and sha256_matches(target, params.data.sha256):
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
        verify_sha256(tmp, sha256, label=url)


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


def verify_sha256(path: Path, expected: str | None, label: str | None = None) -> None:
    if expected is None:
        logger.info("sha256 of %s: %s (set data.sha256 to pin it)", label or path, sha256_of(path))
        return
    if not sha256_matches(path, expected):
        raise IngestError(
            f"Checksum mismatch for {label or path}: expected sha256 {expected}, got "
            f"{sha256_of(path)}. The file is not the one params.yaml pins: fix data.source "
            "or data.sha256.")


def sha256_matches(path: Path, expected: str | None) -> bool:
    return expected is None or sha256_of(path) == expected.lower()


def extract_zip(archive: Path, target: Path, max_bytes: int) -> None:
    """Extract after checking every member: no escape from ``target``, no symlink, size bound."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not is_junk(m.filename)]
        skipped = len(zf.infolist()) - len(members)
        if skipped:
            logger.info("Ignoring %d junk members of %s (__MACOSX, ._*, dotfiles)", skipped,
                        archive)
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


def is_junk(name: str) -> bool:
    """macOS metadata (``__MACOSX``, ``._*``, ``.DS_Store``) and any other dotfile or dot-folder
    (``.ipynb_checkpoints``, ``.git``): never data."""
    return any(part == "__MACOSX" or part.startswith(".")
               for part in PurePosixPath(name).parts if part not in (".", ".."))
