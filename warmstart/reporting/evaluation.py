"""``paths.evaluation_html``: where each model fails, which images, and which labels look wrong.

One offline page (inline CSS, thumbnails as data URIs, SVG charts): the candidate and why, then
per model (transfer, finetune) and split (validation: choices are made there; test: held out,
reported only) the metrics, per-class precision / recall / F1 / support, the confusion matrix,
the most confused pairs, the reliability diagram with its ECE and the top losses (the most
confidently wrong images); the images whose verdict fine-tuning changed; and the likely label
errors of the training split (``paths.label_issues``). Galleries hold at most
``evaluate.max_thumbnails`` images each and every image is shrunk once, so the page stays small
and fast for 10,000 images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from warmstart.atomic import write_text
from warmstart.config.params import EvaluateParams, Params
from warmstart.inference.candidate import MODELS
from warmstart.inference.label_issues import (
    Search,
    find_training_label_issues,
    write_label_issues,
)
from warmstart.inference.recorded import Predictions, predict_labels
from warmstart.inference.scoring import EPSILON, classification_metrics
from warmstart.reporting.charts import (
    Calibration,
    calibration,
    confusion_table,
    most_confused,
    reliability_svg,
)
from warmstart.reporting.html import card, escape, file_link, page
from warmstart.reporting.thumbnails import Thumbnails

logger = logging.getLogger(__name__)

#: The figures of the metrics tables, in order (from ``classification_metrics``).
FIGURES = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "macro_f1", "roc_auc",
           "loss", "count")
#: Most confused (actual, predicted) pairs listed per model and split.
CONFUSED_PAIRS = 5


@dataclass(frozen=True)
class Scored:
    """One model on one split: predictions, predicted classes, per-image loss, metrics."""

    run: Predictions
    predicted: np.ndarray
    loss: np.ndarray
    metrics: dict
    curve: Calibration

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.run.labels


def score(run: Predictions, options: EvaluateParams) -> Scored:
    """The figures of ``run`` at ``evaluate.threshold``, calibration in ``calibration_bins``."""
    predicted = predict_labels(run.probabilities, options.threshold)
    rows = np.arange(len(run.labels))
    loss = -np.log(np.clip(run.probabilities[rows, run.labels], EPSILON, 1 - EPSILON))
    metrics = classification_metrics(run.labels, run.probabilities, run.classes,
                                     options.threshold)
    curve = calibration(run.probabilities[rows, predicted], predicted == run.labels,
                        options.calibration_bins)
    return Scored(run, predicted, loss, metrics, curve)


@dataclass(frozen=True)
class Gallery:
    """Image cards of files under the raw data, linked relative to the page, bounded in count."""

    thumbnails: Thumbnails
    page_path: Path
    limit: int

    def card(self, path: str, body: str) -> str:
        link = file_link(self.thumbnails.root / path, self.page_path)
        return card(self.thumbnails(path), path, f"{body}<br><span class='muted'>"
                    f"{escape(path)}</span>", href=link)


def report_evaluation(params: Params, runs: dict[str, dict[str, Predictions]],
                      candidate: dict) -> None:
    """Write ``paths.label_issues`` and ``paths.evaluation_html`` for the recorded ``runs``
    (``{model: {split: Predictions}}``) and evaluate's ``candidate``."""
    options = params.evaluate
    classes = next(iter(next(iter(runs.values())).values())).classes
    search = Search(options.label_issue_folds, options.label_issue_c, params.train.seed,
                    options.max_label_issues)
    issues = find_training_label_issues(params.path("features"), classes, search)
    write_label_issues(params.path("label_issues"), issues)
    start, html_path = time.perf_counter(), params.path("evaluation_html")
    scored = {model: {split: score(run, options) for split, run in by_split.items()}
              for model, by_split in runs.items()}
    gallery = Gallery(Thumbnails(params.path("raw")), html_path, options.max_thumbnails)
    issues_link = file_link(params.path("label_issues"), html_path)
    write_text(html_path, page("Evaluation", evaluation_parts(scored, candidate, gallery,
                                                              (issues, issues_link))))
    logger.info("evaluation report: %s (%d thumbnails) in %.1f s", html_path,
                len(gallery.thumbnails), time.perf_counter() - start)


