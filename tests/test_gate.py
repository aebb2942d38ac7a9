"""The promotion gate: first run, pass, fail on a worse model, previous promotion kept."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers.images import CLASS_COLOURS
from tests.helpers.models import colour_model
from tests.helpers.project import prepare_project, tiny_params
from warmstart.config.params import GateParams, Params, ParamsError, load_params
from warmstart.data.records import Manifest, image_dataset
from warmstart.hashing import sha256_of
from warmstart.layout import MODEL_FILE
from warmstart.modeling.training import record_predictions
from warmstart.stages.evaluate import run_evaluate
from warmstart.stages.export import run_export
from warmstart.stages.gate import GateFailed, run_gate
from warmstart.stages.model_card import run_model_card


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class project with raw and processed data, no models yet."""
    return prepare_project(tmp_path_factory.mktemp("gate"), classes=tuple(CLASS_COLOURS),
                           skip_validation=True, export={"int8": False}).root


@pytest.fixture
def params(prepared: Path, tmp_path: Path) -> Params:
    """A private copy of the prepared project, gate bounds as in the repo's params.yaml."""
    work = shutil.copytree(prepared, tmp_path / "work")
    loaded = load_params(work / "params.yaml")
    return dataclasses.replace(loaded, gate=GateParams(min_accuracy=0.9, max_drop=0.01))


def candidate(params: Params, scramble: bool = False) -> float:
    """Make the colour classifier (right, or wrong on every class) the run's candidate."""
    manifest = Manifest.read(params.path("processed"))
    images = image_dataset(manifest, params.data.validation_split, 64, cache=False)
    for stage in ("transfer", "finetune"):
        folder = params.path(f"{stage}_model")
        folder.mkdir(parents=True, exist_ok=True)
        model = colour_model(scramble=scramble)
        model.save(folder / MODEL_FILE)
        record_predictions(params.path(f"{stage}_predictions"), manifest,
                           params.data.validation_split, model.predict(images, verbose=0))
    results = run_evaluate(params)
    run_export(params)
    run_model_card(params)
    return results["finetune"]["accuracy"]


def gate_json(params: Params) -> dict:
    return json.loads(params.path("gate_metrics").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_of(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_first_run_passes_on_the_absolute_bound_and_promotes(params: Params) -> None:
    assert candidate(params) == 1.0
    result = run_gate(params)
    assert result["passed"] and result["promoted"] is None
    assert [c["check"] for c in result["checks"]] == ["min_accuracy"]
    assert gate_json(params) == json.loads(json.dumps(result))
    promoted = params.path("promoted_model")
    assert snapshot(params.path("export_model")).items() <= snapshot(promoted).items()
    assert (promoted / "model_card.md").read_text() == params.path("model_card").read_text()
    meta = json.loads((promoted / "promotion.json").read_text())
    assert meta["candidate"]["accuracy"] == 1.0 and meta["previous"] is None
    assert meta["candidate"]["data_version"]["files"] == 54
    assert meta["files"]["model.keras"] == sha256_of(params.path("finetune_model") / MODEL_FILE)


def test_first_run_below_the_bound_fails_and_promotes_nothing(params: Params) -> None:
    assert candidate(params, scramble=True) == 0.0
    with pytest.raises(GateFailed, match="min_accuracy 0.9") as failure:
        run_gate(params)
    assert "Nothing was promoted" in str(failure.value)
    assert not params.path("promoted_model").exists()
    assert gate_json(params)["passed"] is False
    assert gate_json(params)["reasons"] == ["candidate accuracy 0 < gate.min_accuracy 0.9"]


def test_worse_model_fails_and_keeps_the_previous_promotion(params: Params) -> None:
    candidate(params)
    run_gate(params)
    before = snapshot(params.path("promoted_model"))
    lenient = dataclasses.replace(params, gate=GateParams(min_accuracy=0.0, max_drop=0.5))
    candidate(lenient, scramble=True)  # passes min_accuracy 0, drops 1.0 > max_drop 0.5
    with pytest.raises(GateFailed, match="max_drop") as failure:
        run_gate(lenient)
    assert "(accuracy 1.0) is unchanged" in str(failure.value)
    assert snapshot(params.path("promoted_model")) == before
    result = gate_json(params)
    assert result["passed"] is False and result["candidate"]["accuracy"] == 0.0
    assert result["promoted"]["accuracy"] == 1.0
    assert result["promoted"]["measured"] == "re-evaluated on this run's validation split"
    assert [c["passed"] for c in result["checks"]] == [True, False]


def test_as_good_a_model_replaces_the_promotion_and_links_the_previous(params: Params) -> None:
    candidate(params)
    run_gate(params)
    first = json.loads((params.path("promoted_model") / "promotion.json").read_text())
    candidate(params)
    result = run_gate(params)
    assert result["passed"] and [c["check"] for c in result["checks"]] == ["min_accuracy",
                                                                           "max_drop"]
    second = json.loads((params.path("promoted_model") / "promotion.json").read_text())
    assert second["previous"]["promoted_at"] == first["promoted_at"]
    assert second["previous"]["accuracy"] == 1.0


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
    ({"max_drop": -0.1}, "gate.max_drop"),
])
def test_gate_params_are_checked(tmp_path: Path, dataset: Path, values: dict, key: str) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(dataset, gate=values)))
    with pytest.raises(ParamsError, match=key):
        load_params(tmp_path / "params.yaml")
