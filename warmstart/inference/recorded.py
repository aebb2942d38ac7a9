"""Validation- and test-split predictions of a trained model: what the `evaluate` stage scores.

Once trained, the transfer and finetune stages each write ``paths.<stage>_predictions``: a CSV
with ``split`` (validation, then test), ``path`` (the image, relative to the data root),
``actual`` (its class) and one ``prob_<class>`` column per class, in class order and in each
split's stored order. They compute them from the exact inputs of their trained layers, in the
same process: the head on the frozen base's pooled features (transfer), the trainable top on the
float32 prefix cache (finetune), or the whole model on the images when augmentation bypasses the
caches. These equal the saved full model's predictions on the images (``tests/test_cache.py``),
and the ``export`` stage re-checks the saved model against them. The test split's rows are
written after training, which never sees them. Reading needs no TensorFlow: `evaluate` starts in
about a second instead of importing TF and running both models again.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.atomic import write_text
from warmstart.errors import WarmstartError
from warmstart.layout import TEST, VALIDATION

SPLIT, PATH, ACTUAL, PROB = "split", "path", "actual", "prob_"
#: The splits a training stage records predictions on, in file order: validation (where choices
#: are made) and test (held out: what evaluate, the model card and the gate report).
RECORDED_SPLITS = (VALIDATION, TEST)


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


def make_predictions(paths: Sequence[str], labels: np.ndarray, outputs: np.ndarray,
                     classes: Sequence[str]) -> Predictions:
    """A model's raw outputs (sigmoid or softmax) on the images ``paths`` as Predictions."""
    probabilities = class_probabilities(outputs)
    if not len(paths) == len(labels) == len(probabilities):
        raise PredictionsError(f"{len(paths)} paths, {len(labels)} labels but "
                               f"{len(probabilities)} predictions (a bug: please report it)")
    return Predictions(list(paths), np.asarray(labels, np.int64), probabilities, list(classes))


def write_predictions(path: Path, runs: Mapping[str, Predictions]) -> None:
    """Write one model's predictions on each split (``{split: Predictions}``) atomically."""
    frames = []
    for split, run in runs.items():
        frame = pd.DataFrame({SPLIT: split, PATH: run.paths,
                              ACTUAL: np.asarray(run.classes)[run.labels]})
        for index, name in enumerate(run.classes):
            frame[f"{PROB}{name}"] = run.probabilities[:, index]
        frames.append(frame)
    text = io.StringIO()
    pd.concat(frames, ignore_index=True).to_csv(text, index=False, float_format="%.9g",
                                                lineterminator="\n")
    write_text(path, text.getvalue())


def read_predictions(path: Path, splits: Sequence[str] = RECORDED_SPLITS
                     ) -> dict[str, Predictions]:
    """``{split: Predictions}`` of a file :func:`write_predictions` wrote, holding at least
    ``splits``; errors name the file and the fix."""
    if not path.is_file():
        raise PredictionsError(f"{path} is missing: run the stage that writes it "
                               "(`dvc repro transfer` / `dvc repro finetune`).")
    frame = pd.read_csv(path, keep_default_na=False, dtype={SPLIT: str, PATH: str, ACTUAL: str})
    columns = [c for c in frame.columns if c.startswith(PROB)]
    classes = [c[len(PROB):] for c in columns]
    unknown = sorted(set(frame.get(ACTUAL, [])) - set(classes))
    missing = [s for s in splits if s not in set(frame.get(SPLIT, []))]
    if {SPLIT, PATH, ACTUAL} - set(frame) or len(classes) < 2 or unknown or missing:
        raise PredictionsError(f"{path} is not a predictions file of the splits {list(splits)} "
                               f"(columns {list(frame.columns)}"
                               f"{', unknown classes ' + str(unknown) if unknown else ''}): "
                               "re-run the stage that writes it.")
    index = {name: i for i, name in enumerate(classes)}
    return {split: Predictions(paths=rows[PATH].tolist(),
                               labels=rows[ACTUAL].map(index).to_numpy(np.int64),
                               probabilities=rows[columns].to_numpy(np.float64), classes=classes)
            for split, rows in frame.groupby(SPLIT, sort=False)}
