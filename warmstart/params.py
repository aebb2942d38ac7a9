"""`params.yaml`, read once into frozen, typed dataclasses that validate every value.

Every stage calls :func:`load_params` first, so a bad value fails the run before any work is
done, with the offending key named and the fix spelled out.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from warmstart.errors import WarmstartError

#: Number of layers of ``keras.applications.MobileNetV2(include_top=False)`` for every alpha
#: and input size (checked against Keras by ``tests/test_params.py``).
MOBILENET_V2_LAYERS = 154
#: The alphas and input sizes for which Keras publishes ``weights="imagenet"`` MobileNetV2 files.
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_SIZES = (96, 128, 160, 192, 224)
WEIGHTS_KEYWORDS = ("imagenet", "none")
DEFAULT_PARAMS_FILE = "params.yaml"


class ParamsError(WarmstartError, ValueError):
    """A value in params.yaml is missing, unknown or invalid. The message names the key."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key = key
        message = f"params.yaml: `{key}` {problem}"
        super().__init__(f"{message}. {fix}" if fix else message)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


@dataclass(frozen=True)
class PathsParams:
    """Every file and folder the pipeline reads or writes; dvc.yaml interpolates the same keys."""

    raw: str = "data/raw"
    downloads: str = "data/downloads"
    schema: str = "schema/schema.pbtxt"
    validated: str = "data/validated"
    validation_report: str = "reports/validation"
    processed: str = "data/processed"
    features: str = "data/features"
    transfer_model: str = "models/transfer"
    finetune_model: str = "models/finetune"
    transfer_metrics: str = "metrics/transfer.json"
    finetune_metrics: str = "metrics/finetune.json"
    evaluate_metrics: str = "metrics/evaluate.json"
    transfer_history: str = "plots/transfer_history.csv"
    finetune_history: str = "plots/finetune_history.csv"
    evaluate_plots: str = "plots/evaluate"

    def check(self, root: Path) -> None:
        for item in fields(self):
            value = Path(getattr(self, item.name))
            if value.is_absolute() or ".." in value.parts or not value.parts:
                raise ParamsError(f"paths.{item.name}", f"is {str(value)!r}",
                                  "Pipeline outputs live inside the project: use a relative "
                                  "path without `..`.")


@dataclass(frozen=True)
class DataParams:
    source: str = (
        "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
    )
    sha256: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    max_download_bytes: int = 4_000_000_000
    max_extract_bytes: int = 20_000_000_000

    def check(self, root: Path) -> None:
        if self.sha256 is not None and not _is_sha256(self.sha256):
            raise ParamsError("data.sha256", f"is {self.sha256!r}, not 64 hex digits",
                              "Give the archive's `sha256sum` or null.")
        if self.train_split == self.validation_split:
            raise ParamsError("data.validation_split", "equals data.train_split",
                              "Name two different split folders.")
        _check_positive("data.max_download_bytes", self.max_download_bytes)
        _check_positive("data.max_extract_bytes", self.max_extract_bytes)
        self._check_source(root)

    def _check_source(self, root: Path) -> None:
        if "://" in self.source and not is_url(self.source):
            raise ParamsError("data.source", f"uses an unsupported scheme: {self.source!r}",
                              "Use an http(s) URL, a local .zip file or a local folder.")
        if is_url(self.source):
            return
        path = root / self.source
        if not path.exists():
            raise ParamsError("data.source", f"points to {path}, which does not exist",
                              "Fix the path (relative to params.yaml) or use an http(s) URL.")
        if path.is_file() and path.suffix.lower() != ".zip":
            raise ParamsError("data.source", f"is a file but not a .zip: {path}",
                              "Give a .zip archive or a folder of <split>/<class>/<image>.")


@dataclass(frozen=True)
class ValidateParams:
    workers: int = 2
    max_image_pixels: int = 100_000_000

    def check(self, root: Path) -> None:
        _check_positive("validate.workers", self.workers)
        _check_positive("validate.max_image_pixels", self.max_image_pixels)


@dataclass(frozen=True)
class PreprocessParams:
    image_size: int = 128
    shard_size: int = 1024

    def check(self, root: Path) -> None:
        if self.image_size < 32:
            raise ParamsError("preprocess.image_size", f"is {self.image_size}",
                              "MobileNetV2 needs inputs of at least 32 pixels.")
        _check_positive("preprocess.shard_size", self.shard_size)


@dataclass(frozen=True)
class BaseParams:
    alpha: float = 1.0
    weights: str = "imagenet"
    sha256: str | None = None

    def check(self, root: Path) -> None:
        if self.alpha <= 0:
            raise ParamsError("base.alpha", f"is {self.alpha}", "Use a width multiplier > 0.")
        if self.sha256 is not None and not _is_sha256(self.sha256):
            raise ParamsError("base.sha256", f"is {self.sha256!r}, not 64 hex digits",
                              "Give the weights file's `sha256sum` or null.")
        if self.weights in WEIGHTS_KEYWORDS:
            return
        path = root / self.weights
        if not path.is_file():
            raise ParamsError(
                "base.weights", f"points to {path}, which is not a file",
                "Give an existing Keras .h5/.weights.h5 file of MobileNetV2 without its top, "
                "`imagenet` to download it, or `none` for random weights (tests only).")

    def weights_path(self, root: Path) -> Path | None:
        """The weights file, or None for the keywords ``imagenet`` and ``none``."""
        return None if self.weights in WEIGHTS_KEYWORDS else root / self.weights