def evaluation_parts(scored: dict[str, dict[str, Scored]], candidate: dict, gallery: Gallery,
                     issues: tuple[pd.DataFrame, str]) -> list[str]:
    """The page's sections, top to bottom."""
    splits = list(next(iter(scored.values())))
    parts = [candidate_banner(candidate), summary_table(scored), contents(scored)]
    for model, by_split in scored.items():
        parts += [model_split_section(model, split, result, gallery)
                  for split, result in by_split.items()]
    first, second = MODELS
    parts += [changed_section(split, (scored[first][split], scored[second][split]), gallery)
              for split in splits]
    parts.append(issues_section(*issues, gallery))
    return parts


def candidate_banner(candidate: dict) -> str:
    return (f"<div class='banner info'>Candidate: <code>{escape(candidate['model'])}</code> — "
            f"the better model on the {escape(candidate['split'])} split by "
            f"{escape(candidate['metric'])}: {escape(candidate['reason'])}. Export ships it "
            "and the gate judges it on the test split.</div><p class='muted'>Validation is "
            "where choices are made (early stopping, learning rate, this candidate); test is "
            "held out and only reported.</p>")


def summary_table(scored: dict[str, dict[str, Scored]]) -> str:
    head = "".join(f"<th>{name}</th>" for name in
                   ("model", "split", "accuracy", "balanced accuracy", "macro F1", "loss",
                    "ECE", "wrong", "images"))
    rows = [f"<h2>Summary</h2><table><tr>{head}</tr>"]
    for model, by_split in scored.items():
        for split, result in by_split.items():
            m = result.metrics
            rows.append(f"<tr><td><a href='#{model}-{split}'>{escape(model)}</a></td>"
                        f"<td>{escape(split)}</td>" + "".join(
                            f"<td>{_figure(value)}</td>" for value in (
                                m["accuracy"], m["balanced_accuracy"], m["macro_f1"],
                                m["loss"], result.curve.ece, int((~result.correct).sum()),
                                m["count"])) + "</tr>")
    return "".join(rows) + "</table>"


def contents(scored: dict[str, dict[str, Scored]]) -> str:
    links = [f"<a href='#{model}-{split}'>{escape(model)} · {escape(split)}</a>"
             for model, by_split in scored.items() for split in by_split]
    links += [f"<a href='#changed-{split}'>changed verdicts · {escape(split)}</a>"
              for split in next(iter(scored.values()))]
    return "<p>" + " | ".join([*links, "<a href='#label-issues'>likely label errors</a>"]) + "</p>"


def model_split_section(model: str, split: str, result: Scored, gallery: Gallery) -> str:
    m, classes = result.metrics, result.run.classes
    matrix = confusion_matrix(result.run.labels, result.predicted, labels=range(len(classes)))
    figures = "".join(f"<th>{name}</th>" for name in (*FIGURES, "ECE"))
    values = "".join(f"<td>{_figure(m[name])}</td>" for name in FIGURES)
    return (f"<h2 id='{model}-{split}'>{escape(model)} on the {escape(split)} split</h2>"
            f"<table><tr>{figures}</tr><tr>{values}<td>{_figure(result.curve.ece)}</td></tr>"
            f"</table><p class='muted'>precision / recall / F1: {escape(m['average'])}"
            f" average.</p><div class='row'><div><h3>Per class</h3>{per_class_table(m)}</div>"
            f"<div><h3>Confusion matrix</h3>{confusion_table(matrix, classes)}"
            f"{confused_list(matrix, classes)}</div><div><h3>Calibration</h3>"
            f"{reliability_svg(result.curve)}<br>ECE {result.curve.ece:.4f} "
            f"({len(result.curve.counts)} bins)</div></div>"
            + top_losses(model, split, result, gallery))


def per_class_table(metrics: dict) -> str:
    rows = ["<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
            "<th>support</th></tr>"]
    rows += [f"<tr><td>{escape(name)}</td><td>{_figure(v['precision'])}</td>"
             f"<td>{_figure(v['recall'])}</td><td>{_figure(v['f1'])}</td>"
             f"<td>{v['support']}</td></tr>" for name, v in metrics["per_class"].items()]
    return "".join(rows) + "</table>"


