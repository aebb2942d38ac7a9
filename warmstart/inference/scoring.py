"""Classification metrics of class probabilities against labels: one definition for every stage.

`evaluate` scores the recorded predictions with it and the gate re-scores the promoted model with
it, so the two figures it compares are computed alike; the majority-class baseline is here too.
No TensorFlow here (evaluate stays fast).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from warmstart.inference.recorded import predict_labels

EPSILON = 1e-7  # Keras' clipping for cross-entropy


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str],
                           threshold: float) -> dict:
    """Loss, accuracy, balanced accuracy, precision / recall / F1 (``average``: binary, of the
    second class, for 2 classes; else macro), macro-F1, ROC-AUC, the confusion matrix and
    per-class precision / recall / F1 / support, on ``len(labels)`` images (``count``)."""
    predicted = predict_labels(probabilities, threshold)
    average = "binary" if len(classes) == 2 else "macro"
    clipped = np.clip(probabilities, EPSILON, 1 - EPSILON)
    loss = -np.mean(np.log(clipped[np.arange(len(labels)), labels]))
    matrix = skm.confusion_matrix(labels, predicted, labels=range(len(classes)))
    per_class = per_class_metrics(labels, predicted, classes)
    return {
        "loss": round(float(loss), 6),
        "accuracy": _rounded(skm.accuracy_score(labels, predicted)),
        "balanced_accuracy": balanced_accuracy(matrix),
        **_averaged(labels, predicted, average),
        "macro_f1": _rounded(skm.f1_score(labels, predicted, average="macro", zero_division=0)),
        "roc_auc": roc_auc(labels, probabilities),
        "confusion_matrix": {actual: {pred: int(matrix[i, j]) for j, pred in enumerate(classes)}
                             for i, actual in enumerate(classes)},
        "per_class": per_class,
        "count": int(len(labels)),
    }


def balanced_accuracy(matrix: np.ndarray) -> float:
    """The mean recall of the classes that occur (sklearn's balanced_accuracy_score, without its
    warning when a class is predicted but absent)."""
    support = matrix.sum(axis=1)
    present = support > 0
    return _rounded(np.mean(np.diag(matrix)[present] / support[present]))


def _rounded(value: float) -> float:
    return round(float(value), 6)


def _averaged(labels: np.ndarray, predicted: np.ndarray, average: str) -> dict:
    options = {"average": average, "zero_division": 0}
    return {"average": average,
            "precision": _rounded(skm.precision_score(labels, predicted, **options)),
            "recall": _rounded(skm.recall_score(labels, predicted, **options)),
            "f1": _rounded(skm.f1_score(labels, predicted, **options))}


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """``{class: {precision, recall, f1, support}}`` for every class (support: its images here;
    0/0 counts as 0)."""
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=range(len(classes)), zero_division=0)
    return {name: {"precision": _rounded(precision[i]), "recall": _rounded(recall[i]),
                   "f1": _rounded(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)}


def majority_baseline(train_counts: list[int], classes: list[str],
                      labels: dict[str, np.ndarray]) -> dict:
    """The classifier that always answers the training split's most frequent class (the first
    of equally frequent ones): its class and its accuracy on each split of ``labels``. It is
    chosen on train alone, so its figures on test are as honest as the models'."""
    majority = int(np.argmax(train_counts))
    return {"class": classes[majority], "chosen_on": "train",
            **{split: {"accuracy": _rounded(np.mean(values == majority)),
                       "count": int(len(values))} for split, values in labels.items()}}


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Binary AUC, or one-vs-rest macro AUC for more classes; None unless every class occurs."""
    if len(np.unique(labels)) < probabilities.shape[1]:
        return None
    if probabilities.shape[1] == 2:
        return round(float(skm.roc_auc_score(labels, probabilities[:, 1])), 6)
    return round(float(skm.roc_auc_score(labels, probabilities, multi_class="ovr",
                                         average="macro")), 6)
