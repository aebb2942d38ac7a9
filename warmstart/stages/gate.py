"""Stage `gate`: promote the exported model only when it is good enough ("blessing").

The candidate is the model `export` shipped: the better of the transfer and fine-tuned models
on the validation split (``inference/candidate.py``), judged on the TEST split only: held out,
no stage before made a choice on it (training, the learning-rate search and the candidate's
choice all use validation). Its test accuracy comes from
``paths.evaluate_details``. It passes when

- ``beats_baseline``: its accuracy is more than ``gate.min_gain_over_baseline`` above the
  majority-class baseline's on the same test images (the classifier that always answers the
  training split's most frequent class; 0.0: strictly better; null skips the check), so the
  default fits any dataset, balanced or not, 2 classes or 20;
- ``min_accuracy``, only when ``gate.min_accuracy`` is set (default null): its accuracy is at
  least that;
- ``max_drop``, when a model is already promoted: its accuracy is at most ``gate.max_drop`` below
  the promoted model's. The promoted model is re-evaluated on THIS run's test split (same images,
  same metric code as `evaluate`); only when it cannot be (other classes or image size) is its
  accuracy recorded at promotion used, and ``gate.json`` says so and on which split.

The decision, with every check, its reason and the split and image count of every figure, goes
to ``paths.gate_details`` (the compared figures to ``paths.gate_metrics``). On a pass the export
folder, the model card and ``promotion.json`` (accuracy and split, data version, params, artefact
hashes, the previous promotion) replace ``paths.promoted_model`` atomically. On a fail the stage
raises :class:`GateFailed` with the reasons and the promoted model is left untouched.

``paths.promoted_model`` is state that outlives a run: dvc.yaml declares it ``persist: true``, so
DVC neither deletes it before the stage runs nor restores it on failure, and it is still cached
and versioned in ``dvc.lock`` like any model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import GateParams, Params, as_dict
from warmstart.data.manifest import Manifest
from warmstart.errors import WarmstartError
from warmstart.hashing import sha256_of
from warmstart.inference.candidate import read_candidate
from warmstart.inference.recorded import class_probabilities
from warmstart.inference.scoring import classification_metrics
from warmstart.layout import CARD_FILE, CLASSES_FILE, MODEL_FILE, PROMOTION_FILE, TEST
from warmstart.versions import data_version

logger = logging.getLogger(__name__)

TOLERANCE = 1e-9  # accuracies are rounded to 6 digits; equal ones must compare equal
#: The only split the gate judges on: held out from every choice before it.
JUDGED_SPLIT = TEST


class GateFailed(WarmstartError):
    """The candidate model is not good enough to be promoted."""


def run_gate(params: Params) -> dict:
    candidate, baseline = judged_figures(params.path("evaluate_details"))
    previous = read_promotion(params.path("promoted_model"))
    promoted = promoted_accuracy(params, previous) if previous else None
    checks = gate_checks(candidate, baseline, promoted, params.gate)
    if not checks:
        logger.warning("No gate check applies (gate.min_gain_over_baseline and gate.min_accuracy "
                       "are null and nothing is promoted yet): this candidate is promoted "
                       "unconditionally")
    candidate["data_version"] = data_version(params.root, params.paths.raw)
    result = {
        "passed": all(check["passed"] for check in checks),
        "reasons": [check["detail"] for check in checks if not check["passed"]],
        "checks": checks,
        "split": JUDGED_SPLIT,
        "candidate": candidate,
        "baseline": baseline,
        "promoted": promoted,
        "thresholds": dataclasses.asdict(params.gate),
    }
    if result["passed"]:
        promote(params, result, previous)
    write_json(params.path("gate_details"), result)
    write_json(params.path("gate_metrics"), compared(result))
    if not result["passed"]:
        raise GateFailed(failure_message(params, result))
    logger.info("gate passed: test accuracy %s promoted to %s", candidate["accuracy"],
                params.path("promoted_model"))
    return result


def compared(result: dict) -> dict:
    """What ``dvc metrics diff`` shows of the gate: its verdict, the model judged and its and
    the baseline's accuracy on the test split. The promoted model's figure, the checks and
    reasons are in ``paths.gate_details``: they depend on what an earlier run promoted, so two
    runs of equal params in one workspace would differ."""
    figures = {"candidate_accuracy": result["candidate"]["accuracy"],
               "majority_baseline_accuracy": result["baseline"]["accuracy"]}
    return {"passed": result["passed"], "candidate": result["candidate"]["model"],
            JUDGED_SPLIT: figures}


def judged_figures(evaluation: Path) -> tuple[dict, dict]:
    """(candidate, majority baseline): their accuracy on the test split, and its image count."""
    results = json.loads(evaluation.read_text())
    chosen = read_candidate(evaluation)
    figures, baseline = results[chosen["model"]][JUDGED_SPLIT], results["majority_baseline"]
    where = {"split": JUDGED_SPLIT, "images": figures["count"]}
    return ({"model": chosen["model"], "chosen_because": chosen["reason"], **where,
             "accuracy": figures["accuracy"]},
            {"majority_class": baseline["class"], "chosen_on": baseline["chosen_on"], **where,
             "accuracy": baseline[JUDGED_SPLIT]["accuracy"]})


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
    """The promoted model's accuracy on this run's test split, else the recorded one.

    TensorFlow is imported here: a first promotion does without it (the import is ~4 s of a
    stage that otherwise takes well under one)."""
    from warmstart.data.records import image_dataset, labels_of
    from warmstart.inference.predict import read_labels
    from warmstart.modeling.model import load_model

    folder = params.path("promoted_model")
    manifest = Manifest.read(params.path("processed"))
    labels = read_labels(folder / CLASSES_FILE)
    model = load_model(folder / MODEL_FILE)
    recorded = previous["candidate"]
    base = {"recorded_accuracy": recorded["accuracy"], "promoted_at": previous.get("promoted_at"),
            "data_version": recorded.get("data_version")}
    if labels.classes != manifest.classes or model.input_shape[1] != manifest.image_size:
        split = recorded.get("split", "validation")  # promotions before the test split
        logger.warning("The promoted model has other classes or image size: comparing with "
                       "its accuracy recorded at promotion (%s split)", split)
        return {**base, "accuracy": recorded["accuracy"], "split": split,
                "images": recorded.get("images"), "measured": "recorded at its promotion, on "
                f"its own {split} split (other classes or image size than this run)"}
    batches = image_dataset(manifest, JUDGED_SPLIT, params.train.batch_size, cache=False)
    probabilities = class_probabilities(model.predict(batches, verbose=0))
    metrics = classification_metrics(labels_of(manifest, JUDGED_SPLIT), probabilities,
                                     manifest.classes, params.evaluate.threshold)
    return {**base, "accuracy": metrics["accuracy"], "split": JUDGED_SPLIT,
            "images": metrics["count"], "measured": "re-evaluated on this run's test split"}


def gate_checks(candidate: dict, baseline: dict, promoted: dict | None,
                gate: GateParams) -> list[dict]:
    """The checks that apply, in order: beats_baseline, min_accuracy, max_drop."""
    accuracy = candidate["accuracy"]
    checks = []
    if gate.min_gain_over_baseline is not None:
        bar = baseline["accuracy"] + gate.min_gain_over_baseline
        bound = (f"majority-class baseline {baseline['accuracy']:.6g} (always "
                 f"{baseline['majority_class']}) + gate.min_gain_over_baseline "
                 f"{gate.min_gain_over_baseline} = {bar:.6g}")
        checks.append(gate_check("beats_baseline", accuracy > bar + TOLERANCE, ">", bound,
                                 accuracy))
    if gate.min_accuracy is not None:
        checks.append(gate_check("min_accuracy", accuracy >= gate.min_accuracy - TOLERANCE,
                                 ">=", f"gate.min_accuracy {gate.min_accuracy}", accuracy))
    if promoted is not None:
        floor = promoted["accuracy"] - gate.max_drop
        bound = (f"promoted {promoted['accuracy']:.6g} ({promoted['measured']}) - "
                 f"gate.max_drop {gate.max_drop} = {floor:.6g}")
        checks.append(gate_check("max_drop", accuracy >= floor - TOLERANCE, ">=", bound,
                                 accuracy))
    return checks


def gate_check(name: str, passed: bool, relation: str, bound: str, accuracy: float) -> dict:
    """One check of ``gate.json``: its detail reads 'candidate test accuracy A >= bound'."""
    failed = {">": "<=", ">=": "<"}[relation]
    return {"check": name, "passed": passed,
            "detail": f"candidate test accuracy {accuracy:.6g} "
                      f"{relation if passed else failed} {bound}"}


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
    """``promotion.json``: the candidate's test figures (and all its evaluate figures, per
    split), the gate's decision, params, file hashes and the previous promotion."""
    evaluation = json.loads(params.path("evaluate_details").read_text())[
        result["candidate"]["model"]]
    files = {p.relative_to(folder).as_posix(): sha256_of(p)
             for p in sorted(folder.rglob("*")) if p.is_file()}
    earlier = None if previous is None else {
        "promoted_at": previous.get("promoted_at"),
        "accuracy": previous["candidate"]["accuracy"],
        "split": previous["candidate"].get("split", "validation"),
        "data_version": previous["candidate"].get("data_version"),
        "model_sha256": previous.get("files", {}).get(MODEL_FILE)}
    return {"promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "candidate": {**result["candidate"], "evaluate": evaluation},
            "gate": {k: result[k] for k in ("checks", "baseline", "promoted", "thresholds")},
            "params": as_dict(params), "files": files, "previous": earlier}


def failure_message(params: Params, result: dict) -> str:
    folder = params.path("promoted_model")
    promoted = result["promoted"]
    kept = (f"The promoted model in {folder} ({promoted['split']} accuracy "
            f"{promoted['accuracy']}) is unchanged." if promoted
            else f"Nothing was promoted to {folder}.")
    return ("Promotion gate failed:\n- " + "\n- ".join(result["reasons"]) + f"\n{kept} "
            f"Details: {params.path('gate_details')}. Improve the model, or change gate.* in "
            "params.yaml if the bound is wrong.")
