"""`train.strategy`: mirrored over 2 logical CPU devices trains like the default strategy.

TF's logical devices must be configured before TF initialises, so each training run is a
subprocess (`python -c ...` configures 2 CPU devices, then runs the CLI). Both runs share the same
prepared data and caches; with the same GLOBAL batch (``train.batch_size``) the mirrored run splits
each batch over the two replicas and all-reduces the gradients, so it must follow the default
run's loss trajectory and reach its accuracy; only float summation order differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.project import tiny_params
from tests.helpers.shared import REPO, SHARED_WEIGHTS_035, needs_shared
from warmstart.config.params import Params, ParamsError, params_from_dict
from warmstart.data.records import Manifest, image_dataset, labels_of
from warmstart.layout import MODEL_FILE
from warmstart.modeling.distribute import StrategyError, check_tf_config, make_strategy
from warmstart.modeling.model import load_model

TWO_CPUS = ("import sys, tensorflow as tf; "
            "tf.config.set_logical_device_configuration(tf.config.list_physical_devices('CPU')[0],"
            " [tf.config.LogicalDeviceConfiguration()] * 2); "
            "from warmstart.cli import main; sys.exit(main(sys.argv[1:]))")
SHARED_INPUTS = ("processed", "features", "prefix")
PER_CLASS = {"train": 24, "validation": 12, "test": 6}


def train(prepared: Params, strategy: str, stages: tuple[str, ...]) -> tuple[Path, str]:
    """``stages`` with ``strategy`` in a workspace sharing the prepared caches, 2 CPU devices."""
    work = prepared.root.parent / strategy
    raw = yaml.safe_load((prepared.root / "params.yaml").read_text())
    raw["train"]["strategy"] = strategy
    for key in SHARED_INPUTS:
        link = work / raw["paths"][key]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(prepared.path(key))
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    log = ""
    for stage in stages:
        command = [sys.executable, "-c", TWO_CPUS, "--params", str(work / "params.yaml"), stage]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert done.returncode == 0, done.stdout + done.stderr
        log += done.stdout + done.stderr
    return work, log


def weights(work: Path, stage: str) -> list[np.ndarray]:
    return load_model(work / "models" / stage / MODEL_FILE).get_weights()


def accuracy(work: Path, stage: str, prepared: Params) -> float:
    """Validation accuracy of a saved model, computed here (one device) from its predictions."""
    manifest = Manifest.read(prepared.path("processed"))
    model = load_model(work / "models" / stage / MODEL_FILE)
    scores = model.predict(image_dataset(manifest, "validation", 8), verbose=0).ravel()
    return float(np.mean((scores > 0.5) == labels_of(manifest, "validation")))


@pytest.mark.slow
@needs_shared
def test_mirrored_on_two_cpu_devices_reaches_the_default_strategys_accuracy(
        tiny_project: Callable[..., Params]) -> None:
    """Real (ImageNet 0.35) features of the class-coloured images: both strategies learn, to
    the same accuracy (dropout masks differ per replica: trajectories match within noise)."""
    prepared = tiny_project(per_class=PER_CLASS, upto="features",
                            base={"alpha": 0.35, "weights": str(SHARED_WEIGHTS_035)},
                            transfer={"epochs": 6}, finetune={"epochs": 3, "learning_rate": 1e-5})
    default, _ = train(prepared, "default", ("transfer", "finetune"))
    mirrored, log = train(prepared, "mirrored", ("transfer", "finetune"))
    assert "train.strategy mirrored: 2 replica(s); global batch 8 = 4 per replica" in log
    for stage in ("transfer", "finetune"):
        theirs, ours = accuracy(default, stage, prepared), accuracy(mirrored, stage, prepared)
        assert theirs >= 0.9, f"{stage}: the default run did not learn ({theirs})"
        assert abs(ours - theirs) <= 2 / 24, (stage, ours, theirs)


def test_mirrored_on_two_cpu_devices_follows_the_default_strategy_step_for_step(
        tiny_project: Callable[..., Params]) -> None:
    """No dropout: both strategies make the same updates, up to float summation order."""
    prepared = tiny_project(per_class=PER_CLASS, upto="features", head={"dropout": 0.0},
                            transfer={"epochs": 4, "learning_rate": 0.01})
    default, default_log = train(prepared, "default", ("transfer",))
    mirrored, log = train(prepared, "mirrored", ("transfer",))
    assert "train.strategy mirrored: 2 replica(s); global batch 8 = 4 per replica" in log
    assert "replica" not in default_log
    ours, theirs = weights(mirrored, "transfer"), weights(default, "transfer")
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


KERAS_FIX = TWO_CPUS.replace("from warmstart.cli import main; sys.exit(main(sys.argv[1:]))", """
import json, keras, numpy as np
from warmstart.modeling.distribute import make_strategy
strategy = make_strategy("mirrored", 8)
x = np.zeros((8, 3), "float32"); x[4:] = 1.0; y = np.ones(8, "float32")
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
with strategy.scope():
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")
    model = keras.Model(inputs, dense(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    model.fit(data, epochs=1, verbose=0)
    copies = [c.numpy().ravel().tolist() for c in
              strategy.experimental_local_results(model.layers[1].kernel.value)]
    loss = model.evaluate(data, verbose=0)
    true = float(np.mean((model.predict(x, verbose=0).ravel() - y) ** 2))
print("RESULT", json.dumps([copies, loss, true]))
""")


def test_mirrored_all_reduces_gradients_and_metrics() -> None:
    """Regression: plain Keras 3.3 leaves each replica's weights on its own gradients (replica 0
    sees x=0 here: its copy stays 0) and reports replica 0's metrics only."""
    done = subprocess.run([sys.executable, "-c", KERAS_FIX], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    copies, loss, true = json.loads(done.stdout.split("RESULT", 1)[1])
    # Mean-squared error, global mean gradient: -2 * mean(x) = -1 per weight; SGD(1.0) -> 1.0.
    assert copies == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert loss == pytest.approx(true) and true == pytest.approx(2.5)


def test_strategy_param_is_validated(tmp_path: Path) -> None:
    raw = tiny_params(tmp_path)
    raw["train"]["strategy"] = "horovod"
    with pytest.raises(ParamsError, match="train.strategy.*default, mirrored, multi_worker"):
        params_from_dict(raw, tmp_path)


def test_default_strategy_is_tf_default() -> None:
    import tensorflow as tf

    assert make_strategy("default", 8) is tf.distribute.get_strategy()


@pytest.mark.parametrize(("value", "message"), [
    (None, "TF_CONFIG is not set"),
    ("not json", "not a valid multi-worker configuration"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
     "not one of the 1 workers"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch: pytest.MonkeyPatch,
                                              value: str | None, message: str) -> None:
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(StrategyError, match=message):
        check_tf_config()
