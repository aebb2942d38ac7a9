"""params.yaml loading: defaults, typing, and a named, actionable error for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_params
from warmstart.config.params import ParamsError, load_params, params_from_dict
from warmstart.modeling.backbones import BACKBONES

MOBILENET_V2_LAYERS = BACKBONES["MobileNetV2"].layers


def load(tmp_path: Path, params: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return load_params(path)


def test_repo_defaults_keep_the_tutorial_model_and_choose_its_schedule_on_validation() -> None:
    """The tutorial's model, size and cut; its fixed head schedule (1e-4, 50 epochs) is one of
    the candidates the learning-rate search tries, within the epoch budget."""
    params = load_params(REPO / "params.yaml")
    assert params.base.architecture == "MobileNetV2"
    assert params.base.alpha == 1.0 and params.base.weights == "imagenet"
    assert params.preprocess.image_size == 128 and params.train.batch_size == 128
    assert params.transfer.learning_rate == "auto" and 1e-4 in params.transfer.learning_rates
    assert params.transfer.epochs >= 50 and params.finetune.fine_tune_at == 72
    assert params.finetune.learning_rate <= min(params.transfer.learning_rates)
    assert params.path("raw") == REPO / "data" / "raw"


def test_dvc_yaml_uses_every_path_key() -> None:
    """Except the download cache, the training backups and the per-image store, which are
    deliberately untracked."""
    dvc_yaml = (REPO / "dvc.yaml").read_text()
    unused = [key for key in yaml.safe_load((REPO / "params.yaml").read_text())["paths"]
              if f"${{paths.{key}}}" not in dvc_yaml
              and key not in ("downloads", "checkpoints", "store")]
    assert unused == []


def test_ints_are_accepted_for_floats(tmp_path: Path, dataset: Path) -> None:
    params = load(tmp_path, tiny_params(dataset, transfer={"learning_rate": 1}))
    assert params.transfer.learning_rate == 1.0
    assert isinstance(params.transfer.learning_rate, float)


@pytest.mark.parametrize(("override", "key", "hint"), [
    ({"transfer": {"epochs": -1}}, "transfer.epochs", "> 0"),
    ({"transfer": {"epochs": 2.5}}, "transfer.epochs", "must be int"),
    ({"transfer": {"learning_rate": "fast"}}, "transfer.learning_rate", "0.0001"),
    ({"finetune": {"epochs": -3}}, "finetune.epochs", "0 or more"),
    ({"finetune": {"fine_tune_at": MOBILENET_V2_LAYERS}}, "finetune.fine_tune_at", "153"),
    ({"finetune": {"fine_tune_at": -1}}, "finetune.fine_tune_at", "layers"),
    ({"train": {"batch_size": 0}}, "train.batch_size", "> 0"),
    ({"head": {"dropout": 1.0}}, "head.dropout", "[0, 1)"),
    ({"preprocess": {"image_size": 16}}, "preprocess.image_size", "32"),
    ({"data": {"sha256": "abc"}}, "data.sha256", "64 hex"),
    ({"data": {"validation_split": "train"}}, "data.validation_split", "different"),
    ({"paths": {"raw": "/tmp/raw"}}, "paths.raw", "relative"),
    ({"paths": {"raw": "../raw"}}, "paths.raw", "relative"),
    ({"evaluate": {"threshold": 1.5}}, "evaluate.threshold", "(0, 1)"),
])
def test_bad_values_name_the_key_and_the_fix(tmp_path: Path, dataset: Path, override: dict,
                                             key: str, hint: str) -> None:
    with pytest.raises(ParamsError) as caught:
        load(tmp_path, tiny_params(dataset, **override))
    assert caught.value.key == key
    assert key in str(caught.value) and hint in str(caught.value)


@pytest.mark.parametrize("text", ["1e-05", "1E-5", "1.0e-5", "0.00001", "+1e-5"])
def test_exponent_floats_are_floats_as_dvc_writes_them(tmp_path: Path, dataset: Path,
                                                       text: str) -> None:
    """Regression: `dvc exp run -S finetune.learning_rate=0.00001` writes `1e-05`, which plain
    PyYAML (YAML 1.1) reads as the string '1e-05'."""
    content = yaml.safe_dump(tiny_params(dataset)).replace(
        "learning_rate: 0.001", f"learning_rate: {text}")
    assert f"learning_rate: {text}" in content
    (tmp_path / "params.yaml").write_text(content)
    assert load_params(tmp_path / "params.yaml").finetune.learning_rate == pytest.approx(1e-5)


def test_unknown_key_is_rejected(tmp_path: Path, dataset: Path) -> None:
    raw = tiny_params(dataset)
    raw["transfer"]["epoch"] = 3
    with pytest.raises(ParamsError, match=r"`transfer.epoch` is not a known key.*epochs"):
        load(tmp_path, raw)


def test_unknown_section_is_rejected(tmp_path: Path, dataset: Path) -> None:
    raw = tiny_params(dataset)
    raw["trainning"] = {}
    with pytest.raises(ParamsError, match="`trainning` is not a known key"):
        load(tmp_path, raw)


def test_missing_weights_file_is_an_error_not_random_init(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ParamsError, match=r"`base.weights` points to .*missing.h5.*not a file"):
        load(tmp_path, tiny_params(dataset, base={"weights": "missing.h5"}))


def test_missing_source_fails(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"`data.source` points to .*nowhere.*does not exist"):
        load(tmp_path, tiny_params(tmp_path / "nowhere"))


@pytest.mark.parametrize("source", ["ftp://example.org/data.zip", "file:///etc/passwd"])
def test_unsupported_url_scheme_fails(tmp_path: Path, source: str) -> None:
    with pytest.raises(ParamsError, match="unsupported scheme"):
        load(tmp_path, tiny_params(source))


def test_credentials_in_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="`data.source` contains a password"):
        load(tmp_path, tiny_params("https://user:secret@example.org/data.zip"))


def test_source_file_must_be_a_zip(tmp_path: Path) -> None:
    tarball = tmp_path / "data.tar.gz"
    tarball.write_bytes(b"x")
    with pytest.raises(ParamsError, match="not a .zip"):
        load(tmp_path, tiny_params(tarball))


def test_imagenet_keyword_needs_a_published_variant(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ParamsError, match="preprocess.image_size.*no imagenet weights"):
        load(tmp_path, tiny_params(dataset, base={"weights": "imagenet", "alpha": 1.0}))


def test_url_source_is_accepted_without_network(tmp_path: Path) -> None:
    params = params_from_dict(tiny_params("https://example.org/data.zip"), root=tmp_path)
    assert params.data.source.startswith("https://")


@pytest.mark.parametrize("alpha", [0.35, 1.0])
def test_mobilenet_v2_layer_count_does_not_depend_on_alpha(alpha: float) -> None:
    import keras

    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                          alpha=alpha, weights=None)
    assert len(base.layers) == MOBILENET_V2_LAYERS
