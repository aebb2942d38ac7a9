"""Output files as bytes, for the byte-for-byte comparisons of equal runs."""

from __future__ import annotations

from pathlib import Path


def folder_bytes(path: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``path`` (or of the file ``path``)."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}
