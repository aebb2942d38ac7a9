"""The Python API (warmstart/api.py): the CLI's functions, called from a notebook."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import warmstart
from tests.helpers.models import CLASSES, save_colour_model, write_colour_images
from warmstart.config.messages import ParamsError
from warmstart.data.records import Manifest
from warmstart.errors import WarmstartError
from warmstart.inference.predict import predict


def test_load_predict_gives_the_cli_answers_as_a_table(tmp_path: Path) -> None:
    model = save_colour_model(tmp_path / "model").parent
    images = write_colour_images(tmp_path / "images")
    classifier = warmstart.load(model)
    assert classifier.classes == CLASSES
    table = classifier.predict(images)
    cli = json.loads(predict(model, images, top_k=len(CLASSES), fmt="json"))
    assert list(table.columns) == ["path", "prediction", *CLASSES, "error"]
    done = table[table.error == ""]
    assert dict(zip(done.path, done.prediction, strict=True)) == {
        p["path"]: p["prediction"] for p in cli["predictions"]}
    assert all(Path(path).parent.name == label for path, label in zip(
        done.path, done.prediction, strict=True))
    (broken,) = table[table.error != ""].itertuples()
    assert broken.path.endswith("broken.jpg") and broken.prediction is None
    # A list of files works too, and pixels give the same probabilities.
    one = classifier.predict([images / "cats" / "a.jpg"])
    assert one.prediction.tolist() == ["cats"]


def test_params_with_overrides_validates_and_leaves_the_file(tiny_project) -> None:
    params = tiny_project(upto="ingest")
    file = params.root / "params.yaml"
    before = file.read_bytes()
    changed = warmstart.params_with({"transfer.epochs": 7, "train.seed": 3}, file)
    assert (changed.transfer.epochs, changed.train.seed) == (7, 3)
    assert file.read_bytes() == before
    with pytest.raises(WarmstartError, match="'transfer.epoch'.*no such key"):
        warmstart.params_with({"transfer.epoch": 7}, file)
    with pytest.raises(ParamsError, match="transfer.epochs"):
        warmstart.params_with({"transfer.epochs": -1}, file)


def test_run_calls_the_stage_function_with_the_overrides(tiny_project) -> None:
    params = tiny_project(upto="validate")
    warmstart.run("preprocess", {"preprocess.image_size": 40}, params.root / "params.yaml")
    assert Manifest.read(params.path("processed")).image_size == 40
    with pytest.raises(WarmstartError, match="No stage 'train'"):
        warmstart.run("train", params=params.root / "params.yaml")


def test_repro_is_dvc_exp_run_with_set_params(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, cwd, check: calls.append(
        (command, cwd)) or subprocess.CompletedProcess(command, 0))
    warmstart.repro(["evaluate"], {"finetune.learning_rate": 1e-5, "transfer.patience": None,
                                   "base.weights": "w.h5"}, tmp_path)
    assert calls == [(["dvc", "exp", "run", "-Sfinetune.learning_rate=1.0e-05",
                       "-Stransfer.patience=null", "-Sbase.weights=w.h5", "evaluate"], tmp_path)]
    monkeypatch.setattr(subprocess, "run", lambda command, cwd, check:
                        subprocess.CompletedProcess(command, 2))
    with pytest.raises(WarmstartError, match="exit status 2"):
        warmstart.repro(project=tmp_path)
