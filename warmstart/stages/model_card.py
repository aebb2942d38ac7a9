"""Stage `model_card`: ``paths.model_card``, a Markdown card describing this run's model.

It states the data version (DVC's hash of ``paths.raw`` from ``dvc.lock``, or a content hash
computed here when there is no lock entry), the split sizes per class, the params, the metrics
of the transfer and fine-tune models per split (test, then validation; the majority-class
baseline beside them), the data validation findings, the exported artefacts with their sizes
and parity, and the command that reproduces the run. It holds no timestamps, so an unchanged run
writes an identical card. The gate copies it into the promoted model's folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from warmstart.atomic import write_text
from warmstart.config.params import BaseParams, Params, as_dict
from warmstart.data.manifest import Manifest
from warmstart.layout import ANOMALIES_FILE, SPLITS, TEST, TRAIN, VALIDATION
from warmstart.modeling.backbones import BACKBONES
from warmstart.versions import data_version

logger = logging.getLogger(__name__)

METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "precision", "recall", "f1",
               "roc_auc", "loss")
AVERAGED = ("precision", "recall", "f1")  # binary (of the second class) or macro
ROLES = {TRAIN: "train fits the model",
         VALIDATION: "validation is where choices are made (training monitors it)",
         TEST: "test is held out, never used for a choice: it gives the reported figures"}
REPRODUCE = ("uv run --frozen dvc pull   # data and models of this commit, if a remote is set\n"
             "uv run --frozen dvc repro  # re-runs whatever differs from dvc.lock")


def version_text(version: dict[str, Any]) -> str:
    key = "md5" if "md5" in version else "sha256"
    return (f"`{version[key]}` ({key}, {version['source']}; {version.get('files')} files, "
            f"{version.get('bytes')} bytes)")


def run_model_card(params: Params) -> Path:
    target = params.path("model_card")
    write_text(target, render_card(params))
    logger.info("model card: %s", target)
    return target


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def render_card(params: Params) -> str:
    manifest = Manifest.read(params.path("processed"))
    sections = [
        header(params, manifest),
        data_section(params, manifest),
        metrics_section(params, manifest.classes),
        export_section(read_json(params.path("export_details"))),
        promotion_section(params),
        "## Parameters\n\n```yaml\n"
        + yaml.safe_dump(as_dict(params), sort_keys=False).rstrip() + "\n```",
        "## Reproduce\n\nFrom the commit holding this card and its `dvc.lock`:\n\n```sh\n"
        + REPRODUCE + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def header(params: Params, manifest: Manifest) -> str:
    return "\n".join([
        "# Model card: warmstart image classifier", "",
        f"{base_text(params.base)} with a GlobalAveragePooling + Dropout({params.head.dropout}) "
        f"+ Dense head, trained by transfer learning ({params.transfer.epochs} epochs, frozen "
        f"base) then fine-tuning ({params.finetune.epochs} epochs, "
        f"{cut_text(params.finetune.fine_tune_at)}, learning rate "
        f"{params.finetune.learning_rate:g} {params.finetune.schedule}).", "",
        f"- Classes ({len(manifest.classes)}): {', '.join(manifest.classes)}",
        f"- Input: RGB images, decoded and resized (bilinear, antialiased) to "
        f"{manifest.image_size}x{manifest.image_size}; the model takes raw 0-255 pixels.",
        "- Intended use: sorting images that show one of the classes above. Every input gets "
        "one of these classes, also images that show none of them.",
    ])


def base_text(base: BaseParams) -> str:
    """The architecture, its width (the MobileNets only) and where its weights came from."""
    alpha = f"alpha {base.alpha}, " if BACKBONES[base.architecture].has_alpha else ""
    return f"{base.architecture} ({alpha}base weights `{base.weights}`)"


def cut_text(fine_tune_at: int | float | str) -> str:
    """``finetune.fine_tune_at`` in words, in the form params.yaml gives it."""
    if isinstance(fine_tune_at, str):
        return f"base layers from `{fine_tune_at}` on"
    if isinstance(fine_tune_at, float):
        return f"the top {1 - fine_tune_at:.0%} of the base's layers"
    return f"base layers {fine_tune_at}+"


def data_section(params: Params, manifest: Manifest) -> str:
    report = read_json(params.path("validation_report") / ANOMALIES_FILE)
    version = version_text(data_version(params.root, params.paths.raw))
    return "\n".join([
        "## Data", "",
        f"- Source: `{params.data.source}`",
        f"- Version of `{params.paths.raw}`: {version}",
        f"- Splits: {ROLES[TRAIN]}; {ROLES[VALIDATION]}; {ROLES[TEST]}.",
        f"- Validation findings: {validation_text(report)}", "",
        "| split | " + " | ".join(manifest.classes) + " | images |",
        "|---|" + "---|" * (len(manifest.classes) + 1),
        *[f"| {split} | " + " | ".join(str(n) for n in manifest.class_counts(split))
          + f" | {manifest.count(split)} |" for split in SPLITS],
    ])


def validation_text(report: dict) -> str:
    if not report:
        return "no validation report found"
    anomalies = {split: sorted(found) for split, found in report.get("tfdv_anomalies", {}).items()}
    count = sum(len(found) for found in anomalies.values())
    problems = [f"{p['check']}: {p['reason']}" for p in report.get("problems", [])]
    verdict = "passed" if report.get("ok") else "FAILED"
    detail = "; ".join([f"{split}: {', '.join(found)}" for split, found in anomalies.items()
                        if found] + problems)
    return (f"{verdict}, {count} TFDV anomal(y/ies), {len(problems)} structural problem(s)"
            + (f" ({detail})" if detail else ""))


def metrics_section(params: Params, classes: list[str]) -> str:
    evaluation = read_json(params.path("evaluate_details"))
    stages = [s for s in ("transfer", "finetune") if s in evaluation]
    if not stages:
        return "## Metrics\n\nNo evaluation metrics found."
    candidate = evaluation.get("candidate", {})
    lines = ["## Metrics", "", "Every figure names its split; the test split's are the ones to "
             "quote (the gate judges them).", "",
             f"**This model is the {candidate.get('model', '?')} model**: the better of the two "
             f"on the validation split ({candidate.get('reason', 'no candidate recorded')})."]
    for split in (TEST, VALIDATION):
        lines += ["", split_table(evaluation, stages, split, classes)]
    if candidate.get("model") in stages:
        lines += ["", per_class_table(evaluation[candidate["model"]][TEST], candidate["model"],
                                      TEST)]
    lines += [training_line(params, stage) for stage in stages]
    return "\n".join(line for line in lines if line is not None)


def training_line(params: Params, stage: str) -> str | None:
    """How a stage trained: epochs run, the kept one, its figures, its learning rate."""
    training = read_json(params.path(f"{stage}_metrics"))
    if not training:
        return None
    rate = training.get("learning_rate", getattr(params, stage).learning_rate)
    chosen = " (chosen on the validation split)" if getattr(params, stage).learning_rate == \
        "auto" else ""
    return (f"\n{stage} training: {training.get('epochs')} epochs run, epoch "
            f"{training.get('kept_epoch')} kept (train.monitor {params.train.monitor}); "
            + "; ".join(f"{split} " + ", ".join(f"{k} {fmt(training[f'{split}_{k}'])}"
                                                 for k in ("accuracy", "loss")
                                                 if f"{split}_{k}" in training)
                        for split in (TRAIN, VALIDATION))
            + f"; learning rate {fmt(rate)}{chosen}, label smoothing "
            f"{params.train.label_smoothing}, train.class_weight {params.train.class_weight}")


def split_table(evaluation: dict, stages: list[str], split: str, classes: list[str]) -> str:
    """The models' figures on ``split`` beside the majority-class baseline's accuracy."""
    first = evaluation[stages[0]][split]
    baseline = evaluation.get("majority_baseline", {})
    average = "binary: " + classes[-1] if first.get("average") == "binary" else "macro"
    lines = [f"**{split.capitalize()} split** ({first.get('count')} images; {ROLES[split]}):", "",
             f"| metric ({split}) | " + " | ".join(stages)
             + f" | majority baseline (always {baseline.get('class')}) |",
             "|---|" + "---|" * (len(stages) + 1)]
    for key in METRIC_KEYS:
        label = f"{key} ({average})" if key in AVERAGED else key
        extra = baseline.get(split, {}).get(key) if key == "accuracy" else None
        lines.append(f"| {label} | " + " | ".join(fmt(evaluation[s][split].get(key))
                                                  for s in stages) + f" | {fmt(extra)} |")
    return "\n".join(lines)


def per_class_table(metrics: dict, model: str, split: str) -> str:
    lines = [f"Per class, {model} model, {split} split:", "",
             "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for name, values in metrics.get("per_class", {}).items():
        lines.append(f"| {name} | " + " | ".join(fmt(values[k]) for k in
                                                 ("precision", "recall", "f1", "support")) + " |")
    return "\n".join(lines)


def export_section(results: dict) -> str:
    if not results:
        return "## Export\n\nNo export metrics found."
    reference = results.get("reference", {})
    lines = ["## Export", "",
             f"Parity with the predictions the {reference.get('model')} stage recorded in "
             f"`{reference.get('file')}` (what evaluate scored), through the `warmstart predict` "
             "loaders:", "",
             "| artefact | size (bytes) | images | top-1 agreement | max abs prob. diff |",
             "|---|---|---|---|---|"]
    for name, entry in results.get("artefacts", {}).items():
        counts = entry.get("images", {})
        images = ", ".join(f"{split} {counts[split]}" for split in SPLITS if split in counts)
        lines.append(f"| {name} | {entry.get('bytes', '')} | {images} | "
                     f"{fmt(entry.get('top1_agreement', ''))} | "
                     f"{fmt(entry.get('max_abs_diff', ''))} |")
    return "\n".join(lines)


def promotion_section(params: Params) -> str:
    gate = params.gate
    rules = []
    if gate.min_gain_over_baseline is not None:
        rules.append(f"its test accuracy is more than {gate.min_gain_over_baseline} above the "
                     "majority-class baseline's")
    if gate.min_accuracy is not None:
        rules.append(f"its test accuracy is at least {gate.min_accuracy}")
    rules.append(f"it is at most {gate.max_drop} below the promoted model's accuracy, "
                 "re-measured on the same test images")
    return ("## Promotion\n\n"
            f"The gate (after this card) promotes the model to `{params.paths.promoted_model}` "
            f"only if {'; '.join(rules)}. Its decision, naming the split and image count of "
            f"each figure, is in `{params.paths.gate_metrics}`.")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
