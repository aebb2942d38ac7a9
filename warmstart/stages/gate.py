"""Stage `gate`: promote the exported model only when it is good enough ("blessing").

The candidate is the fine-tuned model, with its validation accuracy from
``paths.evaluate_metrics``. It passes when

- its accuracy is at least ``gate.min_accuracy``, and
- a model is already promoted: its accuracy is at most ``gate.max_drop`` below the promoted
  model's. The promoted model is re-evaluated on the CURRENT validation split (same metric code
  as `evaluate`), so both figures are measured on the same data; only when it cannot be (other
  classes or image size) is its accuracy recorded at promotion used, and ``gate.json`` says so.

The decision, with every check and its reason, goes to ``paths.gate_metrics``. On a pass the
export folder, the model card and ``promotion.json`` (accuracy, data version, params, artefact
hashes, the previous promotion) replace ``paths.promoted_model`` atomically. On a fail the stage
raises :class:`GateFailed` with the reasons and the promoted model is left untouched.

``paths.promoted_model`` is state that outlives a run: dvc.yaml declares it ``persist: true``, so
DVC neither deletes it before the stage runs nor restores it on failure, and it is still cached
and versioned in ``dvc.lock`` like any model.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import GateParams, Params, as_dict
from warmstart.data.records import Manifest, image_dataset, labels_of
from warmstart.errors import WarmstartError
from warmstart.hashing import sha256_of
from warmstart.inference.predict import read_labels
from warmstart.inference.recorded import class_probabilities
from warmstart.inference.scoring import classification_metrics
from warmstart.layout import CARD_FILE, CLASSES_FILE, MODEL_FILE, PROMOTION_FILE
from warmstart.modeling.model import load_model
from warmstart.versions import data_version

logger = logging.getLogger(__name__)

TOLERANCE = 1e-9  # accuracies are rounded to 6 digits; equal ones must compare equal


class GateFailed(WarmstartError):
    """The candidate model is not good enough to be promoted."""


def run_gate(params: Params) -> dict:
    candidate = json.loads(params.path("evaluate_metrics").read_text())["finetune"]["accuracy"]
    previous = read_promotion(params.path("promoted_model"))
    promoted = promoted_accuracy(params, previous) if previous else None
    checks = gate_checks(candidate, promoted, params.gate)
    version = data_version(params.root, params.paths.raw)
    result = {
        "passed": all(check["passed"] for check in checks),
        "reasons": [check["detail"] for check in checks if not check["passed"]],
        "checks": checks,
        "candidate": {"accuracy": candidate, "data_version": version},
        "promoted": promoted,
        "thresholds": {"min_accuracy": params.gate.min_accuracy,
                       "max_drop": params.gate.max_drop},
    }
    if result["passed"]:
        promote(params, result, previous)
    write_json(params.path("gate_metrics"), result)
    if not result["passed"]:
        raise GateFailed(failure_message(params, result))
    logger.info("gate passed: %s promoted to %s", candidate, params.path("promoted_model"))
    return result


def read_promotion(folder: Path) -> dict | None:
    """The current promotion's metadata, None if nothing is promoted yet."""
    if not folder.exists():
        return None
    metadata = folder / PROMOTION_FILE
    if not metadata.is_file() or not (folder / MODEL_FILE).is_file():
        raise GateFailed(f"{folder} exists but lacks {PROMOTION_FILE} or {MODEL_FILE}: it was "
                         "not written by the gate. Restore it (`dvc checkout`) or delete it to "
                         "promote from scratch.")
    return json.loads(metadata.read_text())


def promoted_accuracy(params: Params, previous: dict) -> dict:
    """The promoted model's accuracy on this validation split, else the recorded one."""
    folder = params.path("promoted_model")
    manifest = Manifest.read(params.path("processed"))
    labels = read_labels(folder / CLASSES_FILE)
    model = load_model(folder / MODEL_FILE)
    recorded = previous["candidate"]["accuracy"]
    base = {"recorded_accuracy": recorded, "promoted_at": previous.get("promoted_at"),
            "data_version": previous["candidate"].get("data_version")}
    if labels.classes != manifest.classes or model.input_shape[1] != manifest.image_size:
        logger.warning("The promoted model has other classes or image size: comparing with "
                       "its accuracy recorded at promotion")
        return {**base, "accuracy": recorded, "measured": "recorded at its promotion (other "
                "classes or image size than this run)"}
    split = params.data.validation_split
    batches = image_dataset(manifest, split, params.train.batch_size, cache=False)
    probabilities = class_probabilities(model.predict(batches, verbose=0))
    metrics = classification_metrics(labels_of(manifest, split), probabilities,
                                     manifest.classes, params.evaluate.threshold)
    return {**base, "accuracy": metrics["accuracy"],
            "measured": f"re-evaluated on this run's {split} split"}


def gate_checks(candidate: float, promoted: dict | None, gate: GateParams) -> list[dict]:
    checks = [{
        "check": "min_accuracy",
        "passed": candidate >= gate.min_accuracy - TOLERANCE,
        "detail": f"candidate accuracy {candidate:.6g} "
                  f"{'>=' if candidate >= gate.min_accuracy - TOLERANCE else '<'} "
                  f"gate.min_accuracy {gate.min_accuracy}",
    }]
    if promoted is None:
        return checks
    floor = promoted["accuracy"] - gate.max_drop
    passed = candidate >= floor - TOLERANCE
    checks.append({
        "check": "max_drop",
        "passed": passed,
        "detail": f"candidate accuracy {candidate:.6g} {'>=' if passed else '<'} promoted "
                  f"{promoted['accuracy']:.6g} - gate.max_drop {gate.max_drop} = {floor:.6g}",
    })
    return checks


def promote(params: Params, result: dict, previous: dict | None) -> None:
    """Replace the promoted folder atomically: export + card + promotion.json."""
    export = params.path("export_model")
    with atomic_dir(params.path("promoted_model")) as staging:
        shutil.copytree(export, staging, dirs_exist_ok=True)
        card = params.path("model_card")
        if card.is_file():
            shutil.copy2(card, staging / CARD_FILE)
        write_json(staging / PROMOTION_FILE, promotion_metadata(params, result, previous,
                                                                staging))


def promotion_metadata(params: Params, result: dict, previous: dict | None,
                       folder: Path) -> dict:
    evaluation = json.loads(params.path("evaluate_metrics").read_text())["finetune"]
    files = {p.relative_to(folder).as_posix(): sha256_of(p)
             for p in sorted(folder.rglob("*")) if p.is_file()}
    earlier = None if previous is None else {
        "promoted_at": previous.get("promoted_at"),
        "accuracy": previous["candidate"]["accuracy"],
        "data_version": previous["candidate"].get("data_version"),
        "model_sha256": previous.get("files", {}).get(MODEL_FILE)}
    return {"promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "candidate": {**result["candidate"], "evaluate": evaluation},
            "gate": {k: result[k] for k in ("checks", "promoted", "thresholds")},
            "params": as_dict(params), "files": files, "previous": earlier}


def failure_message(params: Params, result: dict) -> str:
    folder = params.path("promoted_model")
    kept = (f"The promoted model in {folder} (accuracy {result['promoted']['accuracy']}) is "
            "unchanged." if result["promoted"] else f"Nothing was promoted to {folder}.")
    return ("Promotion gate failed:\n- " + "\n- ".join(result["reasons"]) + f"\n{kept} "
            f"Details: {params.path('gate_metrics')}. Improve the model, or change gate.* in "
            "params.yaml if the bound is wrong.")
