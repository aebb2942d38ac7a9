"""The candidate: the one of the two trained models that `export` ships and the gate judges.

Fine-tuning does not always help (too few images, a learning rate too high for the data), so the
candidate is the better of the transfer and fine-tuned models on the VALIDATION split by
``evaluate.select_on``; a tie goes to the transfer model (the simpler one: fewer trained weights).
Test plays no part in the choice: the gate judges the candidate there, unbiased.
"""

from __future__ import annotations

import json
from pathlib import Path

from warmstart.errors import WarmstartError
from warmstart.layout import VALIDATION

#: The trained models, simplest first (the order breaks ties).
MODELS = ("transfer", "finetune")
#: Figures of ``classification_metrics`` the choice can be made on, and whether lower is better.
SELECTABLE = {"accuracy": False, "balanced_accuracy": False, "macro_f1": False, "loss": True}


def choose_candidate(results: dict, metric: str) -> dict:
    """``{"model", "split", "metric", "figures": {model: value}, "reason"}`` from evaluate's
    per-model, per-split results."""
    lower = SELECTABLE[metric]
    figures = {model: results[model][VALIDATION][metric] for model in MODELS}
    best = MODELS[0]
    for model in MODELS[1:]:
        better = figures[model] < figures[best] if lower else figures[model] > figures[best]
        best = model if better else best
    other = next(model for model in MODELS if model != best)
    relation = "ties with" if figures[best] == figures[other] else (
        "is lower than" if lower else "is higher than")
    reason = (f"validation {metric} {figures[best]} ({best}) {relation} {figures[other]} "
              f"({other})" + ("; a tie goes to the simpler transfer model"
                              if relation == "ties with" else ""))
    return {"model": best, "split": VALIDATION, "metric": metric, "figures": figures,
            "reason": reason}


def read_candidate(evaluation: Path) -> dict:
    """The candidate recorded in ``paths.evaluate_details`` (with its reason)."""
    try:
        return json.loads(evaluation.read_text())["candidate"]
    except (OSError, ValueError, KeyError) as exc:
        raise WarmstartError(f"No candidate model in {evaluation} ({exc}): run `dvc repro "
                             "evaluate` first.") from exc
