"""The `features` stage refuses to start when its caches cannot fit on the disk.

The estimate comes from the extractor's output shapes, the split sizes and
``finetune.cache_dtype``; it must not be below what the stage then writes (or it would let a
disk fill up), nor far above it (or it would refuse runs that fit).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from warmstart.config.params import Params
from warmstart.modeling import cache_size
from warmstart.modeling.cache_size import MARGIN, SLACK_BYTES, DiskSpaceError, check_disk_space
from warmstart.stages import features as features_stage
from warmstart.stages.features import run_features


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_features_refuses_early_when_the_caches_do_not_fit(
        tiny_project: Callable[..., Params], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    params = tiny_project(upto="preprocess", skip_validation=True)
    real = shutil.disk_usage
    monkeypatch.setattr(cache_size.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=SLACK_BYTES))
    with caplog.at_level("INFO"), pytest.raises(DiskSpaceError) as refused:
        run_features(params)
    message = str(refused.value)
    assert f"64 MiB are free on the filesystem of {params.path('features')}" in message
    for key in ("finetune.fine_tune_at", "finetune.cache_dtype", "preprocess.image_size"):
        assert key in message
    assert "Nothing was written" in message and "cache size estimate" in caplog.text
    assert not params.path("features").exists() and not params.path("prefix").exists()
    assert not list(params.path("features").parent.glob(".features.*"))  # no temporary folder


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_the_estimate_is_what_features_writes(
        tiny_project: Callable[..., Params], monkeypatch: pytest.MonkeyPatch,
        dtype: str) -> None:
    """Each output within 10 % of its estimate, so the margin covers it."""
    params = tiny_project(upto="preprocess", skip_validation=True,
                          finetune={"cache_dtype": dtype})
    estimates = {}

    def spy(targets: dict[str, Path], sizes: dict[str, int]) -> None:
        estimates.update(sizes)
        check_disk_space(targets, sizes)

    monkeypatch.setattr(features_stage, "check_disk_space", spy)
    run_features(params)
    for name in ("features", "prefix"):
        written = folder_bytes(params.path(name))
        assert 0.9 * written <= estimates[name] <= written * MARGIN, (name, estimates, written)
