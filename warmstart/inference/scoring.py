"""Classification metrics of class probabilities against labels: one definition for every stage.

`evaluate` scores the recorded predictions with it and the gate re-scores the promoted model with
it, so the two figures it compares are computed alike. No TensorFlow here (evaluate stays fast).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from warmstart.inference.recorded import predict_labels

EPSILON = 1e-7  # Keras' clipping for cross-entropy


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


def roc_points(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary ROC curve, or the micro-averaged one-vs-rest curve for more classes."""
    if probabilities.shape[1] == 2:
        fpr, tpr, _ = skm.roc_curve(labels, probabilities[:, 1])
    else:
        onehot = np.eye(probabilities.shape[1])[labels]
        fpr, tpr, _ = skm.roc_curve(onehot.ravel(), probabilities.ravel())
    return np.round(fpr, 6), np.round(tpr, 6)
