"""Stage `evaluate`: both models on the validation split, with the same metrics and plots.

Scores the predictions the transfer and finetune stages recorded for the validation split
(``paths.transfer_predictions``, ``paths.finetune_predictions``: the full models' outputs, see
``inference/recorded.py``; ``export`` checks the saved model reproduces them from the images).
Needs no TensorFlow, so it takes about a second and re-runs alone when ``evaluate.threshold``
changes. Writes ``paths.evaluate_metrics`` ({"transfer": {...}, "finetune": {...}}: loss,
accuracy, precision, recall, F1, ROC-AUC, confusion matrix) and, per model,
``confusion_<stage>.csv`` (actual, predicted) and ``roc_<stage>.csv`` (fpr, tpr) under
``paths.evaluate_plots``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import Params
from warmstart.inference.recorded import (
    Predictions,
    PredictionsError,
    predict_labels,
    read_predictions,
)
from warmstart.inference.scoring import classification_metrics, roc_points

logger = logging.getLogger(__name__)

STAGES = ("transfer", "finetune")


def run_evaluate(params: Params) -> dict:
    runs = {stage: read_predictions(params.path(f"{stage}_predictions")) for stage in STAGES}
    check_same_images(runs)
    threshold, results = params.evaluate.threshold, {}
    with atomic_dir(params.path("evaluate_plots")) as plots:
        for stage, run in runs.items():
            results[stage] = classification_metrics(run.labels, run.probabilities, run.classes,
                                                    threshold)
            write_plots(plots, stage, run.labels, run.probabilities, run.classes, threshold)
            logger.info("%s on the validation split: %s", stage,
                        {k: v for k, v in results[stage].items() if k != "confusion_matrix"})
    write_json(params.path("evaluate_metrics"), results)
    return results


def check_same_images(runs: dict[str, Predictions]) -> None:
    """Both models must have been scored on the same images, classes and labels."""
    first, *others = runs.items()
    for stage, run in others:
        if (run.paths, run.classes) != (first[1].paths, first[1].classes) or \
                not np.array_equal(run.labels, first[1].labels):
            raise PredictionsError(
                f"The {stage} and {first[0]} predictions cover different images or classes: "
                "they come from different data versions. Run `dvc repro` to bring both stages "
                "up to date.")


def write_plots(folder: Path, stage: str, labels: np.ndarray, probabilities: np.ndarray,
                classes: list[str], threshold: float) -> None:
    predicted = predict_labels(probabilities, threshold)
    names = np.asarray(classes)
    pd.DataFrame({"actual": names[labels], "predicted": names[predicted]}).to_csv(
        folder / f"confusion_{stage}.csv", index=False)
    fpr, tpr = roc_points(labels, probabilities)
    pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(folder / f"roc_{stage}.csv", index=False)


