"""`train.strategy: multi_worker` for real: two local worker processes, as on two machines.

Both workers run ``python -m warmstart transfer`` (then ``finetune``) in the same tiny project
(one folder, as on a shared disk) with a ``TF_CONFIG`` naming both on 127.0.0.1 ports. With the
same GLOBAL batch each worker takes half of every batch and the gradients are all-reduced, so the
chief's model must be the default strategy's, up to float summation order; so must the
per-epoch metrics early stopping reads. The other worker's outputs go to its own folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.project import plant_features
from tests.helpers.shared import REPO
from warmstart.config.params import Params
from warmstart.layout import MODEL_FILE
from warmstart.modeling.model import load_model

STAGES = ("transfer", "finetune")
PER_CLASS = {"train": 24, "validation": 12, "test": 6}
STAGE_TIMEOUT = 240  # seconds per stage and worker: a hung collective fails, never blocks


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def workspace(prepared: Params, name: str, strategy: str) -> Path:
    """A copy of the prepared project training with ``strategy``."""
    work = prepared.root.parent / name
    shutil.copytree(prepared.root, work)
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["train"]["strategy"] = strategy
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    return work


def stage_command(work: Path, stage: str) -> list[str]:
    return [sys.executable, "-m", "warmstart", "--params", str(work / "params.yaml"), stage]


def run_default(work: Path) -> None:
    for stage in STAGES:
        done = subprocess.run(stage_command(work, stage), cwd=REPO, capture_output=True,
                              text=True, timeout=STAGE_TIMEOUT,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert done.returncode == 0, done.stdout + done.stderr


def run_two_workers(work: Path, stage: str) -> list[str]:
    """``stage`` on two workers at once; their logs. Kills both if either fails or hangs."""
    cluster = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers, logs = [], []
    try:
        for index in range(2):
            config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CONFIG": json.dumps(config)}
            workers.append(subprocess.Popen(stage_command(work, stage), cwd=REPO, env=env,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True))
        for worker in workers:
            logs.append(worker.communicate(timeout=STAGE_TIMEOUT)[0])
            assert worker.returncode == 0, f"{stage} worker failed:\n{logs[-1][-5000:]}"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return logs


def weights(work: Path, stage: str) -> list[np.ndarray]:
    return load_model(work / "models" / stage / MODEL_FILE).get_weights()


def validation_metrics(work: Path, stage: str) -> dict:
    """The kept epoch's validation figures in metrics/<stage>.json (``validation_<figure>``)."""
    metrics = json.loads((work / "metrics" / f"{stage}.json").read_text())
    return {key.removeprefix("validation_"): value for key, value in metrics.items()
            if key.startswith("validation_")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_workers_train_the_default_strategys_model(
        tiny_project: Callable[..., Params]) -> None:
    """No dropout, separable planted features: the updates are the same on 1 or 2 workers."""
    prepared = tiny_project(per_class=PER_CLASS, upto="features", skip_validation=True,
                            head={"dropout": 0.0}, transfer={"epochs": 4, "learning_rate": 0.01})
    plant_features(prepared)
    default = workspace(prepared, "default", "default")
    multi = workspace(prepared, "multi", "multi_worker")
    run_default(default)
    for stage in STAGES:
        chief, other = run_two_workers(multi, stage)
        assert "train.strategy multi_worker: 2 replica(s); global batch 8 = 4 per replica" in chief
        assert "worker 1 of a multi-worker run" in other and "worker 1" not in chief
        for ours, theirs in zip(weights(multi, stage), weights(default, stage), strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
        # Regression (Keras 3.3 summed metric variables re-counted every earlier batch): the
        # per-epoch validation figures early stopping and the metrics file read.
        for key, value in validation_metrics(default, stage).items():
            assert validation_metrics(multi, stage)[key] == pytest.approx(value, abs=2e-3), key
        own = multi / ".warmstart" / "checkpoints" / "worker-1"
        assert (own / "models" / stage / MODEL_FILE).is_file()
        assert (own / "metrics" / f"{stage}.json").is_file()
    assert validation_metrics(default, "transfer")["accuracy"] >= 0.9  # it learned


MIRRORED_EVALUATE = """
import json, sys, keras, numpy as np, tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices('CPU')[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
from warmstart.modeling.distribute import make_strategy
strategy = make_strategy("mirrored", 8)
x = np.arange(24, dtype="float32")[:, None]
data = tf.data.Dataset.from_tensor_slices((x, np.zeros(24, "float32"))).batch(8)
with strategy.scope():
    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="ones")(inputs))
    model.compile(optimizer="sgd", loss="mae", metrics=["mae"])
    print("RESULT", json.dumps(model.evaluate(data, verbose=0, return_dict=True)))
"""


def test_metrics_count_each_batch_once_on_two_replicas() -> None:
    """Regression: Keras 3.3 metrics update as ``v.assign(v + x)``; summed over two replicas that
    gave ``2v + x`` per step (this mean of 0..23 came out 8.07, weighted to the first batches)."""
    done = subprocess.run([sys.executable, "-c", MIRRORED_EVALUATE], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result == {"loss": pytest.approx(11.5), "mae": pytest.approx(11.5)}
