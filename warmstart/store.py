"""The per-image store: what a stage computed from one image, kept across runs, reused exactly.

A nightly retrain after 1 % new images would otherwise decode, validate and push through the
frozen base all of them again. ``preprocess``, ``validate`` and ``features`` look each image up
here first and compute only the misses; their DVC outputs are still complete and the same bytes
as a run from scratch (DVC neither sees nor versions the store).

An entry's key is the sha256 of the image's content hash plus a JSON of everything the result
depends on (image size, the decoder's code, the base weights, the cut, the dtype, ...) and the
entry format: a change of any part is a different key, so nothing stale can be found. Entries
live in ``paths.store/<kind>/<aa>/<key>`` as a magic line, the CRC-32 of the payload and the
payload (a checksum against truncation and bit rot, not an authenticator: at 100,000 images
the features stage verifies 1.5 GB, and CRC-32 runs at ~5 GB/s here against sha256's ~1.5);
they are written to a temporary file and renamed (a killed run never leaves half an entry), and
one that does not verify (truncated, corrupt) is logged, deleted and recomputed, never used.
The store is bounded: after each stage the least recently used entries (a hit refreshes an
entry's modification time) are deleted until it holds at most ``store.max_bytes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import tempfile
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.atomic import write_json
from warmstart.config.params import Params

logger = logging.getLogger(__name__)

#: The entry layout's version, in every key and entry: bump it when the layout changes (old
#: entries are then never looked up, and age out of the store).
FORMAT = 3
MAGIC = f"warmstart-store {FORMAT}\n".encode()
CHECKSUM_BYTES = 4
#: In the store's top folder: the bytes its entries held after the last eviction.
SIZE_FILE = "size.json"


@dataclass
class Store:
    """A folder of entries with a size limit; ``enabled`` False finds nothing and keeps nothing.

    ``reused`` and ``computed`` count the images a stage took from the store and computed."""

    folder: Path
    max_bytes: int
    enabled: bool
    reused: int = field(default=0, init=False)
    computed: int = field(default=0, init=False)
    written: int = field(default=0, init=False)  # bytes put since the size was last recorded
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False,
                                  compare=False)  # validate and ingest put from threads

    @classmethod
    def of(cls, params: Params) -> Store:
        """The store ``params`` describe (``paths.store``, ``store.max_bytes``, ``.enabled``)."""
        return cls(params.path("store"), params.store.max_bytes, params.store.enabled)

    def key(self, kind: str, content_sha256: str, parts: dict[str, Any]) -> str:
        """The entry name of the ``kind`` result of the image with this content hash."""
        return self.keys(kind, [content_sha256], parts)[0]

    def keys(self, kind: str, contents_sha256: list[str], parts: dict[str, Any]) -> list[str]:
        """:meth:`key` of many images with the same parts, serialised once (per image, the JSON
        took 0.8 s a stage at 100,000 images)."""
        context = json.dumps({"kind": kind, "format": FORMAT, **parts}, sort_keys=True).encode()
        return [f"{kind}/{hashlib.sha256(context + content.encode()).hexdigest()}"
                for content in contents_sha256]

    def path(self, key: str) -> Path:
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        """:meth:`path` as a string: two lookups per image through pathlib took 4 s a stage at
        100,000 images."""
        kind, digest = key.split("/")
        return os.path.join(self.folder, kind, digest[:2], digest)

    def contains(self, key: str) -> bool:
        return self.enabled and os.path.isfile(self._file(key))

    def get(self, key: str) -> bytes | None:
        """The payload stored under ``key`` (its recency refreshed), or None: absent or corrupt."""
        if not self.enabled:
            return None
        path = self._file(key)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        payload = _verified(data)
        if payload is None:
            logger.warning("Store entry %s is corrupt or truncated: deleted, its image is "
                           "computed again.", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: the bytes are read
            os.utime(path)
        return payload

    def put(self, key: str, payload: bytes) -> None:
        """Keep ``payload`` under ``key``: a temporary file renamed into place (atomic)."""
        if not self.enabled:
            return
        path = self._file(key)
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        entry = MAGIC + checksum(payload) + payload
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(entry)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        with self._lock:
            self.written += len(entry)

    def counts(self) -> dict[str, int]:
        """What a stage records in its details file (and bench/scale.py reads)."""
        return {"reused_images": self.reused, "computed_images": self.computed}

    def evict(self) -> None:
        """Delete least recently used entries until the store holds at most ``max_bytes``.

        Walking the store costs seconds at 100,000 images (400,000 entries), so it is walked
        only when it may be over the limit: the size found by the last walk (``SIZE_FILE``) plus
        what was written since is an upper bound of its size (overwrites, evictions and
        deletions only make it smaller)."""
        if not self.enabled or not self.folder.is_dir():
            return
        bound = self._size_bound()
        if bound is not None and bound <= self.max_bytes:
            self._record_size(bound)
            logger.info("Store %s: at most %.1f MiB (limit store.max_bytes=%d)", self.folder,
                        bound / 2**20, self.max_bytes)
            return
        entries = list(_entries(self.folder))
        total = sum(size for _, _, size in entries)
        removed = 0
        oldest_first = sorted(entries) if total > self.max_bytes else []
        for _, path, size in oldest_first:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total, removed = total - size, removed + 1
        self._record_size(total)
        logger.info("Store %s: %.1f MiB in %d entries (limit store.max_bytes=%d)%s", self.folder,
                    total / 2**20, len(entries) - removed, self.max_bytes,
                    f"; evicted the {removed} least recently used" if removed else "")

    def _size_bound(self) -> int | None:
        """The recorded size plus the bytes written since; None: no (readable) record."""
        try:
            recorded = json.loads((self.folder / SIZE_FILE).read_text())["bytes"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return recorded + self.written if isinstance(recorded, int) else None

    def _record_size(self, total: int) -> None:
        write_json(self.folder / SIZE_FILE, {"bytes": total})
        self.written = 0


def checksum(payload: bytes) -> bytes:
    return zlib.crc32(payload).to_bytes(CHECKSUM_BYTES, "little")


def _verified(data: bytes) -> bytes | None:
    """The payload of an entry's bytes, or None if the magic or the checksum is wrong."""
    head = len(MAGIC) + CHECKSUM_BYTES
    if len(data) < head or not data.startswith(MAGIC):
        return None
    payload = data[head:]
    return payload if checksum(payload) == data[len(MAGIC):head] else None


