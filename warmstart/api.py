"""The Python API for notebooks: the CLI's functions, callable in-process.

- :func:`load` a trained or exported model and :meth:`Classifier.predict` image files (what
  ``warmstart predict`` does, as a pandas table);
- :func:`run` one stage in this process with params.yaml plus overrides (``dvc.lock`` does not
  record it: for exploring; the params file is not changed);
- :func:`repro` the pipeline through DVC as ``dvc exp run -S key=value`` does (recorded).

TensorFlow is imported only when a model is loaded or a stage runs.
"""

from __future__ import annotations

import copy
import logging
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from warmstart.cli import STAGES, stage_function
from warmstart.config.params import DEFAULT_PARAMS_FILE, Params, params_from_dict, read_yaml
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)


class Classifier:
    """A model with its class names: ``classes``, ``image_size``, ``threshold``."""

    def __init__(self, model: str | Path, classes: str | Path | None = None) -> None:
        from warmstart.inference import predict  # TensorFlow: only once a model is loaded

        self._predict = predict
        self.path = Path(model)
        self.labels = predict.find_labels(self.path, Path(classes) if classes else None)
        self.predictor = predict.load_predictor(self.path)
        predict.check_labels(self.predictor, self.labels)
        self.classes, self.threshold = self.labels.classes, self.labels.threshold
        self.image_size = self.predictor.image_size

    def __repr__(self) -> str:
        return f"Classifier({str(self.path)!r}, classes={self.classes})"

    def predict(self, images: str | Path | Iterable[str | Path], batch_size: int = 32
                ) -> pd.DataFrame:
        """One row per image file (folders are searched recursively): ``path``,
        ``prediction``, one probability column per class, and ``error`` (why a file could not
        be predicted; empty otherwise)."""
        targets = [images] if isinstance(images, str | Path) else list(images)
        files = [f for target in targets for f in self._predict.list_images(Path(target))]
        done, failed = self._predict.predict_files(self.predictor, self.labels, files,
                                                   batch_size, progress=len(files) > 1)
        rows = [{"path": p.path, "prediction": p.label, **p.probabilities, "error": ""}
                for p in done]
        rows += [{"path": f.path, "prediction": None, "error": f.reason} for f in failed]
        return pd.DataFrame(rows, columns=["path", "prediction", *self.classes, "error"])

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes) of float 0-255 pixels (n, size, size, 3)."""
        from warmstart.inference.recorded import class_probabilities

        return class_probabilities(self.predictor(np.asarray(pixels, dtype=np.float32)))


def load(model: str | Path, classes: str | Path | None = None) -> Classifier:
    """A model to predict with: a folder such as ``models/export`` or ``models/promoted``, a
    ``.keras`` or ``.tflite`` file or a SavedModel folder; ``classes``: a classes.json or
    manifest.json when none lies beside the model."""
    return Classifier(model, classes)


def params_with(overrides: Mapping[str, Any] | None = None,
                params: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """params.yaml with ``{"section.key": value}`` overrides, validated like the file itself;
    the file is not changed."""
    path = Path(params).resolve()
    if not path.is_file():
        raise WarmstartError(f"No params file at {path}: pass params= or run from the project.")
    raw = copy.deepcopy(read_yaml(path.read_text()))
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in raw or not isinstance(raw[section], dict) or name not in raw[section]:
            raise WarmstartError(f"Override {key!r}: params.yaml has no such key; give "
                                 "'section.key' as in params.yaml (e.g. 'transfer.epochs').")
        raw[section][name] = value
    return params_from_dict(raw, root=path.parent)


def run(stage: str, overrides: Mapping[str, Any] | None = None,
        params: str | Path = DEFAULT_PARAMS_FILE) -> Any:
    """Run one stage in this process (what ``python -m warmstart <stage>`` runs) and return
    its result. DVC does not record this run: ``dvc status`` shows the stage changed."""
    if stage not in STAGES:
        raise WarmstartError(f"No stage {stage!r}: one of {list(STAGES)}.")
    return stage_function(stage)(params_with(overrides, params))


def repro(stages: Iterable[str] = (), overrides: Mapping[str, Any] | None = None,
          project: str | Path = ".") -> None:
    """``dvc exp run [-S key=value ...] [stage ...]`` in ``project``: the run DVC records (an
    experiment; ``dvc exp show`` lists it). Raises WarmstartError when it fails."""
    command = ["dvc", "exp", "run", *[f"-S{k}={yaml_value(v)}" for k, v in
                                      (overrides or {}).items()], *stages]
    logger.info("%s (in %s)", " ".join(command), project)
    done = subprocess.run(command, cwd=project, check=False)
    if done.returncode:
        raise WarmstartError(f"`{' '.join(command)}` failed (exit status {done.returncode}); "
                             "its output above says why.")


def yaml_value(value: Any) -> str:
    """An override value as ``dvc exp run -S`` reads it (YAML): ``null``, ``true``, ``1e-05``."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
