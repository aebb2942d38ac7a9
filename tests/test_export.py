"""Stages export and model_card on a tiny trained binary model; parity computed and asserted."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from tests.helpers.project import prepare_project, tiny_params
from tests.helpers.shared import REPO
from warmstart.atomic import write_json
from warmstart.cli import main
from warmstart.config.params import ExportParams, Params, ParamsError, load_params
from warmstart.data.decode import load_image
from warmstart.layout import MODEL_FILE
from warmstart.modeling.model import load_model
from warmstart.stages import export
from warmstart.stages.export import ExportParityError, parity_problems, run_export
from warmstart.stages.model_card import run_model_card
from warmstart.versions import data_version, tree_digest


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """A whole tiny binary run (sigmoid head) up to export and the model card.

    (Validation is left out: its own tests cover it, and it is slow with TFDV.)
    """
    return prepare_project(tmp_path_factory.mktemp("export"), upto="model_card",
                           skip_validation=True, export={"int8": True})


def export_metrics(params: Params) -> dict:
    """The export's full record (sizes, files, parity): ``paths.export_details``."""
    return json.loads(params.path("export_details").read_text())


def test_export_writes_every_artefact_with_its_size(exported: Params) -> None:
    folder = exported.path("export_model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "classes.json", "model.keras", "model_float32.tflite", "model_int8.tflite",
        "saved_model"]
    candidate = export_metrics(exported)["candidate"]
    assert candidate == json.loads(exported.path("evaluate_metrics").read_text())[
        "candidate"]["model"]
    assert (folder / "model.keras").read_bytes() == (
        exported.path(f"{candidate}_model") / MODEL_FILE).read_bytes()
    assert json.loads((folder / "classes.json").read_text()) == {
        "classes": ["cats", "dogs"], "image_size": 32, "threshold": 0.5}
    assert (folder / "saved_model" / "assets.extra" / "classes.json").is_file()
    artefacts = export_metrics(exported)["artefacts"]
    for name, file in (("keras", "model.keras"), ("tflite_float32", "model_float32.tflite"),
                       ("tflite_int8", "model_int8.tflite")):
        assert artefacts[name]["bytes"] == (folder / file).stat().st_size
    saved = sum(p.stat().st_size for p in (folder / "saved_model").rglob("*") if p.is_file())
    assert artefacts["saved_model"]["bytes"] == saved
    # Dynamic-range quantisation stores the weights as int8: about a quarter of float32.
    assert artefacts["tflite_int8"]["bytes"] < 0.5 * artefacts["tflite_float32"]["bytes"]


def test_parity_is_computed_and_within_bounds(exported: Params) -> None:
    results = export_metrics(exported)
    assert results["passed"] is True and results["problems"] == []
    assert results["validation_images"] == 12
    artefacts = results["artefacts"]
    assert set(artefacts) == {"keras", "saved_model", "saved_model_uint8", "tflite_float32",
                              "tflite_int8"}
    candidate = json.loads(exported.path("evaluate_metrics").read_text())["candidate"]["model"]
    assert results["reference"] == {"model": candidate,
                                    "file": getattr(exported.paths, f"{candidate}_predictions")}
    # serve on every validation and test image, TFLite on validation, the graph of serve under
    # its other names (model.keras, serve_uint8) on the first validation batch (8 images here)
    images = {"saved_model": {"validation": 12, "test": 12}, "tflite_float32": {"validation": 12},
              "tflite_int8": {"validation": 12}, "keras": {"validation": 8},
              "saved_model_uint8": {"validation": 8}}
    assert {name: entry["images"] for name, entry in artefacts.items()} == images
    for name in ("keras", "saved_model", "saved_model_uint8", "tflite_float32"):
        assert artefacts[name]["max_abs_diff"] <= exported.export.float32_tolerance, name
        assert artefacts[name]["top1_agreement"] == 1.0, name
    assert artefacts["tflite_int8"]["top1_agreement"] >= 0.995


