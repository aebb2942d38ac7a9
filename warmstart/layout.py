"""The names and formats of the files inside the pipeline's outputs: one definition each.

``params.yaml``'s ``paths`` section says WHERE each output lives; this module says what is
inside it. Stages, ``warmstart predict``, export and the tests all take names from here.
"""

from __future__ import annotations

import json
from pathlib import Path

from warmstart.atomic import write_json

#: The splits every stage after ``ingest`` sees, under these names whatever the source calls
#: them: train fits, validation is where choices are made, test is never used for a choice.
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
#: ``paths.split_assignments`` (CSV, written by ingest, kept between runs): one row per source
#: image: its path in the source, content hash, class, split, and duplicate group (the sha256 of
#: the group's first member; byte- or near-identical images share it and always share a split).
SPLIT_ASSIGNMENT_COLUMNS = ("path", "sha256", "class", "split", "group")
#: The image files warmstart reads (what the training decoder decodes), by suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
#: A trained Keras model in every model folder (transfer, finetune, export, promoted).
MODEL_FILE = "model.keras"
#: Class names, as ``{"classes": [...]}``; the export adds ``image_size`` and ``threshold``.
CLASSES_FILE = "classes.json"
#: The preprocessed shards' manifest: classes, image size, shards and counts per split.
MANIFEST_FILE = "manifest.json"
#: The validate stage's per-image table (every file, ``quarantined`` and why).
TABLE_FILE = "images.csv"
#: The columns of that table that validate computes TFDV statistics over (the features of the
#: schema and of the ``stats_<split>.pb`` files): categorical ones first.
STAT_FEATURES = ("label", "format", "extension", "mode", "width", "height", "aspect",
                 "channels", "file_bytes", "decodable", "brightness", "contrast")
#: The frozen base the features were computed with (``paths.features``).
BASE_FILE = "base.keras"
#: The caches' info files: their cache key and what they hold.
FEATURES_INFO_FILE = "features.json"
PREFIX_INFO_FILE = "prefix.json"
#: Validation reports (``paths.validation_report``).
ANOMALIES_FILE = "anomalies.json"
QUARANTINE_FILE = "quarantine.json"
FACETS_FILE = "facets.html"
#: Export (``paths.export_model``): a SavedModel folder, TFLite models, TF Serving's extras.
SAVED_MODEL_DIR = "saved_model"
SAVED_MODEL_EXTRA = "assets.extra"
TFLITE_FLOAT32 = "model_float32.tflite"
TFLITE_INT8 = "model_int8.tflite"
#: The promoted model's metadata and model card (``paths.promoted_model``).
PROMOTION_FILE = "promotion.json"
CARD_FILE = "model_card.md"
#: DVC's record of what each stage ran on, at the project root.
DVC_LOCK_FILE = "dvc.lock"


def split_stats_file(split: str) -> str:
    """TFDV statistics of one split (validation report and drift baseline)."""
    return f"stats_{split}.pb"


#: The arrays of each split of the caches (``cache_shard``): ``paths.features`` holds the pooled
#: features, labels and image paths (relative to ``paths.raw``); ``paths.prefix`` the boundary
#: tensors of the fine-tune cut (``boundary_array(i)``) and labels.
FEATURES_ARRAY, LABELS_ARRAY, PATHS_ARRAY = "features", "labels", "paths"


def index_file(split: str) -> str:
    """The preprocessed split's index: each image's path, label and pixels' sha256, in stored
    order (a stage that needs no pixels reads this, not the shards)."""
    return f"{split}-index.json"


def boundary_array(index: int) -> str:
    """The prefix cache's array of the ``index``-th tensor crossing the fine-tune cut."""
    return f"boundary_{index}"


def cache_shard(split: str, array: str, index: int, count: int) -> str:
    """Shard ``index`` of ``count`` of one cached array of a split (``paths.features``: pooled
    ``features``, ``labels``, image ``paths``; ``paths.prefix``: ``boundary_<i>``, ``labels``),
    a ``.npy`` file in the split's folder (``warmstart/modeling/array_shards.py``)."""
    return f"{split}/{array}-{index:05d}-of-{count:05d}.npy"


def sklearn_plot(kind: str, stage: str, split: str) -> str:
    """The name of evaluate's DVCLive sklearn plot ``kind`` (confusion, roc, precision_recall,
    calibration) of one model on one split (DVCLive adds ``.json`` under ``plots/sklearn/``)."""
    return f"{kind}_{stage}_{split}"


def write_classes(path: Path, classes: list[str], **serving: float | int) -> None:
    """``classes.json``: the class names, plus serving facts (image size, threshold) if any."""
    write_json(path, {"classes": list(classes), **serving})


def read_classes(path: Path) -> dict:
    """A ``classes.json`` (or a ``manifest.json``, which has the same ``classes`` key)."""
    return json.loads(path.read_text())