def confused_list(matrix: np.ndarray, classes: list[str]) -> str:
    pairs = most_confused(matrix, classes, CONFUSED_PAIRS)
    if not pairs:
        return "<p>No confusions.</p>"
    items = "".join(f"<li>{escape(actual)} taken for {escape(predicted)}: {count}</li>"
                    for actual, predicted, count in pairs)
    return f"<p>Most confused (actual → predicted):</p><ol>{items}</ol>"


def top_losses(model: str, split: str, result: Scored, gallery: Gallery) -> str:
    """The most confidently wrong images: wrong ones by loss, highest first."""
    wrong = np.flatnonzero(~result.correct)
    ordered = wrong[np.argsort(-result.loss[wrong], kind="stable")][:gallery.limit]
    title = (f"<h3 id='losses-{model}-{split}'>Top losses ({len(ordered)} of {len(wrong)} "
             f"wrong)</h3>")
    if not len(wrong):
        return title + "<p>No wrong predictions.</p>"
    names, run = result.run.classes, result.run
    cards = [gallery.card(run.paths[i],
                          f"true <b>{escape(names[run.labels[i]])}</b>, predicted "
                          f"<b class='bad'>{escape(names[result.predicted[i]])}</b> "
                          f"p={run.probabilities[i, result.predicted[i]]:.3f}<br>"
                          f"loss {result.loss[i]:.3f}") for i in ordered]
    return title + "<div class='cards'>" + "".join(cards) + "</div>"


def changed_section(split: str, pair: tuple[Scored, Scored], gallery: Gallery) -> str:
    """Images one model gets right and the other wrong: what fine-tuning fixed and broke."""
    before, after = pair
    first, second = MODELS
    fixed = np.flatnonzero(~before.correct & after.correct)
    broken = np.flatnonzero(before.correct & ~after.correct)
    parts = [f"<h2 id='changed-{split}'>Changed verdicts on the {escape(split)} split</h2>"
             f"<p>{first} → {second}: {len(fixed)} image(s) fixed, {len(broken)} broken.</p>"]
    for name, rows in (("Fixed by fine-tuning", fixed), ("Broken by fine-tuning", broken)):
        moved = rows[np.argsort(-np.abs(before.loss[rows] - after.loss[rows]),
                                kind="stable")][:gallery.limit]
        parts.append(f"<h3>{name} ({len(moved)} of {len(rows)})</h3><div class='cards'>"
                     + "".join(_changed_card(i, pair, gallery) for i in moved) + "</div>")
    return "".join(parts)


def _changed_card(index: int, pair: tuple[Scored, Scored], gallery: Gallery) -> str:
    run, names = pair[0].run, pair[0].run.classes
    verdicts = "<br>".join(
        f"{model}: {escape(names[r.predicted[index]])} "
        f"p={r.run.probabilities[index, r.predicted[index]]:.3f}"
        for model, r in zip(MODELS, pair, strict=True))
    return gallery.card(run.paths[index],
                        f"true <b>{escape(names[run.labels[index]])}</b><br>{verdicts}")


def issues_section(issues: pd.DataFrame, csv_link: str, gallery: Gallery) -> str:
    shown = issues.head(gallery.limit)
    parts = [f"<h2 id='label-issues'>Likely label errors in the train split</h2><p>"
             f"{len(issues)} training image(s) whose given label a held-out head doubts "
             f"(out-of-fold predictions, confident learning), most doubted first; all of "
             f"them in <a href='{escape(csv_link)}'>{escape(csv_link)}</a>. Nothing was "
             "changed: review each and fix or remove the file if its label is wrong.</p>"]
    cards = [gallery.card(row.path, f"#{row.rank} given <b class='bad'>"
                          f"{escape(row.given_label)}</b> (p={row.self_confidence:.3f}), "
                          f"suggested <b class='good'>{escape(row.suggested_label)}</b> "
                          f"(p={row.suggested_confidence:.3f})")
             for row in shown.itertuples()]
    return "".join(parts) + "<div class='cards'>" + "".join(cards) + "</div>"


def _figure(value: object) -> str:
    if value is None:
        return "<span class='muted'>n/a</span>"
    return f"{value:.4f}" if isinstance(value, float) else escape(value)
