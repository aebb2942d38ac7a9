"""Same params, same seed: identical caches, metrics files and model weights on CPU."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tests.helpers.files import folder_bytes
from warmstart.config.params import Params
from warmstart.layout import FEATURES_INFO_FILE, MODEL_FILE, PREFIX_INFO_FILE
from warmstart.modeling.model import load_model
from warmstart.stages.evaluate import run_evaluate
from warmstart.stages.features import run_features
from warmstart.stages.finetune import run_finetune
from warmstart.stages.transfer import run_transfer

#: Files, and folders (every file in them), that two equal runs must write byte for byte.
OUTPUTS = ("transfer_metrics", "finetune_metrics", "evaluate_metrics", "transfer_details",
           "evaluate_details", "transfer_history", "finetune_history", "evaluate_plots")


def cache_files(params: Params) -> dict[str, bytes]:
    """The caches' shards and info files, byte for byte (timings go to the details file)."""
    files = {}
    for key in ("features", "prefix"):
        folder = params.path(key)
        files |= {f"{key}/{p.relative_to(folder)}": p.read_bytes()
                  for p in sorted(folder.rglob("*")) if p.suffix in (".npy", ".json")}
    assert {f"features/{FEATURES_INFO_FILE}", f"prefix/{PREFIX_INFO_FILE}"} <= files.keys()
    return files


def train_once(params) -> tuple[dict[str, bytes], list[np.ndarray]]:
    for stage in (run_features, run_transfer, run_finetune, run_evaluate):
        stage(params)
    files = {key: folder_bytes(params.path(key)) for key in OUTPUTS} | cache_files(params)
    weights = load_model(params.path("finetune_model") / MODEL_FILE).get_weights()
    return files, weights


@pytest.mark.parametrize("class_weight", ["none", "balanced"])
def test_two_runs_give_identical_metrics_and_weights(
        tiny_project: Callable[..., Params], class_weight: str) -> None:
    params = tiny_project(train={"class_weight": class_weight})
    first_files, first_weights = train_once(params)
    second_files, second_weights = train_once(params)
    assert all(first_files.values()), "every output was written"
    assert first_files == second_files
    assert len(first_weights) == len(second_weights)
    for a, b in zip(first_weights, second_weights, strict=True):
        assert a.tobytes() == b.tobytes()
