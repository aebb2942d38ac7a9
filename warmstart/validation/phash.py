"""Perceptual hashes (DCT pHash) of images and the near-duplicate search over them.

The hash of an image is 64 bits: the signs (against their median) of the 8x8 lowest DCT
frequencies of a 32x32 grey thumbnail. Resized, recompressed or slightly edited copies of a photo
keep almost the same bits; different photos differ in about half of them. Near-duplicates are
pairs whose Hamming distance is at most ``max_distance``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations, pairwise

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


def near_pairs(hashes: list[str], max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every pair i < j with Hamming distance <= ``max_distance``.

    Exact: by the pigeonhole principle two hashes within distance d agree on at least one of
    d + 1 disjoint bit bands, so only pairs sharing a band value are compared.
    """
    if max_distance < 0 or len(hashes) < 2:
        return []
    values = [int(h, 16) for h in hashes]
    candidates: set[tuple[int, int]] = set()
    for mask, shift in _bands(max_distance + 1):
        buckets: dict[int, list[int]] = defaultdict(list)
        for index, value in enumerate(values):
            buckets[(value >> shift) & mask].append(index)
        for members in buckets.values():
            candidates.update(combinations(members, 2))
    pairs = [(i, j, (values[i] ^ values[j]).bit_count()) for i, j in candidates]
    return sorted(p for p in pairs if p[2] <= max_distance)


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
