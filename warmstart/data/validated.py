"""The validate stage's hand-over to preprocess: the per-image table and the class names.

Kept apart from ``warmstart.stages.validate`` so that reading it does not import TFDV and Beam.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from warmstart.atomic import atomic_dir
from warmstart.layout import CLASSES_FILE, TABLE_FILE, read_classes, write_classes

logger = logging.getLogger(__name__)

def write_validated(folder: Path, table: pd.DataFrame, classes: list[str]) -> Path:
    with atomic_dir(folder) as staging:
        table.to_csv(staging / TABLE_FILE, index=False)
        write_classes(staging / CLASSES_FILE, classes)
    logger.info("Validated %d images (%d quarantined) in %d classes: %s", len(table),
                int(table["quarantined"].sum()), len(classes), classes)
    return folder


def read_validated(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    # Class names and paths stay text: a class folder called "0" or "true" is not a number.
    table = pd.read_csv(folder / TABLE_FILE, keep_default_na=False,
                        dtype={"path": str, "split": str, "label": str})
    return table, read_classes(folder / CLASSES_FILE)["classes"]
