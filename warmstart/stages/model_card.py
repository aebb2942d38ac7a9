"""Stage `model_card`: ``paths.model_card``, a Markdown card describing this run's model.

It states the data version (DVC's hash of ``paths.raw`` from ``dvc.lock``, or a content hash
computed here when there is no lock entry), the params, the metrics of the transfer and fine-tune
models, the data validation findings, the exported artefacts with their sizes and parity, and
the command that reproduces the run. It holds no timestamps, so an unchanged run writes an
identical card. The gate copies it into the promoted model's folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from warmstart.atomic import write_text
from warmstart.config.params import Params, as_dict
from warmstart.data.records import Manifest
from warmstart.layout import ANOMALIES_FILE
from warmstart.versions import data_version

logger = logging.getLogger(__name__)

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "roc_auc", "loss")
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
        metrics_section(params),
        export_section(read_json(params.path("export_metrics"))),
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
        f"MobileNetV2 (alpha {params.base.alpha}, base weights `{params.base.weights}`) "
        f"with a GlobalAveragePooling + Dropout({params.head.dropout}) + Dense head, trained "
        f"by transfer learning ({params.transfer.epochs} epochs, frozen base) then fine-tuning "
        f"({params.finetune.epochs} epochs, base layers {params.finetune.fine_tune_at}+).", "",
        f"- Classes ({len(manifest.classes)}): {', '.join(manifest.classes)}",
        f"- Input: RGB images, decoded and resized (bilinear, antialiased) to "
        f"{manifest.image_size}x{manifest.image_size}; the model takes raw 0-255 pixels.",
        "- Intended use: sorting images that show one of the classes above. Every input gets "
        "one of these classes, also images that show none of them.",
    ])


def data_section(params: Params, manifest: Manifest) -> str:
    counts = ", ".join(f"{split} {manifest.count(split)}" for split in manifest.splits)
    report = read_json(params.path("validation_report") / ANOMALIES_FILE)
    version = version_text(data_version(params.root, params.paths.raw))
    return "\n".join([
        "## Data", "",
        f"- Source: `{params.data.source}`",
        f"- Version of `{params.paths.raw}`: {version}",
        f"- Images: {counts}",
        f"- Validation findings: {validation_text(report)}",
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


def metrics_section(params: Params) -> str:
    evaluation = read_json(params.path("evaluate_metrics"))
    stages = [s for s in ("transfer", "finetune") if s in evaluation]
    lines = ["## Metrics (validation split)", "",
             "| metric | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for key in METRIC_KEYS:
        lines.append(f"| {key} | " + " | ".join(fmt(evaluation[s].get(key)) for s in stages)
                     + " |")
    for stage in stages:
        training = read_json(params.path(f"{stage}_metrics"))
        if training:
            lines.append(f"\n{stage} training, last epoch: "
                         + ", ".join(f"{k} {fmt(v)}" for k, v in sorted(training.items())))
    return "\n".join(lines)


def export_section(results: dict) -> str:
    if not results:
        return "## Export\n\nNo export metrics found."
    lines = ["## Export", "",
             f"Parity with the Keras model on {results.get('validation_images')} validation "
             "images (`warmstart predict` loaders):", "",
             "| artefact | size (bytes) | top-1 agreement | max abs prob. diff |",
             "|---|---|---|---|"]
    for name, entry in results.get("artefacts", {}).items():
        lines.append(f"| {name} | {entry.get('bytes', '')} | "
                     f"{fmt(entry.get('top1_agreement', 'reference'))} | "
                     f"{fmt(entry.get('max_abs_diff', ''))} |")
    return "\n".join(lines)


def promotion_section(params: Params) -> str:
    return ("## Promotion\n\n"
            f"The gate (after this card) promotes the model to `{params.paths.promoted_model}` "
            f"only if its accuracy is at least {params.gate.min_accuracy} and at most "
            f"{params.gate.max_drop} below the promoted model's on this validation split; "
            f"its decision is in `{params.paths.gate_metrics}`.")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
