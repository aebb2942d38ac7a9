"""Cache arrays on disk as fixed-row ``.npy`` shards, written and read a batch at a time.

The ``features`` stage's caches grow with the number of images (the prefix runs to tens of GiB
at 100,000 images), so no process may hold a whole one. Each cached array of a split (pooled
``features``, ``labels``, ``paths``, ``boundary_<i>``) is a run of ``.npy`` files of
``shard_rows`` rows each (the last one shorter) in the split's folder, named by
``layout.cache_shard`` (``train/features-00000-of-00002.npy``). The shards describe themselves
(their names and ``.npy`` headers give every array's rows, shape and dtype): a reader needs the
split's folder only, which is what ``evaluate`` depends on (``dvc.yaml``).

* :class:`ShardWriter` writes a shard's ``.npy`` header, then appends each batch's rows to the
  open file: it holds no rows itself, so the writer's memory is the caller's batch, whatever the
  row count.
* :class:`ShardedArray` reads the rows a batch asks for with ``os.preadv`` (sorted, contiguous
  runs coalesced into one read), into one batch-sized array. Nothing is memory-mapped: the
  pages of a memory map that an epoch touches count in the process's resident memory, so an
  epoch over a mapped cache would grow the trainer's RSS to the cache's size.

Every shard is a plain ``.npy`` file: ``np.load`` (or ``np.load(mmap_mode="r")``) reads it.
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from warmstart.layout import cache_shard

#: The most bytes of rows per shard file: big enough that a shard is read at disk speed, small
#: enough that DVC hashes, links and transfers a cache in many pieces.
SHARD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ArraySpec:
    """One cached array of one split: ``rows`` rows of ``row_shape`` in ``dtype``, stored as
    shards of ``shard_rows`` rows (the info files record it: readers open the shards by it)."""

    name: str
    rows: int
    row_shape: tuple[int, ...]
    dtype: str
    shard_rows: int

    @classmethod
    def sized(cls, name: str, rows: int, row_shape: tuple[int, ...], dtype: str | np.dtype,
              shard_bytes: int | None = None) -> ArraySpec:
        """A spec whose shards hold at most ``shard_bytes`` (:data:`SHARD_BYTES` if None) of
        rows, and at least one row."""
        dtype, limit = np.dtype(dtype), SHARD_BYTES if shard_bytes is None else shard_bytes
        row_bytes = max(1, math.prod(row_shape) * dtype.itemsize)
        return cls(name, rows, tuple(row_shape), dtype.str, max(1, limit // row_bytes))

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * np.dtype(self.dtype).itemsize

    def files(self, split: str) -> list[str]:
        count = max(1, -(-self.rows // self.shard_rows))
        return [cache_shard(split, self.name, index, count) for index in range(count)]

    def shard_lengths(self) -> list[int]:
        full, rest = divmod(self.rows, self.shard_rows)
        return [self.shard_rows] * full + ([rest] if rest or not full else [])

    def to_json(self, split: str) -> dict:
        return {"rows": self.rows, "row_shape": list(self.row_shape), "dtype": self.dtype,
                "shard_rows": self.shard_rows, "files": self.files(split)}

    @classmethod
    def from_shards(cls, name: str, paths: list[Path]) -> ArraySpec:
        """The spec of the shards ``paths`` (in order), from their headers."""
        headers = [read_header(path)[0] for path in paths]
        (_, row_shape, dtype), rows = headers[0], [h[0] for h in headers]
        uniform = all(h[1:] == headers[0][1:] for h in headers)
        if not uniform or any(r != rows[0] for r in rows[:-1]) or rows[-1] > rows[0]:
            raise OSError(f"the shards of {name} in {paths[0].parent} differ in shape, dtype or "
                          "rows: re-run the features stage (`dvc repro --force features`)")
        return cls(name, sum(rows), row_shape, dtype, max(1, rows[0]))


class ShardWriter:
    """Appends one array's rows to its shards in ``folder``, one batch at a time.

    Each shard's ``.npy`` header is written when the shard is opened (its length is known from
    the spec), then rows are written through as they come: nothing is buffered here. ``close``
    refuses a row count other than the spec's (a short shard would be a corrupt ``.npy``)."""

    def __init__(self, folder: Path, split: str, spec: ArraySpec) -> None:
        self.folder, self.split, self.spec = folder, split, spec
        self.names, self.lengths = spec.files(split), spec.shard_lengths()
        self.shard, self.room, self.written = -1, 0, 0
        self.file: BinaryIO | None = None

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.spec.dtype)
        if rows.shape[1:] != self.spec.row_shape:
            raise ValueError(f"{self.spec.name}: rows of shape {rows.shape[1:]}, the cache's "
                             f"are {self.spec.row_shape}")
        if self.written + len(rows) > self.spec.rows:
            raise ValueError(f"{self.spec.name}: more than the {self.spec.rows} rows expected")
        while len(rows):
            if not self.room:
                self._next_shard()
            part, rows = rows[:self.room], rows[self.room:]
            self.file.write(part.reshape(-1).view(np.uint8))
            self.room -= len(part)
            self.written += len(part)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.written != self.spec.rows:
            raise ValueError(f"{self.spec.name}: {self.written} rows written, "
                             f"{self.spec.rows} expected")
        if not self.spec.rows:  # an empty split still gets its (empty) shard
            self._next_shard()
            self.file.close()
            self.file = None

    def _next_shard(self) -> None:
        if self.file is not None:
            self.file.close()
        self.shard += 1
        self.room = self.lengths[self.shard]
        path = self.folder / self.names[self.shard]
        path.parent.mkdir(exist_ok=True)
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close or the next shard)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(self.spec.dtype)),
                  "fortran_order": False, "shape": (self.room, *self.spec.row_shape)}
        np.lib.format.write_array_header_1_0(self.file, header)


