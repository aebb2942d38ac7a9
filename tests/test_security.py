"""Security rules: models never run code from the file; only http(s) sources are fetched; ingest
never reads outside the source (CSV paths and labels, symlinks) nor decodes a bomb."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers.project import write_params
from tests.helpers.sources import make_class_folders, write_csv
from warmstart.modeling.model import ModelError, load_model
from warmstart.stages.ingest import IngestError, run_ingest


def test_model_with_lambda_layer_is_refused(tmp_path: Path) -> None:
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelError, match=r"Refusing to load .*evil.keras.*(safe_mode|Lambda)"):
        load_model(path)


def test_plain_model_loads(tmp_path: Path) -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path / "ok.keras"
    model.save(path)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(load_model(path).predict(x, verbose=0), model.predict(x, verbose=0))


def test_missing_model_says_which_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="No model at .*dvc repro"):
        load_model(tmp_path / "absent.keras")


def test_saved_models_are_byte_reproducible(tmp_path: Path) -> None:
    """Regression: Keras stamps the save time into .keras files, so equal models differed."""
    import time

    from warmstart.modeling.model import save_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    save_model(model, tmp_path / "a.keras")
    time.sleep(2.1)  # zip timestamps have a 2-second resolution
    save_model(model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(load_model(tmp_path / "b.keras").predict(x, verbose=0),
                               model.predict(x, verbose=0))


@pytest.mark.parametrize(("path", "label", "expected"), [
    ("../outside.jpg", "a", "not inside the CSV's folder"),
    ("/etc/hostname", "a", "not inside the CSV's folder"),
    ("a/a.0.jpg", "../../escape", "cannot be a class folder name"),
    ("a/a.0.jpg", "x/y", "cannot be a class folder name"),
    ("a/a.0.jpg", ".hidden", "cannot be a class folder name"),
])
def test_csv_rows_cannot_reach_outside_the_source_or_raw(tmp_path: Path, path: str, label: str,
                                                         expected: str) -> None:
    make_class_folders(tmp_path / "outside_src", {"x": 1})
    (tmp_path / "outside.jpg").write_bytes((tmp_path / "outside_src/x/x.0.jpg").read_bytes())
    source = make_class_folders(tmp_path / "src", {"a": 2})
    write_csv(source / "labels.csv", [(path, label)], header=("path", "label"))
    with pytest.raises(IngestError, match=expected):
        run_ingest(write_params(tmp_path / "work", source, data={"layout": "csv"}))
    assert not (tmp_path / "work" / "data" / "raw").exists()
    assert not list(tmp_path.rglob("escape"))


def test_csv_path_through_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "elsewhere", {"a": 1})
    source = tmp_path / "src"
    source.mkdir()
    os.symlink(tmp_path / "elsewhere" / "a", source / "linked")
    write_csv(source / "labels.csv", [("linked/a.0.jpg", "a")], header=("path", "label"))
    with pytest.raises(IngestError, match="goes through a symlink"):
        run_ingest(write_params(tmp_path / "work", source, data={"layout": "csv"}))


def test_symlinked_class_folder_is_refused(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "elsewhere", {"secrets": 2})
    source = make_class_folders(tmp_path / "src", {"a": 3})
    os.symlink(tmp_path / "elsewhere" / "secrets", source / "secrets")
    with pytest.raises(IngestError, match=f"{source}: secrets is a symlink"):
        run_ingest(write_params(tmp_path / "work", source))


def test_ingest_never_decodes_an_image_over_the_pixel_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest decodes images only for their pHash: not one whose header claims too many pixels
    (validate reports it), and it still ingests the file."""
    from PIL import ImageFile

    source = make_class_folders(tmp_path / "src", {"a": 5})
    params = write_params(tmp_path / "work", source, validate={"max_image_pixels": 1600})
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self.size) or load(self))
    raw = run_ingest(params)
    assert sorted(set(decoded)) == [(40, 36), (41, 37), (42, 38)]  # 43 x 39 = 1677 px: over
    assert len(list(raw.rglob("*.jpg"))) == 5