def test_raw_image_endpoints_resize_like_training(exported: Params) -> None:
    """serve_uint8 / serve_encoded take images of any size and match Keras on load_image."""
    model = load_model(exported.path("export_model") / MODEL_FILE)
    loaded = tf.saved_model.load(str(exported.path("export_model") / "saved_model"))
    for path in sorted((exported.path("raw") / "validation").glob("*/*.jpg"))[::4]:
        expected = model.predict_on_batch(
            tf.cast(load_image(tf.constant(str(path)), 32), tf.float32)[None].numpy())
        raw = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3)
        assert raw.shape[0] != 32  # really resized inside
        np.testing.assert_allclose(loaded.serve_uint8(raw[None]).numpy(), expected, atol=1e-6)
        encoded = tf.io.read_file(str(path))[None]
        np.testing.assert_allclose(loaded.serve_encoded(encoded).numpy(), expected, atol=1e-6)


def test_parity_violation_fails_and_keeps_the_previous_export(
        exported: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = exported.path("export_model")
    before = sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))
    good = export_metrics(exported)
    monkeypatch.setattr(export, "compare", lambda reference, candidate, threshold: {
        "top1_agreement": 0.5, "disagreements": 6, "max_abs_diff": 0.4})
    try:
        with pytest.raises(ExportParityError) as failure:
            run_export(exported)
        message = str(failure.value)
        assert "tflite_int8: top-1 agreement 0.5000 < export.int8_min_agreement" in message
        assert "tflite_float32: max |probability difference| 0.4" in message
        assert sorted((p.relative_to(folder), p.stat().st_mtime_ns)
                      for p in folder.rglob("*")) == before
        assert export_metrics(exported)["passed"] is False
    finally:
        write_json(exported.path("export_details"), good)


def test_saved_model_must_reproduce_the_recorded_predictions(exported: Params) -> None:
    """evaluate scores the candidate stage's recorded predictions: every artefact is checked
    against them, on the validation and the test split."""
    results = export_metrics(exported)
    assert results["artefacts"]["saved_model"]["max_abs_diff"] <= 1e-5
    candidate = results["reference"]["model"]
    recorded = exported.path(f"{candidate}_predictions")
    good = recorded.read_text()
    frame = pd.read_csv(recorded)
    shifted = frame["split"] == "test"  # only the test split: the SavedModel checks it too
    frame.loc[shifted, "prob_dogs"] = (frame.loc[shifted, "prob_dogs"] + 0.01).clip(upper=1.0)
    frame["prob_cats"] = 1.0 - frame["prob_dogs"]
    frame.to_csv(recorded, index=False)
    try:
        with pytest.raises(ExportParityError) as failure:
            run_export(exported)
        message = str(failure.value)
        assert f"the {candidate} stage recorded in {recorded.relative_to(exported.root)}" \
            in message
        assert "- saved_model: max |probability difference| 0.01" in message
        assert "tflite_float32" not in message  # validation only: the unshifted split
    finally:
        recorded.write_text(good)
        write_json(exported.path("export_details"), results)


def test_parity_problems_name_each_artefact_and_bound() -> None:
    limits = ExportParams(int8=False, float32_tolerance=1e-4, int8_min_agreement=0.995)
    results = {"artefacts": {
        "keras": {"bytes": 1},
        "saved_model": {"top1_agreement": 1.0, "max_abs_diff": 2e-4},
        "tflite_float32": {"top1_agreement": 1.0, "max_abs_diff": 1e-4},
        "tflite_int8": {"top1_agreement": 0.99, "max_abs_diff": 0.3}}}
    assert parity_problems(results, limits) == [
        "saved_model: max |probability difference| 0.0002 > export.float32_tolerance 0.0001",
        "tflite_int8: top-1 agreement 0.9900 < export.int8_min_agreement 0.995"]


def test_predict_command_on_the_export_folder(exported: Params,
                                              capsys: pytest.CaptureFixture) -> None:
    images = exported.path("raw") / "validation"
    for model in ("", "model_int8.tflite"):
        code = main(["predict", str(exported.path("export_model") / model), str(images),
                     "--format", "json", "--top-k", "1"])
        report = json.loads(capsys.readouterr().out)
        assert code == 0 and report["errors"] == [] and len(report["predictions"]) == 12
        assert {p["prediction"] for p in report["predictions"]} <= {"cats", "dogs"}
        assert all(len(p["top_k"]) == 1 for p in report["predictions"])


