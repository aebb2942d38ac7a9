"""Perceptual hashes (DCT pHash) of images and the near-duplicate search over them.

The hash of an image is 64 bits: the signs (against their median) of the 8x8 lowest DCT
frequencies of a 32x32 grey thumbnail. Resized, recompressed or slightly edited copies of a photo
keep almost the same bits; different photos differ in about half of them. Near-duplicates are
pairs whose Hamming distance is at most ``max_distance``.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_SIZE = 8
THUMB_SIZE = 32
HASH_BITS = HASH_SIZE * HASH_SIZE


def phash(grey: Image.Image) -> str:
    """The 64-bit pHash of a grey ("L") image, as 16 hex digits."""
    thumb = np.asarray(grey.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX),
                       dtype=np.float64)
    low = dctn(thumb, norm="ortho")[:HASH_SIZE, :HASH_SIZE].ravel()
    bits = low[1:] > np.median(low[1:])  # the DC term is the mean brightness: not shape
    value = int("".join("1" if b else "0" for b in (False, *bits)), 2)
    return f"{value:016x}"


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


#: Set bits of every byte value: the Hamming distance of uint64 arrays, byte by byte (NumPy 1.26
#: has no popcount).
_BYTE_BITS = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)
#: Hash pairs compared at once within one bucket: bounds the memory of a large bucket (many
#: copies of one photo) at about 100 MiB.
_PAIRS_AT_ONCE = 1 << 22


def near_pairs(hashes: list[str], max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every pair i < j with Hamming distance <= ``max_distance``.

    Exact: by the pigeonhole principle two hashes within distance d agree on at least one of
    d + 1 disjoint bit bands, so only pairs sharing a band value are compared, each in the
    first band it shares. Memory is the output plus one bucket, never all candidate pairs (at
    100,000 images those were about a gigabyte).
    """
    if max_distance < 0 or len(hashes) < 2:
        return []
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    bands = [(values >> np.uint64(shift)) & np.uint64(mask)
             for mask, shift in _bands(max_distance + 1)]
    pairs: list[tuple[int, int, int]] = []
    for number, band in enumerate(bands):
        for members in _buckets(band):
            pairs.extend(_close_pairs(values, members, bands[:number], max_distance))
    return sorted(pairs)


def _buckets(band: np.ndarray) -> list[np.ndarray]:
    """The indices sharing each value of ``band`` (ascending), for values shared by two or more."""
    order = np.argsort(band, kind="stable")
    cuts = np.flatnonzero(band[order][1:] != band[order][:-1]) + 1
    return [group for group in np.split(order, cuts) if len(group) > 1]


def _close_pairs(values: np.ndarray, members: np.ndarray, earlier: list[np.ndarray],
                 max_distance: int) -> list[tuple[int, int, int]]:
    """The pairs of ``members`` (one bucket) within ``max_distance`` that share no ``earlier``
    band (those were found there)."""
    found = []
    rows = max(1, _PAIRS_AT_ONCE // len(members))
    for start in range(0, len(members) - 1, rows):
        first = members[start:start + rows, None]
        later = np.arange(len(members))[None, :] > np.arange(start, start + len(first))[:, None]
        xor = np.ascontiguousarray(values[first] ^ values[members[None, :]])
        distance = _BYTE_BITS[xor.view(np.uint8)].reshape(*xor.shape, 8).sum(axis=-1)
        a, b = np.nonzero(later & (distance <= max_distance))
        i, j = first[a, 0], members[b]
        new = np.ones(len(i), dtype=bool)
        for band in earlier:
            new &= band[i] != band[j]
        found.extend(zip(i[new].tolist(), j[new].tolist(), distance[a, b][new].tolist(),
                         strict=True))
    return found


def _bands(count: int) -> list[tuple[int, int]]:
    """(mask, shift) of ``count`` disjoint bit bands covering the 64 bits."""
    count = min(count, HASH_BITS)
    edges = np.linspace(0, HASH_BITS, count + 1).astype(int)
    return [((1 << int(high - low)) - 1, int(low)) for low, high in pairwise(edges)]


def connected_groups(pairs: Iterable[tuple[int, int, int]], count: int) -> list[list[int]]:
    """Connected groups (union-find) of the pairs, each sorted, singletons left out."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    return [sorted(g) for g in groups.values() if len(g) > 1]