@dataclass(frozen=True)
class HeadParams:
    dropout: float = 0.2

    def check(self, root: Path) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ParamsError("head.dropout", f"is {self.dropout}", "Use a value in [0, 1).")


@dataclass(frozen=True)
class TrainParams:
    batch_size: int = 128
    seed: int = 1337

    def check(self, root: Path) -> None:
        _check_positive("train.batch_size", self.batch_size)
        if self.seed < 0:
            raise ParamsError("train.seed", f"is {self.seed}", "Use a seed >= 0.")


@dataclass(frozen=True)
class TransferParams:
    epochs: int = 50
    learning_rate: float = 1e-4

    def check(self, root: Path) -> None:
        _check_positive("transfer.epochs", self.epochs)
        _check_positive("transfer.learning_rate", self.learning_rate)


@dataclass(frozen=True)
class FinetuneParams:
    fine_tune_at: int = 100
    epochs: int = 5
    learning_rate: float = 1e-5

    def check(self, root: Path) -> None:
        if not 0 <= self.fine_tune_at < MOBILENET_V2_LAYERS:
            raise ParamsError(
                "finetune.fine_tune_at", f"is {self.fine_tune_at}, outside the base's layers",
                f"MobileNetV2 without top has {MOBILENET_V2_LAYERS} layers: use 0 to "
                f"{MOBILENET_V2_LAYERS - 1}.")
        if self.epochs < 0:
            raise ParamsError("finetune.epochs", f"is {self.epochs}", "Use 0 or more epochs.")
        _check_positive("finetune.learning_rate", self.learning_rate)


@dataclass(frozen=True)
class EvaluateParams:
    threshold: float = 0.5

    def check(self, root: Path) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ParamsError("evaluate.threshold", f"is {self.threshold}",
                              "Use a decision threshold in (0, 1).")


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml. ``root`` is the folder relative paths are resolved against."""

    root: Path
    paths: PathsParams
    data: DataParams
    validate: ValidateParams
    preprocess: PreprocessParams
    base: BaseParams
    head: HeadParams
    train: TrainParams
    transfer: TransferParams
    finetune: FinetuneParams
    evaluate: EvaluateParams

    def path(self, key: str) -> Path:
        """Absolute path of ``paths.<key>``."""
        return self.root / getattr(self.paths, key)

    def check(self) -> None:
        for section in SECTIONS:
            getattr(self, section).check(self.root)
        if self.base.weights == "imagenet":
            self._check_imagenet_variant()

    def _check_imagenet_variant(self) -> None:
        if self.base.alpha not in IMAGENET_ALPHAS:
            raise ParamsError("base.alpha", f"is {self.base.alpha}; Keras has no imagenet "
                              "weights for it", f"Use one of {IMAGENET_ALPHAS}.")
        if self.preprocess.image_size not in IMAGENET_SIZES:
            raise ParamsError(
                "preprocess.image_size", f"is {self.preprocess.image_size}; Keras has no "
                "imagenet weights for it", f"Use one of {IMAGENET_SIZES} or a weights file.")


SECTIONS: dict[str, type] = {
    "paths": PathsParams,
    "data": DataParams,
    "validate": ValidateParams,
    "preprocess": PreprocessParams,
    "base": BaseParams,
    "head": HeadParams,
    "train": TrainParams,
    "transfer": TransferParams,
    "finetune": FinetuneParams,
    "evaluate": EvaluateParams,
}


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read, type-check and validate params.yaml; raise ParamsError naming the bad key."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ParamsError("(file)", f"not found at {path}",
                          "Run from the project root or pass --params.")
    raw = yaml.safe_load(path.read_text()) or {}
    return params_from_dict(raw, root=path.parent)


def params_from_dict(raw: dict[str, Any], root: Path) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError("(top level)", "is not a mapping")
    _reject_unknown(raw, SECTIONS, prefix="")
    sections = {name: _build_section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    params = Params(root=Path(root), **sections)
    params.check()
    return params


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ParamsError(name, f"must be a mapping, not {type(raw).__name__}")
    _reject_unknown(raw, {f.name: f for f in fields(cls)}, prefix=f"{name}.")
    hints = typing.get_type_hints(cls)
    values = {key: _coerce(f"{name}.{key}", hints[key], value) for key, value in raw.items()}
    return cls(**values)


def _reject_unknown(raw: dict[str, Any], known: dict[str, Any], prefix: str) -> None:
    for key in raw:
        if key not in known:
            raise ParamsError(f"{prefix}{key}", "is not a known key",
                              f"Known keys here: {', '.join(sorted(known))}.")


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are expected."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    for kind in allowed:
        if kind is not type(None) and type(value) is kind:
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    hint = "YAML reads 1e-4 as text: write 0.0001 or 1.0e-4." if float in allowed else ""
    raise ParamsError(key, f"must be {names}, got {value!r} ({type(value).__name__})", hint)


def _check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ParamsError(key, f"is {value}", "Use a value > 0.")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())


def as_dict(params: Params) -> dict[str, Any]:
    """The params as plain data (for logs and model cards), without ``root``."""
    return {name: dataclasses.asdict(getattr(params, name)) for name in SECTIONS}
