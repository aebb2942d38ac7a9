"""``manifest.json`` of the preprocessed shards: classes, image size, each split's shards and
counts (in all and per class). No TensorFlow here: `evaluate` and `model_card` read it too."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from warmstart.errors import WarmstartError
from warmstart.layout import MANIFEST_FILE, index_file


class ManifestError(WarmstartError):
    """The manifest lacks a split or its counts: it was written by an older preprocess."""


@dataclass(frozen=True)
class Manifest:
    """What `preprocess` wrote: class names, image size and the shards of each split."""

    folder: Path
    classes: list[str]
    image_size: int
    splits: dict[str, dict]

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        data = json.loads((folder / MANIFEST_FILE).read_text())
        return cls(folder=folder, classes=data["classes"], image_size=data["image_size"],
                   splits=data["splits"])

    def count(self, split: str) -> int:
        return self._split(split)["count"]

    def shard_paths(self, split: str) -> list[str]:
        return [str(self.folder / name) for name in self._split(split)["shards"]]

    def shard_size(self, split: str) -> int:
        """Images per shard of ``split`` (the last shard may hold fewer): image ``i`` is in
        shard ``i // shard_size``."""
        size = self._split(split).get("shard_size")
        if size is None:
            raise ManifestError(f"{self.folder / MANIFEST_FILE} has no shard size for {split}: "
                                f"re-run `dvc repro preprocess`.")
        return int(size)

    def class_counts(self, split: str) -> list[int]:
        """Images of each class in ``split``, in class order."""
        counts = self._split(split).get("class_counts")
        if counts is None:
            raise ManifestError(f"{self.folder / MANIFEST_FILE} has no class counts for "
                                f"{split}: re-run `dvc repro preprocess`.")
        return [int(counts.get(name, 0)) for name in self.classes]

    def index(self, split: str) -> dict[str, list]:
        """Each image of ``split`` in stored order: ``paths`` (relative to ``paths.raw``),
        ``labels`` (class indices) and ``pixels_sha256`` (of the stored uint8 pixels)."""
        return json.loads(self.index_path(split).read_text())

    def index_path(self, split: str) -> Path:
        """The file of :meth:`index`; missing, it names the fix."""
        path = self.folder / index_file(split)
        if not path.is_file():
            raise ManifestError(f"{path} is missing: {self.folder} was written by an older "
                                f"preprocess; re-run `dvc repro preprocess`.")
        return path

    def _split(self, split: str) -> dict:
        if split not in self.splits:
            raise ManifestError(f"{self.folder / MANIFEST_FILE} has no {split} split (it has "
                                f"{sorted(self.splits)}): re-run `dvc repro preprocess`.")
        return self.splits[split]
