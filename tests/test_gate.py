"""The promotion gate on the test split: the majority-class baseline, the optional absolute bar,
the promoted model re-measured on the same test images, previous promotion kept."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.images import CLASS_COLOURS
from tests.helpers.models import colour_model
from tests.helpers.project import prepare_project, tiny_params
from tests.helpers.shared import REPO
from warmstart.config.params import GateParams, Params, ParamsError, load_params
from warmstart.data.records import Manifest, image_dataset
from warmstart.hashing import sha256_of
from warmstart.layout import MODEL_FILE, TEST, VALIDATION
from warmstart.modeling.training import record_predictions
from warmstart.stages.evaluate import run_evaluate
from warmstart.stages.export import run_export
from warmstart.stages.gate import GateFailed, run_gate
from warmstart.stages.model_card import run_model_card


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class project with raw and processed data and the features cache (evaluate's label
    issues read it), no models yet."""
    return prepare_project(tmp_path_factory.mktemp("gate"), classes=tuple(CLASS_COLOURS),
                           skip_validation=True, upto="features", export={"int8": False}).root


@pytest.fixture
def params(prepared: Path, tmp_path: Path) -> Params:
    """A private copy of the prepared project, gate bounds as in the repo's params.yaml."""
    work = shutil.copytree(prepared, tmp_path / "work")
    loaded = load_params(work / "params.yaml")
    repo = yaml.safe_load((REPO / "params.yaml").read_text())["gate"]
    assert repo == {"min_gain_over_baseline": 0.0, "min_accuracy": None, "max_drop": 0.01}
    return with_gate(loaded, **repo)


def with_gate(params: Params, **bounds: float | None) -> Params:
    return dataclasses.replace(params, gate=GateParams(**{**dataclasses.asdict(params.gate),
                                                          **bounds}))


def candidate(params: Params, model: str = "right") -> float:
    """Make the colour classifier the run's candidate (right, ``scrambled``: wrong on every
    class, or ``constant``: always the first class); its test accuracy."""
    manifest = Manifest.read(params.path("processed"))
    for stage in ("transfer", "finetune"):
        folder = params.path(f"{stage}_model")
        folder.mkdir(parents=True, exist_ok=True)
        classifier = colour_model(scramble=model == "scrambled")
        if model == "constant":  # equal outputs: argmax is the first class, birds
            classifier.get_layer("head_dense").set_weights([np.zeros((3, 3), np.float32),
                                                            np.zeros(3, np.float32)])
        classifier.save(folder / MODEL_FILE)
        outputs = {split: classifier.predict(image_dataset(manifest, split, 64, cache=False),
                                             verbose=0) for split in (VALIDATION, TEST)}
        record_predictions(params.path(f"{stage}_predictions"), manifest, outputs)
    results = run_evaluate(params)
    run_export(params)
    run_model_card(params)
    assert results["candidate"]["model"] == "transfer"  # equal models: the tie goes to transfer
    return results["transfer"][TEST]["accuracy"]


