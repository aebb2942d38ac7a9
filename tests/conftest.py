"""Shared fixtures: tiny synthetic datasets, params and projects, all under tmp_path.

Fixtures only: the helpers they use (and test modules import) live in tests/helpers/.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.helpers.images import make_dataset
from tests.helpers.project import prepare_project, tiny_params
from tests.helpers.shared import REPO
from warmstart.config.params import Params

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure() -> None:
    """Before collection: absl's logging handler writes to the process's real stderr, which
    absl never closes (pytest's fd capture still captures it).

    Root cause of the pytest crash "I/O operation on closed file" / "lost sys.stderr" in a
    flow test: absl (imported by TensorFlow, e.g. while test modules are collected) creates a
    handler on the sys.stderr of that moment, pytest's capture file. Prefect's logging setup
    (`import prefect`) runs `logging.config.dictConfig`, which closes every handler of the
    process; absl's `PythonHandler.close()` then closes its stream unless it *is* sys.stderr at
    that moment, and `import dvc` (colorama.init()) had replaced sys.stderr by a wrapper of it.
    So pytest's own capture file was closed (abseil-py PR #118 describes the same sequence).
    """
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.get_absl_handler().python_handler.setStream(sys.__stderr__)


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


@pytest.fixture
def tiny_project(tmp_path: Path) -> Callable[..., Params]:
    """``tiny_project(classes=..., per_class=..., upto="preprocess", skip_validation=False,
    **overrides) -> Params``: a synthetic dataset and a project under tmp_path, run through
    stage ``upto`` (`tests.helpers.project.prepare_project`; once per test). Module-scoped
    fixtures that share one project call `prepare_project` with tmp_path_factory instead."""
    return functools.partial(prepare_project, tmp_path)
