"""Likely label errors in the training split: images whose given label a held-out head doubts.

Confident learning (Northcutt et al., via cleanlab's ``find_label_issues``) needs, for every
training image, class probabilities from a model that did not train on that image. The pooled
features the ``features`` stage cached make that cheap: k-fold logistic regression on them (the
transfer head's inputs; seconds, no TensorFlow) gives out-of-fold probabilities. cleanlab then
flags the images whose given label is less likely than its per-class confidence thresholds
allow, ranked by self-confidence (the probability of the given label, lowest first). Nothing in
the data is changed: the suspects go to ``paths.label_issues`` for a person to review.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from warmstart.atomic import write_text
from warmstart.errors import WarmstartError
from warmstart.layout import FEATURES_ARRAY, LABELS_ARRAY, PATHS_ARRAY, TRAIN
from warmstart.modeling.array_shards import open_split

logger = logging.getLogger(__name__)

#: The columns of ``paths.label_issues``, most doubted image first.
ISSUE_COLUMNS = ("rank", "path", "given_label", "suggested_label", "self_confidence",
                 "suggested_confidence")
#: The training split's cache before the shards (cache format 1), recognised to say so.
OLD_FEATURES_FILE = f"{TRAIN}.npz"
#: Iterations of the logistic regression's solver (lbfgs): enough to converge on standardised
#: pooled features, bounded so a pathological cache cannot stall evaluate.
MAX_ITERATIONS = 1000


class LabelIssueError(WarmstartError):
    """The features cache cannot be searched for label errors (old format, too few images)."""


@dataclass(frozen=True)
class TrainingFeatures:
    """The training split as the features stage cached it: (n, d) features, (n,) labels."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]


def read_training_features(folder: Path) -> TrainingFeatures:
    """The training split's cached pooled features, labels and image paths (TF-free), in
    memory: the logistic regression needs the whole (n, d) matrix (4 bytes x d an image)."""
    if (folder / OLD_FEATURES_FILE).is_file() and not (folder / TRAIN).is_dir():
        raise LabelIssueError(f"{folder / OLD_FEATURES_FILE} is a cache of an older features "
                              "stage: re-run `dvc repro features`.")
    if not (folder / TRAIN).is_dir():
        raise LabelIssueError(f"{folder / TRAIN} is missing: run `dvc repro features`.")
    arrays = open_split(folder, TRAIN)
    missing = sorted({FEATURES_ARRAY, LABELS_ARRAY, PATHS_ARRAY} - set(arrays))
    if missing:
        raise LabelIssueError(f"{folder / TRAIN} holds no {' or '.join(missing)} (written by "
                              "an older features stage): re-run `dvc repro features`.")
    return TrainingFeatures(arrays[FEATURES_ARRAY].read(),
                            arrays[LABELS_ARRAY].read().astype(np.int64),
                            arrays[PATHS_ARRAY].read().tolist())


@dataclass(frozen=True)
class Search:
    """How the out-of-fold head is fit: ``folds`` (stratified, shuffled by ``seed``) and the
    inverse regularisation strength ``c`` of the logistic regression; at most ``limit`` listed."""

    folds: int
    c: float
    seed: int
    limit: int


def out_of_fold_probabilities(train: TrainingFeatures, classes: int, search: Search
                              ) -> np.ndarray:
    """(n, classes) probabilities of each image from a head fit on the other folds only."""
    folds = search.folds
    smallest = int(np.bincount(train.labels, minlength=classes).min())
    if smallest < folds:
        raise LabelIssueError(
            f"evaluate.label_issue_folds is {folds}, but a class has only {smallest} training "
            f"image(s): every fold needs each class. Set evaluate.label_issue_folds to at most "
            f"{smallest} (and at least 2), or add images.")
    head = make_pipeline(StandardScaler(),
                         LogisticRegression(C=search.c, max_iter=MAX_ITERATIONS))
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=search.seed)
    return cross_val_predict(head, train.features, train.labels, cv=splits, method="predict_proba")


def rank_label_issues(train: TrainingFeatures, probabilities: np.ndarray, classes: list[str],
                      limit: int) -> pd.DataFrame:
    """The ``limit`` most doubted images cleanlab flags, as rows of :data:`ISSUE_COLUMNS`."""
    flagged = find_label_issues(train.labels, probabilities,
                                return_indices_ranked_by="self_confidence", n_jobs=1)[:limit]
    names, rows = np.asarray(classes), np.arange(len(flagged))
    suggested = probabilities[flagged].argmax(axis=1)
    return pd.DataFrame({
        "rank": rows + 1, "path": [train.paths[i] for i in flagged],
        "given_label": names[train.labels[flagged]], "suggested_label": names[suggested],
        "self_confidence": probabilities[flagged, train.labels[flagged]].round(6),
        "suggested_confidence": probabilities[flagged, suggested].round(6)},
        columns=list(ISSUE_COLUMNS))


def find_training_label_issues(folder: Path, classes: list[str], search: Search
                               ) -> pd.DataFrame:
    """The training split's likely label errors from the features cache in ``folder``."""
    start = time.perf_counter()
    train = read_training_features(folder)
    probabilities = out_of_fold_probabilities(train, len(classes), search)
    issues = rank_label_issues(train, probabilities, classes, search.limit)
    logger.info("label issues (train split, %d-fold out-of-fold logistic regression, C=%g, on "
                "%d x %d pooled features): %d listed in %.1f s", search.folds, search.c,
                *train.features.shape, len(issues), time.perf_counter() - start)
    return issues


def write_label_issues(path: Path, issues: pd.DataFrame) -> None:
    """``paths.label_issues``: one row per suspect, most doubted first (a header when none)."""
    text = io.StringIO()
    issues.to_csv(text, index=False, lineterminator="\n")
    write_text(path, text.getvalue())