class CacheWriter:
    """The writers of several arrays of one split, fed together: ``append([a, b, ...])`` takes
    one batch of each (in the writers' order). A context manager: the shards are closed (and
    their row counts checked) on the way out; on an error only closed."""

    def __init__(self, writers: list[ShardWriter]) -> None:
        self.writers = writers

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        for writer in self.writers:
            if kind is None:
                writer.close()
            elif writer.file is not None:
                writer.file.close()

    def append(self, batches: list[np.ndarray]) -> None:
        for writer, rows in zip(self.writers, batches, strict=True):
            writer.append(rows)


class ShardedArray:
    """A cached array's rows, read from its shards on demand (see the module's docstring).

    Thread-safe (``os.preadv`` takes the offset; tf.data's parallel map calls :meth:`take`)."""

    def __init__(self, folder: Path, split: str, spec: ArraySpec) -> None:
        self.spec = spec
        self.paths = [folder / name for name in spec.files(split)]
        headers = [read_header(path) for path in self.paths]
        expected = [(rows, spec.row_shape, np.dtype(spec.dtype).str)
                    for rows in spec.shard_lengths()]
        if [header for header, _ in headers] != expected:
            raise OSError(f"the shards of {spec.name} in {self.paths[0].parent} do not hold the "
                          "rows of their cache: re-run the features stage "
                          "(`dvc repro --force features`)")
        self.offsets = [offset for _, offset in headers]
        self.fds = [os.open(path, os.O_RDONLY) for path in self.paths]
        weakref.finalize(self, close_all, list(self.fds))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.spec.rows, *self.spec.row_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.spec.dtype)

    def __len__(self) -> int:
        return self.spec.rows

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The rows at ``indices`` (any order, repeats allowed), as one new array."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.spec.rows):
            raise IndexError(f"{self.spec.name}: rows {indices.min()}..{indices.max()} asked, "
                             f"it has {self.spec.rows}")
        order = np.argsort(indices, kind="stable")
        ordered = np.empty((len(indices), *self.spec.row_shape), self.dtype)
        buffer = memoryview(ordered.reshape(-1).view(np.uint8))
        for start, stop, row in contiguous_runs(indices[order], self.spec.shard_rows):
            self._read(buffer[start * self.spec.row_bytes:stop * self.spec.row_bytes], row)
        rows = np.empty_like(ordered)
        rows[order] = ordered
        return rows

    def read(self) -> np.ndarray:
        """Every row in memory: for small arrays (labels, paths) and arrays a library needs
        whole (the label-issue search's features)."""
        return np.concatenate([np.load(path) for path in self.paths])

    def _read(self, target: memoryview, row: int) -> None:
        shard, within = divmod(row, self.spec.shard_rows)
        offset = self.offsets[shard] + within * self.spec.row_bytes
        done = 0
        while done < len(target):
            got = os.preadv(self.fds[shard], [target[done:]], offset + done)
            if not got:
                raise OSError(f"{self.paths[shard]} ends early: re-run the features stage")
            done += got


def open_split(folder: Path, split: str) -> dict[str, ShardedArray]:
    """The arrays of ``split`` in a cache ``folder``, by name, from the shards alone; refuses a
    split whose shards are missing or incomplete, naming the folder."""
    shards: dict[str, dict[int, Path]] = {}
    counts: dict[str, int] = {}
    for path in sorted((folder / split).glob("*.npy")):
        name, index, _, count = path.stem.rsplit("-", 3)
        shards.setdefault(name, {})[int(index)] = path
        counts[name] = int(count)
    for name, found in shards.items():
        if sorted(found) != list(range(counts[name])):
            raise OSError(f"{folder / split} holds shards {sorted(found)} of {name}, not all "
                          f"{counts[name]}: re-run the features stage (`dvc repro --force "
                          "features`)")
    return {name: ShardedArray(folder, split, ArraySpec.from_shards(
        name, [found[i] for i in sorted(found)])) for name, found in shards.items()}


def contiguous_runs(rows: np.ndarray, shard_rows: int) -> list[tuple[int, int, int]]:
    """``(start, stop, first row)`` of each run of consecutive ``rows`` (sorted) within one
    shard: positions ``start:stop`` of ``rows`` are the rows ``first row`` on."""
    if not len(rows):
        return []
    breaks = (np.diff(rows) != 1) | (rows[1:] // shard_rows != rows[:-1] // shard_rows)
    starts = np.concatenate([[0], np.flatnonzero(breaks) + 1])
    stops = np.concatenate([starts[1:], [len(rows)]])
    return [(int(a), int(b), int(rows[a])) for a, b in zip(starts, stops, strict=True)]


def read_header(path: Path) -> tuple[tuple[int, tuple[int, ...], str], int]:
    """((rows, row shape, dtype), offset of the rows) of the ``.npy`` shard ``path``; refuses
    a file that is missing, cut short or not in C order, naming it."""
    if not path.is_file():
        raise OSError(f"{path} is missing: re-run the features stage (`dvc repro features`)")
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(file)
        offset = file.tell()
    if fortran or not shape or (os.path.getsize(path) - offset
                                != math.prod(shape) * dtype.itemsize):
        raise OSError(f"{path} is not a complete cache shard: re-run the features stage "
                      "(`dvc repro --force features`)")
    return (shape[0], tuple(shape[1:]), dtype.str), offset


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
