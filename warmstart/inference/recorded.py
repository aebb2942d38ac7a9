"""Validation-split predictions of a trained model: what the `evaluate` stage scores.

Once trained, the transfer and finetune stages each write ``paths.<stage>_predictions``: a CSV
with ``path`` (the image, relative to the data root), ``actual`` (its class) and one
``prob_<class>`` column per class, in class order and in the split's stored order. They compute
them from the exact inputs of their trained layers, in the same process: the head on the frozen
base's pooled features (transfer), the trainable top on the validation split's float32 prefix
cache (finetune), or the whole model on the images when augmentation bypasses the caches. These
equal the saved full model's predictions on the images (``tests/test_cache.py``), and the
``export`` stage re-checks the saved model against them. Reading needs no TensorFlow: `evaluate`
starts in about a second instead of importing TF and running both models again.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.atomic import write_text
from warmstart.errors import WarmstartError

PATH, ACTUAL, PROB = "path", "actual", "prob_"


class PredictionsError(WarmstartError):
    """A predictions file is missing, malformed, or does not match its sibling."""


@dataclass(frozen=True)
class Predictions:
    """One model's predictions on one split: (n,) paths and labels, (n, classes) probabilities."""

    paths: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    classes: list[str]


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """(n, classes) probabilities from a sigmoid (n, 1) or softmax (n, k) output."""
    outputs = np.asarray(outputs).astype(np.float64)
    if outputs.shape[1] == 1:
        return np.hstack([1.0 - outputs, outputs])
    return outputs


def predict_labels(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Class indices: the second class at ``threshold`` for 2 classes, else the argmax."""
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def write_predictions(path: Path, paths: Sequence[str], labels: np.ndarray, outputs: np.ndarray,
                      classes: Sequence[str]) -> None:
    """Write a model's raw outputs (sigmoid or softmax) for the images ``paths`` atomically."""
    probabilities = class_probabilities(outputs)
    if not len(paths) == len(labels) == len(probabilities):
        raise PredictionsError(f"{path}: {len(paths)} paths, {len(labels)} labels but "
                               f"{len(probabilities)} predictions (a bug: please report it)")
    frame = pd.DataFrame({PATH: list(paths), ACTUAL: np.asarray(classes)[labels]})
    for index, name in enumerate(classes):
        frame[f"{PROB}{name}"] = probabilities[:, index]
    text = io.StringIO()
    frame.to_csv(text, index=False, float_format="%.9g", lineterminator="\n")
    write_text(path, text.getvalue())


def read_predictions(path: Path) -> Predictions:
    """Read a file :func:`write_predictions` wrote; errors name the file and the fix."""
    if not path.is_file():
        raise PredictionsError(f"{path} is missing: run the stage that writes it "
                               "(`dvc repro transfer` / `dvc repro finetune`).")
    frame = pd.read_csv(path, keep_default_na=False, dtype={PATH: str, ACTUAL: str})
    columns = [c for c in frame.columns if c.startswith(PROB)]
    classes = [c[len(PROB):] for c in columns]
    unknown = sorted(set(frame.get(ACTUAL, [])) - set(classes))
    if PATH not in frame or ACTUAL not in frame or len(classes) < 2 or unknown:
        raise PredictionsError(f"{path} is not a predictions file (columns {list(frame.columns)}"
                               f"{', unknown classes ' + str(unknown) if unknown else ''}): "
                               "re-run the stage that writes it.")
    labels = frame[ACTUAL].map({name: i for i, name in enumerate(classes)}).to_numpy(np.int64)
    return Predictions(paths=frame[PATH].tolist(), labels=labels,
                       probabilities=frame[columns].to_numpy(np.float64), classes=classes)