def gate_json(params: Params) -> dict:
    """The gate's full decision record: ``paths.gate_details``."""
    return json.loads(params.path("gate_details").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_of(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_first_run_passes_on_the_baseline_and_promotes(params: Params) -> None:
    assert candidate(params) == 1.0
    result = run_gate(params)
    assert result["passed"] and result["promoted"] is None
    assert [c["check"] for c in result["checks"]] == ["beats_baseline"]
    assert result["checks"][0]["detail"] == (
        "candidate test accuracy 1 > majority-class baseline 0.333333 (always birds) + "
        "gate.min_gain_over_baseline 0.0 = 0.333333")
    assert result["split"] == "test"
    assert {k: result["candidate"][k] for k in ("model", "split", "images", "accuracy")} == {
        "model": "transfer", "split": "test", "images": 18, "accuracy": 1.0}
    assert result["baseline"] == {"majority_class": "birds", "chosen_on": "train",
                                  "split": "test", "images": 18, "accuracy": 0.333333}
    assert result["thresholds"] == {"min_gain_over_baseline": 0.0, "min_accuracy": None,
                                    "max_drop": 0.01}
    assert gate_json(params) == json.loads(json.dumps(result))
    # metrics/gate.json: the verdict and the compared test figures, nothing run-dependent
    assert json.loads(params.path("gate_metrics").read_text()) == {
        "passed": True, "candidate": "transfer",
        "test": {"candidate_accuracy": 1.0, "majority_baseline_accuracy": 0.333333}}
    promoted = params.path("promoted_model")
    assert snapshot(params.path("export_model")).items() <= snapshot(promoted).items()
    assert (promoted / "model_card.md").read_text() == params.path("model_card").read_text()
    meta = json.loads((promoted / "promotion.json").read_text())
    assert meta["candidate"]["accuracy"] == 1.0 and meta["previous"] is None
    assert meta["candidate"]["split"] == "test"
    assert set(meta["candidate"]["evaluate"]) == {"validation", "test"}
    assert meta["candidate"]["data_version"]["files"] == 72
    assert meta["files"]["model.keras"] == sha256_of(params.path("transfer_model") / MODEL_FILE)


def test_first_run_below_the_baseline_fails_and_promotes_nothing(params: Params) -> None:
    assert candidate(params, "scrambled") == 0.0
    with pytest.raises(GateFailed, match="majority-class baseline") as failure:
        run_gate(params)
    assert "Nothing was promoted" in str(failure.value)
    assert not params.path("promoted_model").exists()
    assert gate_json(params)["passed"] is False
    assert gate_json(params)["reasons"] == [
        "candidate test accuracy 0 <= majority-class baseline 0.333333 (always birds) + "
        "gate.min_gain_over_baseline 0.0 = 0.333333"]


def test_as_good_as_the_baseline_is_not_enough(params: Params) -> None:
    """The default asks for strictly better than always answering the majority class."""
    assert candidate(params, "constant") == pytest.approx(1 / 3, abs=1e-6)
    with pytest.raises(GateFailed, match="0.333333 <= majority-class baseline 0.333333"):
        run_gate(params)


def test_min_accuracy_applies_only_when_set(params: Params) -> None:
    assert candidate(params, "constant") == pytest.approx(1 / 3, abs=1e-6)
    lenient = with_gate(params, min_gain_over_baseline=None)
    assert [c["check"] for c in run_gate(lenient)["checks"]] == []
    shutil.rmtree(params.path("promoted_model"))
    strict = with_gate(params, min_gain_over_baseline=None, min_accuracy=0.9)
    with pytest.raises(GateFailed, match=r"test accuracy 0.333333 < gate.min_accuracy 0.9"):
        run_gate(strict)
    assert [c["check"] for c in gate_json(params)["checks"]] == ["min_accuracy"]


def test_worse_model_fails_and_keeps_the_previous_promotion(params: Params) -> None:
    candidate(params)
    run_gate(params)
    before = snapshot(params.path("promoted_model"))
    lenient = with_gate(params, min_gain_over_baseline=None, max_drop=0.5)
    candidate(lenient, "scrambled")  # no baseline check, drops 1.0 > max_drop 0.5
    with pytest.raises(GateFailed, match="max_drop") as failure:
        run_gate(lenient)
    assert "(test accuracy 1.0) is unchanged" in str(failure.value)
    assert snapshot(params.path("promoted_model")) == before
    result = gate_json(params)
    assert result["passed"] is False and result["candidate"]["accuracy"] == 0.0
    assert result["promoted"]["accuracy"] == 1.0
    assert result["promoted"]["measured"] == "re-evaluated on this run's test split"
    assert (result["promoted"]["split"], result["promoted"]["images"]) == ("test", 18)
    assert [(c["check"], c["passed"]) for c in result["checks"]] == [("max_drop", False)]


def test_as_good_a_model_replaces_the_promotion_and_links_the_previous(params: Params) -> None:
    candidate(params)
    run_gate(params)
    first = json.loads((params.path("promoted_model") / "promotion.json").read_text())
    candidate(params)
    result = run_gate(params)
    assert result["passed"] and [c["check"] for c in result["checks"]] == ["beats_baseline",
                                                                           "max_drop"]
    second = json.loads((params.path("promoted_model") / "promotion.json").read_text())
    assert second["previous"]["promoted_at"] == first["promoted_at"]
    assert second["previous"]["accuracy"] == 1.0 and second["previous"]["split"] == "test"


def test_a_foreign_promoted_folder_is_not_overwritten(params: Params) -> None:
    candidate(params)
    folder = params.path("promoted_model")
    folder.mkdir(parents=True)
    (folder / "model.keras").write_text("someone else's")
    with pytest.raises(GateFailed, match="not written by the gate"):
        run_gate(params)
    assert (folder / "model.keras").read_text() == "someone else's"


@pytest.mark.parametrize(("values", "key"), [
    ({"min_accuracy": 1.5}, "gate.min_accuracy"),
    ({"min_gain_over_baseline": -0.1}, "gate.min_gain_over_baseline"),
    ({"max_drop": -0.1}, "gate.max_drop"),
])
def test_gate_params_are_checked(tmp_path: Path, dataset: Path, values: dict, key: str) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(dataset, gate=values)))
    with pytest.raises(ParamsError, match=key):
        load_params(tmp_path / "params.yaml")


def test_a_gate_without_any_check_says_so(params: Params,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Both bounds null and nothing promoted yet: the candidate passes, and the log says it
    was promoted unconditionally (no silent pass)."""
    candidate(params, "constant")
    with caplog.at_level(logging.WARNING):
        run_gate(with_gate(params, min_gain_over_baseline=None))
    assert "No gate check applies" in caplog.text and "unconditionally" in caplog.text
