"""Stage `evaluate`: both models on the validation and test splits, with the same metrics and plots.

Scores the predictions the transfer and finetune stages recorded (``paths.transfer_predictions``,
``paths.finetune_predictions``: the full models' outputs, see ``inference/recorded.py``;
``export`` checks the saved model reproduces them from the images). The roles: train fits,
validation is where choices are made (training monitors it), test is held out and never used for
a choice: its figures are the ones the model card and the gate report. Needs no TensorFlow, so
it takes about a second and re-runs alone when ``evaluate.threshold`` changes.

Writes ``paths.evaluate_details``: ``{"transfer": {"validation": {...}, "test": {...}},
"finetune": {...}, "majority_baseline": {"class": ..., "validation": {...}, "test": {...}},
"candidate": {...}}`` (per model and split: loss, accuracy, balanced accuracy, precision / recall /
F1 (binary or macro), macro-F1, ROC-AUC, confusion matrix, per-class precision / recall / F1 /
support and the image count; the baseline always answers the training split's most frequent class;
the ``candidate``: the better model on validation by ``evaluate.select_on``, which `export` ships
and the gate judges, with the reason). ``paths.evaluate_metrics`` holds what a reviewer compares
(``dvc metrics diff``): per model and split the ``COMPARED`` figures, the baseline's accuracy per
split and the candidate's name. Under ``paths.evaluate_plots``, DVCLive's sklearn plots per model
and split (``layout.sklearn_plot``): confusion matrix, ROC, precision-recall and top-label
calibration (one-vs-rest, micro-averaged, for more than two classes). Then
``reporting/evaluation.py`` writes ``paths.evaluation_html`` (the page people look at) and
``paths.label_issues`` (the training split's likely label errors, from ``paths.features``).
"""

from __future__ import annotations

import logging

import numpy as np
from dvclive import Live

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
from warmstart.inference.scoring import classification_metrics, majority_baseline
from warmstart.layout import TRAIN, sklearn_plot
from warmstart.live import open_live
from warmstart.reporting.evaluation import report_evaluation

logger = logging.getLogger(__name__)

STAGES = MODELS
#: Logged per model and split (the full figures are in paths.evaluate_details).
SUMMARY = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "loss", "count")
#: What paths.evaluate_metrics holds per model and split (the rest is in evaluate_details).
COMPARED = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "loss")


def run_evaluate(params: Params) -> dict:
    runs = {stage: read_predictions(params.path(f"{stage}_predictions")) for stage in STAGES}
    manifest = Manifest.read(params.path("processed"))
    for split in RECORDED_SPLITS:
        check_same_images({stage: runs[stage][split] for stage in STAGES}, manifest.classes)
    threshold, results = params.evaluate.threshold, {}
    with atomic_dir(params.path("evaluate_plots")) as plots:
        live = open_live(plots)
        for stage, by_split in runs.items():
            results[stage] = {}
            for split in RECORDED_SPLITS:
                run = by_split[split]
                results[stage][split] = classification_metrics(run.labels, run.probabilities,
                                                               run.classes, threshold)
                write_plots(live, (stage, split), run, threshold)
                logger.info("%s on the %s split: %s", stage, split,
                            {k: results[stage][split][k] for k in SUMMARY})
    labels = {split: runs["finetune"][split].labels for split in RECORDED_SPLITS}
    results["majority_baseline"] = majority_baseline(manifest.class_counts(TRAIN),
                                                     manifest.classes, labels)
    logger.info("majority-class baseline: %s", results["majority_baseline"])
    results["candidate"] = choose_candidate(results, params.evaluate.select_on)
    logger.info("candidate: %s (%s)", results["candidate"]["model"],
                results["candidate"]["reason"])
    write_json(params.path("evaluate_details"), results)
    write_json(params.path("evaluate_metrics"), compared(results))
    report_evaluation(params, runs, results["candidate"])
    return results


def compared(results: dict) -> dict:
    """The figures ``dvc metrics diff`` shows: ``<model>.<split>.<figure>``, the baseline's
    ``majority_baseline.<split>.accuracy`` and the candidate's name (``candidate.model``)."""
    figures = {stage: {split: {k: results[stage][split][k] for k in COMPARED}
                       for split in RECORDED_SPLITS} for stage in STAGES}
    baseline = {split: {"accuracy": results["majority_baseline"][split]["accuracy"]}
                for split in RECORDED_SPLITS}
    candidate = {k: results["candidate"][k] for k in ("model", "split", "metric")}
    return {**figures, "majority_baseline": baseline, "candidate": candidate}


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


def write_plots(live: Live, where: tuple[str, str], run: Predictions, threshold: float) -> None:
    """``where`` = (stage, split): its sklearn plots, by DVCLive. ROC and precision-recall are
    one-vs-rest, micro-averaged, for more than two classes (binary: of the second class);
    calibration is of the top class's probability against being right."""
    predicted = predict_labels(run.probabilities, threshold)
    names = np.asarray(run.classes)
    live.log_sklearn_plot("confusion_matrix", names[run.labels].tolist(),
                          names[predicted].tolist(), name=sklearn_plot("confusion", *where))
    truth, scores = one_vs_rest(run.labels, run.probabilities)
    live.log_sklearn_plot("roc", truth, scores, name=sklearn_plot("roc", *where))
    live.log_sklearn_plot("precision_recall", truth, scores,
                          name=sklearn_plot("precision_recall", *where))
    live.log_sklearn_plot("calibration", (predicted == run.labels).astype(int),
                          run.probabilities.max(axis=1), name=sklearn_plot("calibration", *where),
                          n_bins=10)


def one_vs_rest(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is-positive, score) pairs: the second class's for two classes, else every (image,
    class) pair (micro-averaging)."""
    if probabilities.shape[1] == 2:
        return (labels == 1).astype(int), probabilities[:, 1]
    onehot = np.eye(probabilities.shape[1], dtype=int)[labels]
    return onehot.ravel(), probabilities.ravel()
