"""Security rules: models never run code from the file; only http(s) sources are fetched."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from warmstart.modeling.model import ModelError, load_model


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