def _entries(folder: Path) -> Iterable[tuple[int, str, int]]:
    """(modification time in ns, path, bytes) of every entry file (in the kinds' folders),
    leftover temporary files too.

    ``os.scandir``, not ``Path.rglob``: a store of 100,000 images holds 400,000 entries."""
    top = str(folder)
    folders = [top]
    while folders:
        current = folders.pop()
        with os.scandir(current) as scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                    continue
                if current == top:  # SIZE_FILE, not an entry
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.is_file(follow_symlinks=False):
                    yield stat.st_mtime_ns, entry.path, stat.st_size


def pack_arrays(arrays: Iterable[np.ndarray]) -> bytes:
    """Arrays as one payload: a JSON header of their dtypes and shapes, then their bytes (exact;
    reading it back is a view of the payload, no parsing per array)."""
    arrays = list(arrays)  # tobytes() writes C order whatever the layout
    header = json.dumps([[array.dtype.str, list(array.shape)] for array in arrays]).encode()
    return b"".join([len(header).to_bytes(4, "little"), header,
                     *(array.tobytes() for array in arrays)])


def unpack_arrays(payload: bytes) -> list[np.ndarray]:
    """The arrays of :func:`pack_arrays` (read-only views of ``payload``)."""
    length = int.from_bytes(payload[:4], "little")
    offset, arrays = 4 + length, []
    for dtype, shape in json.loads(payload[4:offset]):
        array = np.frombuffer(payload, np.dtype(dtype), int(np.prod(shape)), offset)
        arrays.append(array.reshape(tuple(shape)))
        offset += array.nbytes
    return arrays


def code_digest(*objects: Any) -> str:
    """sha256 of the source code of modules or functions: a result computed by code that has
    changed since (any edit, even of a comment) is a different key, never a stale hit."""
    digest = hashlib.sha256()
    for obj in objects:
        digest.update(inspect.getsource(obj).encode())
    return digest.hexdigest()
