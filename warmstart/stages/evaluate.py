"""Stage `evaluate`: both models on the validation and test splits, with the same metrics and plots.

Scores the predictions the transfer and finetune stages recorded (``paths.transfer_predictions``,
``paths.finetune_predictions``: the full models' outputs, see ``inference/recorded.py``;
``export`` checks the saved model reproduces them from the images). The roles: train fits,
validation is where choices are made (training monitors it), test is held out and never used for
a choice: its figures are the ones the model card and the gate report. Needs no TensorFlow, so
it takes about a second and re-runs alone when ``evaluate.threshold`` changes.

Writes ``paths.evaluate_metrics``: ``{"transfer": {"validation": {...}, "test": {...}},
"finetune": {...}, "majority_baseline": {"class": ..., "validation": {...}, "test": {...}}}``
(per model and split: loss, accuracy, balanced accuracy, precision / recall / F1 (binary or
macro), macro-F1, ROC-AUC, confusion matrix, per-class precision / recall / F1 / support and the
image count; the baseline always answers the training split's most frequent class; the
``candidate``: the better model on validation by ``evaluate.select_on``, which `export` ships and
the gate judges, with the reason), and per
model and split ``confusion_<stage>_<split>.csv`` (actual, predicted) and
``roc_<stage>_<split>.csv`` (fpr, tpr) under ``paths.evaluate_plots``. Then
``reporting/evaluation.py`` writes ``paths.evaluation_html`` (the page people look at) and
``paths.label_issues`` (the training split's likely label errors, from ``paths.features``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import Params
from warmstart.data.manifest import Manifest
from warmstart.inference.candidate import MODELS, choose_candidate
from warmstart.inference.recorded import (
    RECORDED_SPLITS,
    Predictions,
    PredictionsError,
    predict_labels,
    read_predictions,
)
from warmstart.inference.scoring import classification_metrics, majority_baseline, roc_points
from warmstart.layout import TRAIN, confusion_plot, roc_plot
from warmstart.reporting.evaluation import report_evaluation

logger = logging.getLogger(__name__)

STAGES = MODELS
#: Logged per model and split (the full figures are in paths.evaluate_metrics).
SUMMARY = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "loss", "count")


def run_evaluate(params: Params) -> dict:
    runs = {stage: read_predictions(params.path(f"{stage}_predictions")) for stage in STAGES}
    manifest = Manifest.read(params.path("processed"))
    for split in RECORDED_SPLITS:
        check_same_images({stage: runs[stage][split] for stage in STAGES}, manifest.classes)
    threshold, results = params.evaluate.threshold, {}
    with atomic_dir(params.path("evaluate_plots")) as plots:
        for stage, by_split in runs.items():
            results[stage] = {}
            for split in RECORDED_SPLITS:
                run = by_split[split]
                results[stage][split] = classification_metrics(run.labels, run.probabilities,
                                                               run.classes, threshold)
                write_plots(plots, (stage, split), run, threshold)
                logger.info("%s on the %s split: %s", stage, split,
                            {k: results[stage][split][k] for k in SUMMARY})
    labels = {split: runs["finetune"][split].labels for split in RECORDED_SPLITS}
    results["majority_baseline"] = majority_baseline(manifest.class_counts(TRAIN),
                                                     manifest.classes, labels)
    logger.info("majority-class baseline: %s", results["majority_baseline"])
    results["candidate"] = choose_candidate(results, params.evaluate.select_on)
    logger.info("candidate: %s (%s)", results["candidate"]["model"],
                results["candidate"]["reason"])
    write_json(params.path("evaluate_metrics"), results)
    report_evaluation(params, runs, results["candidate"])
    return results


def check_same_images(runs: dict[str, Predictions], classes: list[str] | None = None) -> None:
    """The models' predictions on one split must cover the same images, classes and labels
    (and ``classes``, the processed data's, when given)."""
    first, *others = runs.items()
    if classes is not None and first[1].classes != classes:
        raise PredictionsError(
            f"The {first[0]} predictions have the classes {first[1].classes}, the processed "
            f"data {classes}: run `dvc repro` to bring the stages up to date.")
    for stage, run in others:
        if (run.paths, run.classes) != (first[1].paths, first[1].classes) or \
                not np.array_equal(run.labels, first[1].labels):
            raise PredictionsError(
                f"The {stage} and {first[0]} predictions cover different images or classes: "
                "they come from different data versions. Run `dvc repro` to bring both stages "
                "up to date.")


def write_plots(folder: Path, where: tuple[str, str], run: Predictions, threshold: float) -> None:
    """``where`` = (stage, split): its confusion rows and ROC curve."""
    predicted = predict_labels(run.probabilities, threshold)
    names = np.asarray(run.classes)
    pd.DataFrame({"actual": names[run.labels], "predicted": names[predicted]}).to_csv(
        folder / confusion_plot(*where), index=False)
    fpr, tpr = roc_points(run.labels, run.probabilities)
    pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(folder / roc_plot(*where), index=False)
