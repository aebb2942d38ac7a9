"""reports/evaluation.html and reports/label_issues.csv on tiny synthetic data (no TensorFlow).

A 3-class dataset of small class-coloured images with recorded predictions chosen by hand, so
the wrong images, their losses and the per-class figures are known; and pooled-feature clusters
with planted label flips, which the out-of-fold search must find.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_fscore_support

from tests.helpers.caches import write_feature_split
from tests.helpers.images import CLASS_COLOURS, write_image
from tests.helpers.project import write_params
from warmstart.config.params import Params
from warmstart.inference.label_issues import (
    ISSUE_COLUMNS,
    LabelIssueError,
    Search,
    find_training_label_issues,
)
from warmstart.inference.recorded import Predictions
from warmstart.reporting.charts import calibration, most_confused
from warmstart.reporting.evaluation import report_evaluation
from warmstart.reporting.html import jpeg_uri
from warmstart.reporting.thumbnails import ThumbnailError, shrunk_jpeg

CLASSES = sorted(CLASS_COLOURS)  # birds, cats, dogs
PER_CLASS = 4
CANDIDATE = {"model": "finetune", "split": "validation", "metric": "accuracy",
             "reason": "validation accuracy 0.75 (finetune) is higher than 0.5 (transfer)"}


def source(root: Path) -> Path:
    """A data.source folder for the params (the reports read paths.raw, never the source)."""
    (root / "src").mkdir()
    return root / "src"


def write_split(raw: Path, split: str) -> list[str]:
    """PER_CLASS images per class under raw/<split>/<class>/; their paths relative to raw."""
    paths = []
    for label in CLASSES:
        for index in range(PER_CLASS):
            path = f"{split}/{label}/{label}.{index}.jpg"
            write_image(raw / path, CLASS_COLOURS[label], (40, 30), seed=len(paths) + 7)
            paths.append(path)
    return paths


def recorded(paths: list[str], wrong: dict[int, tuple[int, float]]) -> Predictions:
    """Each image right at p=0.9, but ``wrong``: index -> (predicted class, its probability)."""
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    probabilities = np.full((len(paths), 3), 0.05)
    probabilities[np.arange(len(paths)), labels] = 0.9
    for index, (predicted, p) in wrong.items():
        probabilities[index] = (1 - p) / 2
        probabilities[index, predicted] = p
    return Predictions(paths, labels, probabilities, CLASSES)


#: Finetune's wrong validation images: (predicted, probability); loss order 5, 0, 9 (0.98,
#: 0.8, 0.6 on the wrong class leave 0.01, 0.1, 0.2 on the right one).
FINETUNE_WRONG = {0: (1, 0.8), 5: (2, 0.98), 9: (0, 0.6)}
TRANSFER_WRONG = {0: (1, 0.7), 1: (2, 0.7), 2: (2, 0.6), 5: (2, 0.9), 9: (0, 0.5), 11: (1, 0.5)}


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict]:
    root = tmp_path_factory.mktemp("report")
    params = write_params(root / "work", source(root), evaluate={
        "max_thumbnails": 2, "label_issue_folds": 3,  # 3 of 12 training images per fold
        "label_issue_c": 1.0})  # weakly regularised: the default's 0.01 suits thousands
    raw = params.path("raw")
    splits = {split: write_split(raw, split) for split in ("validation", "test")}
    runs = {"transfer": {s: recorded(p, TRANSFER_WRONG) for s, p in splits.items()},
            "finetune": {s: recorded(p, FINETUNE_WRONG) for s, p in splits.items()}}
    plant_training_features(params, write_split(raw, "train"), flipped=[1])
    report_evaluation(params, runs, CANDIDATE)
    return params, runs


def plant_training_features(params: Params, paths: list[str], flipped: list[int],
                            dims: int = 16) -> np.ndarray:
    """paths.features' training split: one well-separated cluster per class, the ``flipped``
    images' labels moved to the next class; returns the given labels."""
    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(len(CLASSES)), len(paths) // len(CLASSES))
    centres = rng.normal(scale=4.0, size=(len(CLASSES), dims))
    features = (centres[truth] + rng.normal(size=(len(paths), dims))).astype(np.float32)
    given = truth.copy()
    given[flipped] = (given[flipped] + 1) % len(CLASSES)
    write_feature_split(params.path("features"), "train", features, given, paths)
    return given


def section(page: str, anchor: str, until: str = "<h[23]") -> str:
    """The HTML from the element with id ``anchor`` up to the next heading ``until``."""
    start = page.index(f"id='{anchor}'")
    following = re.search(until, page[start:])
    return page[start:start + following.start()] if following else page[start:]


def test_top_losses_show_the_most_confidently_wrong_images_in_order(reported) -> None:
    params, _ = reported
    page = params.path("evaluation_html").read_text()
    gallery = section(page, "losses-finetune-validation")
    assert "Top losses (2 of 3 wrong)" in gallery  # evaluate.max_thumbnails bounds it
    shown = re.findall(r"<img src='([^']+)' alt='([^']+)'>", gallery)
    # Images 5 (cats.1, p=0.98 on dogs) and 0 (birds.0, p=0.8 on cats); 9 (loss 1.6) left out.
    assert [alt for _, alt in shown] == ["validation/cats/cats.1.jpg",
                                         "validation/birds/birds.0.jpg"]
    for (uri, alt), href in zip(shown, re.findall(r"<a href='([^']+)'>", gallery),
                                strict=True):
        file = params.path("raw") / alt
        assert uri.startswith("data:image/jpeg;base64,") and uri == jpeg_uri(shrunk_jpeg(file))
        assert (params.path("evaluation_html").parent / href).resolve() == file.resolve()
    assert "predicted <b class='bad'>dogs</b> p=0.980" in gallery


