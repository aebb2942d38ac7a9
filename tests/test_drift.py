"""Drift: a new dataset version is compared with the previous version's statistics (baseline),
each figure against a threshold calibrated to the data's own sampling noise."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.images import CLASS_COLOURS, write_image
from warmstart.config.params import Params, load_params
from warmstart.stages.ingest import run_ingest
from warmstart.stages.validate import run_validate
from warmstart.validation.drift import DRIFT, SKEW, Comparison
from warmstart.validation.findings import ValidationFailed


def version(root: Path, per_class: dict[str, dict[str, int]], size: int, shade: float = 1.0,
            width: Callable[[int], int] | None = None) -> Path:
    """A dataset version: ``per_class[split][label]`` images of about ``size`` pixels (or
    ``width(seed)`` wide), in the class colour times ``shade``."""
    shutil.rmtree(root, ignore_errors=True)
    seed = 0
    for split, counts in per_class.items():
        for label, count in counts.items():
            colour = tuple(int(c * shade) for c in CLASS_COLOURS[label])
            for index in range(count):
                seed += 1
                wide = width(seed) if width else size + seed % 7
                write_image(root / split / label / f"{index}.jpg", colour,
                            (wide, size + seed % 5), seed)
    return root


def photo_width(seed: int) -> int:
    """Widths like the tutorial's photos: most at one size, the others spread below it."""
    rng = np.random.default_rng(seed)
    return 100 if rng.random() < 0.6 else int(rng.integers(40, 100))


# Enough images that a 10:1 class balance after a 1:1 one stands out of the sampling noise (the
# thresholds are calibrated to it: 12:6 after 12:12 is within chance).
BALANCED = {"train": {"cats": 40, "dogs": 40}, "validation": {"cats": 6, "dogs": 6},
            "test": {"cats": 6, "dogs": 6}}
SHIFTED = {"train": {"cats": 40, "dogs": 4}, "validation": {"cats": 6, "dogs": 3},
           "test": {"cats": 6, "dogs": 3}}


@pytest.fixture
def first_version(workspace: Callable[..., Path], tmp_path: Path) -> Params:
    """Version 1 validated: its statistics are now the baseline."""
    source = version(tmp_path / "source", BALANCED, 48)
    params = load_params(workspace(source) / "params.yaml")
    run_ingest(params)
    run_validate(params)
    assert (params.path("validation_baseline") / "stats_train.pb").is_file()
    return params


def drift(params: Params) -> dict:
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    return report["drift_skew"]["train"]


def revalidate(params: Params, per_class: dict, size: int, shade: float = 1.0) -> str:
    version(Path(params.data.source), per_class, size, shade)
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


def test_more_images_of_the_same_distribution_pass(workspace: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    """The tutorial's case: more images from the same source, one of them wider than any
    before. The range of the width histogram stretches, so TFDV's approximate JSD is above a
    fixed 0.1; the threshold calibrated to the data's own noise lets the version pass."""
    source = version(tmp_path / "source", BALANCED, 48, width=photo_width)
    params = load_params(workspace(source) / "params.yaml")
    run_ingest(params)
    run_validate(params)
    more = {**BALANCED, "train": {"cats": 60, "dogs": 60}}
    version(source, more, 48, width=photo_width)
    write_image(source / "train" / "cats" / "wide.jpg", CLASS_COLOURS["cats"], (200, 50), 999)
    run_ingest(params)
    run_validate(params)
    width = drift(params)["width"]["drift"]
    assert width["value"] > params.validate.drift_jsd  # what a fixed threshold would fail
    assert width["value"] < width["threshold"] == pytest.approx(3 * width["noise"], abs=1e-5)
    assert width["exceeded"] is False and "validate.noise_factor=3 x noise" in width["how"]


def test_drift_outside_drift_blocking_is_a_warning(workspace: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    source = version(tmp_path / "source", BALANCED, 48)
    blocking = ["label", "width", "height", "brightness"]
    params = load_params(workspace(source, validate={"drift_blocking": blocking})
                         / "params.yaml")
    run_ingest(params)
    run_validate(params)
    message = revalidate(params, BALANCED, 48, shade=0.4)  # darker photos
    assert "[train] brightness" in message and "- drift: [train] brightness" in message
    advisory = load_params(workspace(source) / "params.yaml")  # drift_blocking: the default
    run_validate(advisory)  # the same darker version passes: brightness drift only warns
    report = json.loads((advisory.path("validation_report") / "anomalies.json").read_text())
    brightness = report["drift_skew"]["train"]["brightness"]["drift"]
    assert brightness["exceeded"] is True and brightness["blocking"] is False
    warned = [p for p in report["problems"] if p["check"] == "drift" and p["advisory"]]
    assert any(p["reason"].startswith("[train] brightness") for p in warned)
    assert report["ok"] is True


def test_threshold_is_the_floor_or_the_calibrated_noise() -> None:
    base = {"kind": DRIFT, "split": "train", "feature": "width",
            "measure": "JENSEN_SHANNON_DIVERGENCE", "floor": 0.1, "factor": 3.0,
            "sample_size": 500, "blocking": True}
    noisy = Comparison(value=0.16, noise=0.164, **base)
    assert noisy.threshold == pytest.approx(0.492) and not noisy.exceeded
    assert "max(validate.drift_jsd=0.1, validate.noise_factor=3 x noise 0.164" in noisy.how()
    quiet = Comparison(value=0.16, noise=0.01, **base)
    assert quiet.threshold == 0.1 and quiet.exceeded
    within = Comparison(value=0.05, noise=None, **base)
    assert within.threshold == 0.1 and "noise not needed" in within.how()
    skew = Comparison(**{**base, "kind": SKEW, "split": "test", "measure": "L_INFTY"},
                      value=0.3, noise=0.05)
    assert skew.description().startswith("[test] width: L-infinity distance between 'train' "
                                          "and 'test' 0.3, above the threshold 0.15")
    assert skew.as_dict()["how"].startswith("max(validate.skew_linf=0.1")