def test_model_card_states_version_params_metrics_and_sizes(exported: Params) -> None:
    card = exported.path("model_card").read_text()
    digest = tree_digest(exported.path("raw"))["sha256"]
    assert f"`{digest}` (sha256, computed" in card and "48 files" in card
    assert "Classes (2): cats, dogs" in card
    assert "| split | cats | dogs | images |" in card  # split sizes per class
    assert "| train | 12 | 12 | 24 |\n| validation | 6 | 6 | 12 |\n| test | 6 | 6 | 12 |" in card
    evaluation = json.loads(exported.path("evaluate_details").read_text())
    baseline = evaluation["majority_baseline"]
    for split in ("test", "validation"):  # per split, naming it, beside the baseline
        assert f"**{split.capitalize()} split** (12 images;" in card
        accuracy = (f"| accuracy | {evaluation['transfer'][split]['accuracy']:.4g} | "
                    f"{evaluation['finetune'][split]['accuracy']:.4g} | "
                    f"{baseline[split]['accuracy']:.4g} |")
        assert accuracy in card
        assert f"| metric ({split}) | transfer | finetune | majority baseline (always cats) |" \
            in card
    assert card.index("**Test split**") < card.index("**Validation split**")
    assert "| precision (binary: dogs) |" in card and "| balanced_accuracy |" in card
    candidate = export_metrics(exported)["candidate"]
    assert f"**This model is the {candidate} model**: the better of the two on the validation " \
        "split" in card
    assert f"Per class, {candidate} model, test split:" in card
    sizes = export_metrics(exported)["artefacts"]
    assert f"| tflite_int8 | {sizes['tflite_int8']['bytes']} | validation 12 |" in card
    assert f"| saved_model | {sizes['saved_model']['bytes']} | validation 12, test 12 |" in card
    assert f"Parity with the predictions the {candidate} stage recorded in `predictions/" in card
    assert "fine_tune_at: 100" in card and "min_accuracy: null" in card
    assert "uv run --frozen dvc repro" in card
    assert "Validation findings: no validation report found" in card
    run_model_card(exported)
    assert exported.path("model_card").read_text() == card  # deterministic


def test_data_version_comes_from_dvc_lock_when_present(exported: Params,
                                                       tmp_path: Path) -> None:
    lock = {"schema": "2.0", "stages": {"ingest": {"outs": [
        {"path": "data/raw", "hash": "md5", "md5": "0123abcd.dir", "size": 99, "nfiles": 3}]}}}
    shutil.copy(exported.root / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    params = load_params(tmp_path / "params.yaml")
    version = data_version(params.root, params.paths.raw)
    assert version == {"source": "dvc.lock", "md5": "0123abcd.dir", "files": 3, "bytes": 99}


@pytest.mark.parametrize(("values", "key"), [
    ({"float32_tolerance": 0.0}, "export.float32_tolerance"),
    ({"int8_min_agreement": 1.5}, "export.int8_min_agreement"),
    ({"int8": "yes"}, "export.int8"),
])
def test_export_params_are_checked(tmp_path: Path, dataset: Path, values: dict,
                                   key: str) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(dataset, export=values)))
    with pytest.raises(ParamsError, match=key):
        load_params(tmp_path / "params.yaml")


def test_equal_exports_write_equal_bytes(exported: Params) -> None:
    """Regression: Keras ordered the SavedModel's variables by object id and a load drew a new
    Dropout seed state, so two exports of one model (in two processes, as two `dvc repro`s)
    wrote different variables and saved_model.pb files, and DVC saw a new export every run."""
    folder = exported.path("export_model")
    params_file = exported.root / "params.yaml"
    digests = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "warmstart", "--params", str(params_file),
                               "export"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        digests.append({p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).digest()
                        for p in sorted(folder.rglob("*")) if p.is_file()})
    assert "saved_model/variables/variables.data-00000-of-00001" in digests[0]
    assert digests[0] == digests[1]