def test_per_class_table_and_confusions_match_sklearn(reported) -> None:
    params, runs = reported
    page = params.path("evaluation_html").read_text()
    part = section(page, "finetune-test", until="<h2")
    run = runs["finetune"]["test"]
    predicted = run.probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(run.labels, predicted)
    for i, name in enumerate(CLASSES):
        assert (f"<tr><td>{name}</td><td>{precision[i]:.4f}</td><td>{recall[i]:.4f}</td>"
                f"<td>{f1[i]:.4f}</td><td>{support[i]}</td></tr>") in part
    assert "<li>birds taken for cats: 1</li>" in part
    assert "finetune on the test split" in part and "ECE" in part and "<svg" in part


def test_the_page_names_the_candidate_and_is_offline(reported) -> None:
    params, _ = reported
    page = params.path("evaluation_html").read_text()
    top = page[:page.index("<h2")]
    assert "Candidate: <code>finetune</code>" in top and CANDIDATE["reason"] in top
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing to fetch


def test_changed_verdicts_list_what_fine_tuning_fixed_and_broke(reported) -> None:
    params, _ = reported
    changed = params.path("evaluation_html").read_text()
    changed = changed[changed.index("id='changed-validation'"):changed.index("id='changed-test'")]
    # transfer wrong on 0, 1, 2, 5, 9, 11; finetune on 0, 5, 9: 1, 2, 11 fixed, none broken.
    assert "transfer → finetune: 3 image(s) fixed, 0 broken." in changed
    assert "Fixed by fine-tuning (2 of 3)" in changed


def test_label_issues_file_lists_the_flipped_training_image(reported) -> None:
    params, _ = reported
    issues = pd.read_csv(params.path("label_issues"))
    assert tuple(issues.columns) == ISSUE_COLUMNS
    first = issues.iloc[0]
    assert (first["path"], first["given_label"], first["suggested_label"]) == (
        "train/birds/birds.1.jpg", "cats", "birds")
    page = params.path("evaluation_html").read_text()
    assert "train/birds/birds.1.jpg" in section(page, "label-issues", until="<h2")


def test_planted_label_errors_are_found_among_the_top_suspects(tmp_path: Path) -> None:
    params = write_params(tmp_path / "work", source(tmp_path))
    count = 300
    paths = [f"train/{i}.jpg" for i in range(count)]
    flipped = sorted(np.random.default_rng(5).permutation(count)[:21].tolist())  # 7 %
    given = plant_training_features(params, paths, flipped, dims=32)
    search = Search(folds=5, c=0.01, seed=1, limit=2 * len(flipped))
    issues = find_training_label_issues(params.path("features"), CLASSES, search)
    found = {int(Path(p).stem) for p in issues["path"]}
    assert len(found & set(flipped)) >= 0.8 * len(flipped)
    assert issues["self_confidence"].is_monotonic_increasing
    rows = [int(Path(p).stem) for p in issues["path"]]
    assert list(issues["given_label"]) == [CLASSES[given[i]] for i in rows]
    again = find_training_label_issues(params.path("features"), CLASSES, search)
    pd.testing.assert_frame_equal(issues, again)  # seeded: the same suspects every run


def test_label_issue_search_refuses_an_old_cache_and_too_many_folds(tmp_path: Path) -> None:
    folder = tmp_path / "features"
    with pytest.raises(LabelIssueError, match=r"features/train is missing.*dvc repro features"):
        find_training_label_issues(folder, ["a", "b"], Search(folds=2, c=1.0, seed=0, limit=5))
    folder.mkdir()
    np.savez(folder / "train.npz", features=np.zeros((6, 2)), labels=np.array([0, 1] * 3))
    with pytest.raises(LabelIssueError, match=r"train\.npz is a cache of an older features"):
        find_training_label_issues(folder, ["a", "b"], Search(folds=2, c=1.0, seed=0, limit=5))
    write_feature_split(folder, "train", np.zeros((6, 2)), np.array([0, 1] * 3))
    with pytest.raises(LabelIssueError, match=r"train holds no paths.*dvc repro features"):
        find_training_label_issues(folder, ["a", "b"], Search(folds=2, c=1.0, seed=0, limit=5))
    write_feature_split(folder, "train", np.zeros((6, 2)), np.array([0, 1] * 3),
                        [f"{i}.jpg" for i in range(6)])
    with pytest.raises(LabelIssueError, match="evaluate.label_issue_folds is 5.*only 3"):
        find_training_label_issues(folder, ["a", "b"], Search(folds=5, c=1.0, seed=0, limit=5))


def test_a_missing_image_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ThumbnailError, match=r"gone\.jpg.*dvc repro"):
        shrunk_jpeg(tmp_path / "gone.jpg")


def test_calibration_bins_and_ece_by_hand() -> None:
    confidence = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 1, 1, 0, 1, 0], bool)
    curve = calibration(confidence, correct, bins=10)
    assert curve.counts[9] == 4 and curve.counts[5] == 2 and curve.counts.sum() == 6
    assert curve.accuracy[9] == pytest.approx(0.75) and curve.accuracy[5] == pytest.approx(0.5)
    # (4 * |0.75 - 0.95| + 2 * |0.5 - 0.55|) / 6
    assert curve.ece == pytest.approx((4 * 0.2 + 2 * 0.05) / 6, abs=1e-6)


def test_most_confused_pairs_are_the_largest_off_diagonal_cells() -> None:
    matrix = np.array([[5, 3, 0], [1, 6, 4], [0, 0, 7]])
    assert most_confused(matrix, CLASSES, 2) == [("cats", "dogs", 4), ("birds", "cats", 3)]
