"""`warmstart predict` with a hand-made colour classifier whose right answers are known."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers.models import CLASSES, SIZE, colour_model, save_colour_model, write_colour_images
from warmstart.cli import main
from warmstart.data.decode import load_image
from warmstart.inference.predict import (
    PredictError,
    find_labels,
    load_predictor,
    predict,
    write_labels,
)
from warmstart.layout import CLASSES_FILE
from warmstart.stages.export import export_saved_model, write_tflite


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_colour_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_colour_images(tmp_path / "images")


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["predict", *args])
    return code, capsys.readouterr().out


def test_folder_with_a_corrupt_file_reports_it_and_predicts_the_rest(
        model_file: Path, images: Path, capsys: pytest.CaptureFixture) -> None:
    code, out = run_cli([str(model_file), str(images), "--format", "json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert len(report["predictions"]) == 6
    for pred in report["predictions"]:
        assert pred["prediction"] == Path(pred["path"]).parent.name
        assert pred["top_k"][0]["class"] == pred["prediction"]
        assert [t["probability"] for t in pred["top_k"]] == sorted(
            (t["probability"] for t in pred["top_k"]), reverse=True)
    (error,) = report["errors"]
    assert error["path"] == str(images / "broken.jpg")
    # The decoder's own message, without TF's "{{function_node ...}}" / "[Op:...]" wrapping.
    assert error["error"] == "Unknown image file format. One of JPEG, PNG, GIF, BMP required."


def test_images_over_the_pixel_limit_are_reported_not_decoded(
        model_file: Path, images: Path, capsys: pytest.CaptureFixture) -> None:
    # a.jpg images are ~50x41 (> 2000 pixels), b.png images 23x77 (1771 pixels)
    code, out = run_cli([str(model_file), str(images), "--format", "json",
                         "--max-pixels", "2000"], capsys)
    assert code == 0
    report = json.loads(out)
    assert {Path(p["path"]).name for p in report["predictions"]} == {"b.png"}
    refused = {Path(e["path"]).parent.name: e["error"] for e in report["errors"]
               if e["path"].endswith("a.jpg")}
    assert set(refused) == set(CLASSES)
    assert all("decompression bomb guard" in reason for reason in refused.values())


def test_nothing_predictable_is_an_error(model_file: Path, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture,
                                         capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "empty.png").write_bytes(b"")
    (tmp_path / "bad" / "junk.jpg").write_bytes(b"\xff\xd8 truncated")
    with caplog.at_level(logging.ERROR):
        code, out = run_cli([str(model_file), str(tmp_path / "bad")], capsys)
    assert code == 1 and out == ""
    assert "None of the 2 file(s)" in caplog.text and "junk.jpg" in caplog.text
    code, _ = run_cli([str(model_file), str(tmp_path / "missing")], capsys)
    assert code == 1


def test_predict_uses_the_training_decode_and_resize(model_file: Path, images: Path) -> None:
    """No train/serve skew: the probabilities are the model's on `load_image` of the file."""
    path = images / "cats" / "b.png"
    report = json.loads(predict(model_file, path, top_k=3, fmt="json"))
    (pred,) = report["predictions"]
    pixels = tf.cast(load_image(tf.constant(str(path)), SIZE), tf.float32)[None]
    expected = keras.models.load_model(model_file).predict_on_batch(pixels.numpy())[0]
    got = {t["class"]: t["probability"] for t in pred["top_k"]}
    np.testing.assert_allclose([got[name] for name in CLASSES], expected, atol=1e-6)


def test_table_and_csv_formats(model_file: Path, images: Path) -> None:
    table = predict(model_file, images, top_k=2, fmt="table", batch_size=4)
    assert str(images / "dogs" / "a.jpg") in table and "top-2" in table
    assert "1 file(s) could not be predicted" in table and "broken.jpg" in table
    rows = list(csv.DictReader(io.StringIO(predict(model_file, images, top_k=5, fmt="csv"))))
    assert len(rows) == 7
    assert "class_3" in rows[0] and "class_4" not in rows[0]  # top-k capped at 3 classes
    good = [r for r in rows if not r["error"]]
    assert all(r["prediction"] == r["class_1"] == Path(r["path"]).parent.name for r in good)
    assert [r["path"] for r in rows if r["error"]] == [str(images / "broken.jpg")]


def test_saved_model_and_tflite_predict_like_keras(model_file: Path, images: Path,
                                                   tmp_path: Path) -> None:
    model = keras.models.load_model(model_file)
    export_saved_model(model, tmp_path / "saved_model", SIZE)
    write_labels(tmp_path / "saved_model" / "assets.extra" / CLASSES_FILE, CLASSES, SIZE, 0.5)
    write_tflite(tmp_path / "saved_model", tmp_path / "model.tflite", quantize=False)
    write_labels(tmp_path / CLASSES_FILE, CLASSES, SIZE, 0.5)
    reference = json.loads(predict(model_file, images, fmt="json"))
    for exported in (tmp_path / "saved_model", tmp_path / "model.tflite"):
        report = json.loads(predict(exported, images, fmt="json"))
        assert report["errors"] == reference["errors"]
        for ours, theirs in zip(report["predictions"], reference["predictions"], strict=True):
            assert ours["prediction"] == theirs["prediction"]
            np.testing.assert_allclose([t["probability"] for t in ours["top_k"]],
                                       [t["probability"] for t in theirs["top_k"]], atol=1e-5)


def test_class_names_must_match_the_model(model_file: Path, images: Path,
                                          tmp_path: Path) -> None:
    wrong = tmp_path / "two.json"
    write_labels(wrong, ["cats", "dogs"], SIZE, 0.5)
    with pytest.raises(PredictError, match="not from the same training run"):
        predict(model_file, images, classes=wrong)


def test_class_names_from_a_manifest_or_an_explicit_error(tmp_path: Path) -> None:
    bare = tmp_path / "bare" / "model.keras"
    bare.parent.mkdir()
    colour_model().save(bare)
    with pytest.raises(PredictError, match="--classes"):
        find_labels(bare)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"classes": CLASSES, "image_size": SIZE, "splits": {}}))
    labels = find_labels(bare, fallback=manifest)
    assert labels.classes == CLASSES and labels.threshold == 0.5
    with pytest.raises(PredictError, match="No model at"):
        load_predictor(tmp_path)
