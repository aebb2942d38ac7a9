"""Shared fixtures: tiny synthetic image datasets and shrunken params, all under tmp_path."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A logging handler whose stream a library left closed must not turn a log call into an
# exception that fails the test (and then crashes pytest writing to the same closed stream):
# seen with Prefect's console handler under CI. Logging errors are dropped, as in production.
logging.raiseExceptions = False

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_ZIP = SHARED / "datasets" / "cats_and_dogs_filtered.zip"
SHARED_WEIGHTS_035 = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top.h5"
SHARED_WEIGHTS_100 = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5"

needs_shared = pytest.mark.skipif(
    not SHARED_ZIP.is_file() or not SHARED_WEIGHTS_035.is_file(),
    reason=f"real data and weights not found in {SHARED} (see README: ../shared beside the "
    "checkout holds the tutorial dataset and ImageNet weights)")

#: A distinct mean colour per class, so even a random-weights base separates them.
CLASS_COLOURS = {"cats": (200, 60, 60), "dogs": (60, 60, 200), "birds": (60, 200, 60)}


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int], seed: int,
                fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
    pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, fmt)
    return path


def make_dataset(root: Path, classes: tuple[str, ...] = ("cats", "dogs"),
                 per_class: dict[str, int] | None = None) -> Path:
    """``root/<split>/<class>/<n>.jpg`` with class-coloured noisy images of varied sizes."""
    per_class = per_class or {"train": 12, "validation": 6}
    seed = 0
    for split, count in per_class.items():
        for label in classes:
            for index in range(count):
                seed += 1
                size = (40 + (seed * 7) % 30, 36 + (seed * 5) % 30)
                write_image(root / split / label / f"{label}.{index}.jpg", CLASS_COLOURS[label],
                            size, seed)
    return root


def tiny_params(source: Path | str, **overrides: dict) -> dict:
    """params.yaml content for a seconds-long run: random 0.35 base, 32 px, few epochs."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(source)
    params["base"].update(alpha=0.35, weights="none")
    params["preprocess"].update(image_size=32, shard_size=16)
    params["train"].update(batch_size=8)
    params["transfer"].update(epochs=3, learning_rate=0.01)
    params["finetune"].update(epochs=2, learning_rate=0.001)
    # A random-weights base cannot reach real accuracies: the gate promotes any tiny model.
    params["gate"].update(min_accuracy=0.0, max_drop=1.0)
    for section, values in overrides.items():
        params[section].update(values)
    return params


def run_command(cmd: list[str], cwd: Path) -> str:
    """Run a command (dvc, git) with this venv's tools first on PATH; fail with its output."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-5000:]}"
    return output


def make_dvc_project(work: Path, params: dict) -> Path:
    """A git + DVC project holding this repo's dvc.yaml, code and schema, and ``params``."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", work)
    shutil.copytree(REPO / "warmstart", work / "warmstart",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "schema", work / "schema")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"],
                ["git", "config", "user.name", "test"], ["dvc", "init", "-q"]):
        run_command(cmd, work)
    return work


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "source")


@pytest.fixture
def workspace(tmp_path: Path) -> Callable[..., Path]:
    """Make a project folder with a params.yaml (and the committed schema); return its path."""

    def make(source: Path | str, schema: Path | None = REPO / "schema" / "schema.pbtxt",
             **overrides: dict) -> Path:
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(source, **overrides)))
        if schema is not None:
            (work / "schema").mkdir(exist_ok=True)
            shutil.copy(schema, work / "schema" / "schema.pbtxt")
        return work

    return make


@pytest.fixture(autouse=True)
def _forget_colorama_streams() -> object:
    """Regression: a flow test crashed pytest with 'I/O operation on closed file'.

    colorama remembers sys.stdout/sys.stderr when it is initialised and puts them back later
    (DVC's ``ui.disable_colorama`` calls ``deinit()``/``reinit()`` in-process). Under pytest
    those are one test's capture streams, closed when that test ends; a later test then logged
    into a closed stream. Forget them after every test.
    """
    yield
    try:
        import colorama.initialise as colorama_state
    except ImportError:
        return
    for name in ("orig_stdout", "orig_stderr", "wrapped_stdout", "wrapped_stderr"):
        setattr(colorama_state, name, None)


@pytest.fixture(autouse=True)
def _usable_std_streams() -> object:
    """Regression (same crash): before a test, put back sys.stdout/sys.stderr if a library left
    a closed stream (or a wrapper of one) there, so logging's error path cannot crash pytest."""
    for name in ("stdout", "stderr"):
        if _is_closed(getattr(sys, name)):
            setattr(sys, name, getattr(sys, f"__{name}__"))
    yield


def _is_closed(stream: object) -> bool:
    try:
        return bool(getattr(stream, "closed", False))
    except ValueError:
        return True


#: Test modules that run Prefect in-process, in the order they must run: first of all.
PREFECT_MODULES = ("test_flow.py", "test_deployment.py", "flow_checks.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the flow tests first, then the deployment test, then the rest. When the flow tests
    ran after other tests (the deployment test, or the export tests) in one CI process, Prefect's
    console log handler wrote to a closed capture stream and pytest crashed ('I/O operation on
    closed file'); alone, or first, they pass. Root cause not found yet (stream state left
    behind by another library); tracked in the closing note."""
    order = {name: index for index, name in enumerate(PREFECT_MODULES)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))
