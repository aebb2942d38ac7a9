"""Drift: a new dataset version is compared with the previous version's statistics (baseline)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.images import CLASS_COLOURS, write_image
from warmstart.config.params import Params, load_params
from warmstart.stages.ingest import run_ingest
from warmstart.stages.validate import run_validate
from warmstart.validation.findings import ValidationFailed


def version(root: Path, per_class: dict[str, dict[str, int]], size: int) -> Path:
    """A dataset version: ``per_class[split][label]`` images of about ``size`` pixels."""
    shutil.rmtree(root, ignore_errors=True)
    seed = 0
    for split, counts in per_class.items():
        for label, count in counts.items():
            for index in range(count):
                seed += 1
                write_image(root / split / label / f"{index}.jpg", CLASS_COLOURS[label],
                            (size + seed % 7, size + seed % 5), seed)
    return root


BALANCED = {"train": {"cats": 12, "dogs": 12}, "validation": {"cats": 6, "dogs": 6}}
SHIFTED = {"train": {"cats": 12, "dogs": 6}, "validation": {"cats": 6, "dogs": 3}}


@pytest.fixture
def first_version(workspace: Callable[..., Path], tmp_path: Path) -> Params:
    """Version 1 validated: its statistics are now the baseline."""
    source = version(tmp_path / "source", BALANCED, 48)
    params = load_params(workspace(source, validate={"max_class_ratio": 3.0}) / "params.yaml")
    run_ingest(params)
    run_validate(params)
    assert (params.path("validation_baseline") / "stats_train.pb").is_file()
    return params


def drift(params: Params) -> dict:
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    return report["drift_skew"]["train"]


def revalidate(params: Params, per_class: dict, size: int) -> str:
    version(Path(params.data.source), per_class, size)
    run_ingest(params)
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    return str(caught.value)


def test_unchanged_version_has_no_drift(first_version: Params) -> None:
    run_ingest(first_version)
    run_validate(first_version)
    measured = drift(first_version)
    assert measured["label"]["drift"]["value"] == 0.0
    assert measured["width"]["drift"]["value"] == 0.0


def test_shifted_class_balance_drifts(first_version: Params) -> None:
    message = revalidate(first_version, SHIFTED, 48)
    assert "[train] label" in message and "between current and previous" in message
    assert drift(first_version)["label"]["drift"]["value"] > 0.1


def test_shifted_image_sizes_drift(first_version: Params) -> None:
    baseline = (first_version.path("validation_baseline") / "stats_train.pb").read_bytes()
    message = revalidate(first_version, BALANCED, 160)
    assert "[train] width" in message and "Jensen-Shannon divergence between current and " \
        "previous" in message
    assert "[train] label" not in message  # the classes did not change
    # A failed version does not become the baseline.
    assert (first_version.path("validation_baseline") / "stats_train.pb").read_bytes() == baseline
