"""Stage `validate`: TFDV statistics + schema; readable failures that name the files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLASS_COLOURS, make_dataset, write_image
from warmstart.params import load_params
from warmstart.stages.ingest import run_ingest
from warmstart.stages.validate import (
    ValidationFailed,
    propose_schema,
    read_validated,
    run_validate,
    schema_diff,
    write_schema,
)


def ingest(work: Path):
    params = load_params(work / "params.yaml")
    run_ingest(params)
    return params


def test_clean_dataset_passes(workspace: Callable[..., Path], dataset: Path) -> None:
    params = ingest(workspace(dataset))
    run_validate(params)
    table, classes = read_validated(params.path("validated"))
    assert classes == ["cats", "dogs"]
    assert len(table) == 36 and set(table["decodable"]) == {1}
    assert set(table["format"]) == {"jpeg"}
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    assert report["ok"] is True
    assert (params.path("validation_report") / "stats_train.pb").stat().st_size > 0


def test_undecodable_file_fails_naming_it(workspace: Callable[..., Path], dataset: Path) -> None:
    (dataset / "train" / "cats" / "broken.jpg").write_bytes(b"this is not a jpeg")
    truncated = dataset / "validation" / "dogs" / "truncated.jpg"
    good = (dataset / "validation" / "dogs" / "dogs.0.jpg").read_bytes()
    truncated.write_bytes(good[: len(good) // 3])
    params = ingest(workspace(dataset))
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    message = str(caught.value)
    assert "train/cats/broken.jpg" in message and "not a readable image" in message
    assert "validation/dogs/truncated.jpg" in message
    assert "[train] decodable" in message  # the TFDV anomaly itself
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    assert report["ok"] is False and "decodable" in report["tfdv_anomalies"]["train"]
    assert not params.path("validated").exists()  # nothing for preprocess to consume


def test_unknown_class_fails_naming_it(workspace: Callable[..., Path], dataset: Path) -> None:
    write_image(dataset / "validation" / "horses" / "h.jpg", (90, 90, 90), (48, 48), seed=9)
    params = ingest(workspace(dataset))
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    message = str(caught.value)
    assert "unknown class" in message and "validation/horses/h.jpg" in message
    assert "[validation] label" in message  # outside the schema's label domain


def test_file_outside_class_folder_and_missing_class(workspace: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src")
    write_image(source / "train" / "loose.jpg", (1, 2, 3), (40, 40), seed=1)
    for path in (source / "validation" / "dogs").iterdir():
        path.unlink()
    params = ingest(workspace(source))
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    assert "train/loose.jpg" in str(caught.value)
    assert "class 'dogs' has no images in 'validation'" in str(caught.value)


def test_missing_schema_says_how_to_make_one(workspace: Callable[..., Path],
                                             dataset: Path) -> None:
    params = ingest(workspace(dataset, schema=None))
    with pytest.raises(ValidationFailed, match="warmstart schema --write"):
        run_validate(params)


def test_schema_proposal_for_three_classes(workspace: Callable[..., Path],
                                           tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", classes=tuple(CLASS_COLOURS))
    params = ingest(workspace(source, schema=None))
    proposal = propose_schema(params)
    assert "+  value: \"birds\"" in schema_diff(params.path("schema"), proposal)
    write_schema(params.path("schema"), proposal)
    assert schema_diff(params.path("schema"), proposal) == ""
    run_validate(params)
    assert read_validated(params.path("validated"))[1] == ["birds", "cats", "dogs"]
