"""Thumbnails of image files with Pillow (no TensorFlow: the evaluate stage stays fast).

Each file is read and shrunk once per report, however many galleries show it. The pixels are
shown as stored (no EXIF rotation), as the training decoder reads them.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from warmstart.errors import WarmstartError
from warmstart.reporting.html import THUMB_PIXELS, jpeg_uri


class ThumbnailError(WarmstartError):
    """An image a report shows is missing or unreadable."""


class Thumbnails:
    """``data:`` URIs of the images under ``root`` (paths relative to it), each made once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self._made:
            self._made[path] = jpeg_uri(shrunk_jpeg(self.root / path))
        return self._made[path]

    def __len__(self) -> int:
        return len(self._made)


def shrunk_jpeg(file: Path) -> bytes:
    """``file`` as a JPEG of at most THUMB_PIXELS a side; errors name the file and the fix."""
    try:
        with Image.open(file) as image:
            small = image.convert("RGB")
            small.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    except (OSError, ValueError) as error:
        raise ThumbnailError(f"Cannot read {file} for a thumbnail ({error}): the predictions "
                             "name images that paths.raw no longer holds; run `dvc repro` "
                             "(or `dvc pull`) to bring the data and stages up to date.") from error
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()
