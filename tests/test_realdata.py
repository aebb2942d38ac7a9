"""Real data (slow): a subset of the tutorial dataset with genuine ImageNet 0.35 weights.

Skipped, with the reason, when ../shared is absent. CI runs it (``pytest`` runs all tests).
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.project import tiny_params
from tests.helpers.shared import REPO, SHARED_WEIGHTS_035, SHARED_ZIP, needs_shared
from warmstart.config.params import load_params
from warmstart.data.records import Manifest, image_dataset
from warmstart.inference.recorded import class_probabilities, read_predictions
from warmstart.layout import MODEL_FILE
from warmstart.modeling.model import load_model
from warmstart.stages.evaluate import run_evaluate
from warmstart.stages.features import run_features
from warmstart.stages.finetune import run_finetune
from warmstart.stages.ingest import run_ingest
from warmstart.stages.preprocess import run_preprocess
from warmstart.stages.transfer import run_transfer
from warmstart.stages.validate import run_validate

#: The archive has no test split: ingest holds out data.test_fraction (0.2) of validation as test.
PER_CLASS = {"train": 150, "validation": 150}


def subset_zip(target: Path) -> Path:
    """The first PER_CLASS images of each split/class of the real archive."""
    taken: Counter[tuple[str, str]] = Counter()
    with zipfile.ZipFile(SHARED_ZIP) as source, zipfile.ZipFile(target, "w") as out:
        for member in source.infolist():
            parts = Path(member.filename).parts
            if len(parts) != 4 or member.is_dir():
                continue
            key = (parts[1], parts[2])
            if taken[key] < PER_CLASS[parts[1]]:
                taken[key] += 1
                out.writestr(member, source.read(member))
    return target


@pytest.mark.slow
@needs_shared
def test_real_subset_learns_well_above_chance(tmp_path: Path) -> None:
    raw = tiny_params(subset_zip(tmp_path / "subset.zip"),
                      base={"alpha": 0.35, "weights": str(SHARED_WEIGHTS_035)},
                      preprocess={"image_size": 96},
                      train={"batch_size": 32},
                      transfer={"epochs": 10, "learning_rate": 0.001},
                      finetune={"epochs": 2, "learning_rate": 0.00001})
    work = tmp_path / "work"
    (work / "schema").mkdir(parents=True)
    (work / "schema" / "schema.pbtxt").write_text((REPO / "schema" / "schema.pbtxt").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(work / "params.yaml")
    for stage in (run_ingest, run_validate, run_preprocess, run_features, run_transfer,
                  run_finetune, run_evaluate):
        stage(params)
    results = json.loads(params.path("evaluate_metrics").read_text())
    manifest = Manifest.read(params.path("processed"))
    # the source has no test split: ingest held out a share of validation as test
    assert manifest.count("test") > 0 and manifest.count("validation") > 0
    baseline = results["majority_baseline"]
    assert manifest.count("test") == 60
    for split, bar in (("validation", 0.8), ("test", 0.75)):  # test: 60 images, noisier
        # Chance is 0.5; the 0.35 linear probe reaches ~0.9 on 600 images at 128 px.
        assert results["transfer"][split]["accuracy"] > bar, (split, results)
        assert results["finetune"][split]["accuracy"] > bar, (split, results)
        assert results["finetune"][split]["roc_auc"] > 0.85, (split, results)
        assert results["finetune"][split]["accuracy"] > baseline[split]["accuracy"] + 0.2
    # evaluate scored the recorded predictions: the saved models reproduce them from the images
    for split in ("validation", "test"):
        images = image_dataset(manifest, split, 64, cache=False).map(lambda x, y: x)
        for stage in ("transfer", "finetune"):
            model = load_model(params.path(f"{stage}_model") / MODEL_FILE)
            recorded = read_predictions(params.path(f"{stage}_predictions"))[split]
            full = class_probabilities(model.predict(images, verbose=0))
            np.testing.assert_allclose(recorded.probabilities, full, atol=1e-5,
                                       err_msg=f"{stage} {split}")
