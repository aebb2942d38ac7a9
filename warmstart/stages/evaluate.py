"""Stage `evaluate`: both models on the validation split, with the same metrics and plots.

Writes ``paths.evaluate_metrics`` ({"transfer": {...}, "finetune": {...}}: loss, accuracy,
precision, recall, F1, ROC-AUC, confusion matrix) and, per model, ``confusion_<stage>.csv``
(actual, predicted) and ``roc_<stage>.csv`` (fpr, tpr) under ``paths.evaluate_plots``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from warmstart.atomic import atomic_dir, write_json
from warmstart.dataset import Manifest, image_dataset, labels_of
from warmstart.model import load_model
from warmstart.params import Params
from warmstart.stages.transfer import MODEL_FILE

logger = logging.getLogger(__name__)

STAGES = ("transfer", "finetune")
EPSILON = 1e-7  # Keras' clipping for cross-entropy


def run_evaluate(params: Params) -> dict:
    manifest = Manifest.read(params.path("processed"))
    split = params.data.validation_split
    labels = labels_of(manifest, split)
    results = {}
    with atomic_dir(params.path("evaluate_plots")) as plots:
        for stage in STAGES:
            model = load_model(params.path(f"{stage}_model") / MODEL_FILE)
            images = image_dataset(manifest, split, params.train.batch_size, cache=False)
            probabilities = class_probabilities(model.predict(images, verbose=0))
            results[stage] = classification_metrics(labels, probabilities, manifest.classes,
                                                    params.evaluate.threshold)
            write_plots(plots, stage, labels, probabilities, manifest.classes,
                        params.evaluate.threshold)
            logger.info("%s on %s: %s", stage, split,
                        {k: v for k, v in results[stage].items() if k != "confusion_matrix"})
    write_json(params.path("evaluate_metrics"), results)
    return results


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """(n, classes) probabilities from a sigmoid (n, 1) or softmax (n, k) output."""
    outputs = outputs.astype(np.float64)
    if outputs.shape[1] == 1:
        return np.hstack([1.0 - outputs, outputs])
    return outputs


def predict_labels(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str],
                           threshold: float) -> dict:
    predicted = predict_labels(probabilities, threshold)
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    clipped = np.clip(probabilities, EPSILON, 1 - EPSILON)
    loss = -np.mean(np.log(clipped[np.arange(len(labels)), labels]))
    matrix = skm.confusion_matrix(labels, predicted, labels=range(len(classes)))
    return {
        "loss": round(float(loss), 6),
        "accuracy": round(float(skm.accuracy_score(labels, predicted)), 6),
        "precision": round(float(skm.precision_score(labels, predicted, average=average,
                                                     zero_division=0)), 6),
        "recall": round(float(skm.recall_score(labels, predicted, average=average,
                                               zero_division=0)), 6),
        "f1": round(float(skm.f1_score(labels, predicted, average=average, zero_division=0)), 6),
        "roc_auc": roc_auc(labels, probabilities),
        "confusion_matrix": {actual: {pred: int(matrix[i, j]) for j, pred in enumerate(classes)}
                             for i, actual in enumerate(classes)},
        "count": int(len(labels)),
    }


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Binary AUC, or one-vs-rest macro AUC for more classes; None unless every class occurs."""
    if len(np.unique(labels)) < probabilities.shape[1]:
        return None
    if probabilities.shape[1] == 2:
        return round(float(skm.roc_auc_score(labels, probabilities[:, 1])), 6)
    return round(float(skm.roc_auc_score(labels, probabilities, multi_class="ovr",
                                         average="macro")), 6)


def write_plots(folder: Path, stage: str, labels: np.ndarray, probabilities: np.ndarray,
                classes: list[str], threshold: float) -> None:
    predicted = predict_labels(probabilities, threshold)
    names = np.asarray(classes)
    pd.DataFrame({"actual": names[labels], "predicted": names[predicted]}).to_csv(
        folder / f"confusion_{stage}.csv", index=False)
    fpr, tpr = roc_points(labels, probabilities)
    pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(folder / f"roc_{stage}.csv", index=False)


def roc_points(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary ROC curve, or the micro-averaged one-vs-rest curve for more classes."""
    if probabilities.shape[1] == 2:
        fpr, tpr, _ = skm.roc_curve(labels, probabilities[:, 1])
    else:
        onehot = np.eye(probabilities.shape[1])[labels]
        fpr, tpr, _ = skm.roc_curve(onehot.ravel(), probabilities.ravel())
    return np.round(fpr, 6), np.round(tpr, 6)
