"""`params.yaml`, read once into frozen, typed dataclasses that validate every value.

Every stage calls :func:`load_params` first, so a bad value fails the run before any work is
done, with the offending key named and the fix spelled out.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import types
import typing
import urllib.parse
import zoneinfo
from dataclasses import dataclass, field, fields
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
CACHE_DTYPES = ("float16", "float32")
FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")
DEFAULT_PARAMS_FILE = "params.yaml"
VALIDATE_POLICIES = ("fail", "quarantine")
STRATEGIES = ("default", "mirrored", "multi_worker")


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
    validation_html: str = "reports/validation.html"
    validation_baseline: str = "data/validation_baseline"
    validate_metrics: str = "metrics/validate.json"
    processed: str = "data/processed"
    features: str = "data/features"
    prefix: str = "data/prefix"
    transfer_model: str = "models/transfer"
    finetune_model: str = "models/finetune"
    transfer_predictions: str = "predictions/transfer.csv"
    finetune_predictions: str = "predictions/finetune.csv"
    transfer_metrics: str = "metrics/transfer.json"
    finetune_metrics: str = "metrics/finetune.json"
    evaluate_metrics: str = "metrics/evaluate.json"
    transfer_history: str = "plots/transfer_history.csv"
    finetune_history: str = "plots/finetune_history.csv"
    evaluate_plots: str = "plots/evaluate"
    export_model: str = "models/export"
    export_metrics: str = "metrics/export.json"
    model_card: str = "reports/model_card.md"
    promoted_model: str = "models/promoted"
    gate_metrics: str = "metrics/gate.json"
    checkpoints: str = ".warmstart/checkpoints"

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
            if urllib.parse.urlsplit(self.source).password is not None:
                raise ParamsError("data.source", "contains a password",
                                  "Credentials never go in params.yaml (it is committed and "
                                  "logged): use a URL without user:password@.")
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
    policy: str = "fail"
    workers: int = 2
    max_image_pixels: int = 100_000_000
    max_file_bytes: int = 100_000_000
    min_side: int = 32
    max_aspect: float = 4.0
    min_contrast: float = 2.0
    near_duplicate_distance: int = 4
    max_class_ratio: float = 1.5
    max_quarantine_fraction: float = 0.05
    skew_linf: float | None = 0.1
    skew_jsd: float | None = None
    drift_linf: float | None = 0.1
    drift_jsd: float | None = 0.1
    beam_options: str = ("--runner=FnApiRunner --direct_running_mode=in_memory "
                         "--direct_num_workers=1")
    max_thumbnails: int = 200

    def check(self, root: Path) -> None:
        if self.policy not in VALIDATE_POLICIES:
            raise ParamsError("validate.policy", f"is {self.policy!r}",
                              f"Use one of {', '.join(VALIDATE_POLICIES)}.")
        for name in ("workers", "max_image_pixels", "max_file_bytes", "min_side",
                     "max_class_ratio", "max_thumbnails"):
            _check_positive(f"validate.{name}", getattr(self, name))
        if self.max_aspect < 1.0:
            raise ParamsError("validate.max_aspect", f"is {self.max_aspect}",
                              "Use a ratio long side / short side >= 1.")
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise ParamsError("validate.max_quarantine_fraction",
                              f"is {self.max_quarantine_fraction}", "Use a fraction in [0, 1].")
        if not -1 <= self.near_duplicate_distance <= 64:
            raise ParamsError("validate.near_duplicate_distance",
                              f"is {self.near_duplicate_distance}",
                              "Use a pHash Hamming distance in [0, 64], or -1 to turn it off.")
        for name in ("min_contrast", "skew_linf", "skew_jsd", "drift_linf", "drift_jsd"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ParamsError(f"validate.{name}", f"is {value}", "Use a value >= 0.")
        self._check_beam_options()

    def _check_beam_options(self) -> None:
        try:
            flags = shlex.split(self.beam_options)
        except ValueError as exc:
            raise ParamsError("validate.beam_options", f"cannot be parsed: {exc}") from exc
        bad = [flag for flag in flags if not flag.startswith("--")]
        if bad:
            raise ParamsError("validate.beam_options", f"has {bad[0]!r}, not a --flag",
                              "Give Beam pipeline flags, e.g. '--runner=DirectRunner "
                              "--direct_running_mode=multi_processing --direct_num_workers=2'.")


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
    deterministic: bool = True
    strategy: str = "default"

    def check(self, root: Path) -> None:
        _check_positive("train.batch_size", self.batch_size)
        if self.seed < 0:
            raise ParamsError("train.seed", f"is {self.seed}", "Use a seed >= 0.")
        if self.strategy not in STRATEGIES:
            raise ParamsError("train.strategy", f"is {self.strategy!r}",
                              f"Use one of {', '.join(STRATEGIES)}.")


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
    cache_dtype: str = "float16"

    def check(self, root: Path) -> None:
        if not 0 <= self.fine_tune_at < MOBILENET_V2_LAYERS:
            raise ParamsError(
                "finetune.fine_tune_at", f"is {self.fine_tune_at}, outside the base's layers",
                f"MobileNetV2 without top has {MOBILENET_V2_LAYERS} layers: use 0 to "
                f"{MOBILENET_V2_LAYERS - 1}.")
        if self.epochs < 0:
            raise ParamsError("finetune.epochs", f"is {self.epochs}", "Use 0 or more epochs.")
        _check_positive("finetune.learning_rate", self.learning_rate)
        if self.cache_dtype not in CACHE_DTYPES:
            raise ParamsError("finetune.cache_dtype", f"is {self.cache_dtype!r}",
                              f"Use one of {', '.join(CACHE_DTYPES)}.")


@dataclass(frozen=True)
class AugmentParams:
    """Random augmentation while training (Keras preprocessing layers, inactive at inference)."""

    flip: str = "none"
    rotation: float = 0.0
    zoom: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.flip != "none" or self.rotation > 0 or self.zoom > 0

    def check(self, root: Path) -> None:
        if self.flip not in FLIP_MODES:
            raise ParamsError("augment.flip", f"is {self.flip!r}",
                              f"Use one of {', '.join(FLIP_MODES)}.")
        if not 0.0 <= self.rotation <= 0.5:
            raise ParamsError("augment.rotation", f"is {self.rotation}",
                              "Use a fraction of a full turn in [0, 0.5] (0: off).")
        if not 0.0 <= self.zoom < 1.0:
            raise ParamsError("augment.zoom", f"is {self.zoom}",
                              "Use a fraction of the image size in [0, 1) (0: off).")


@dataclass(frozen=True)
class EvaluateParams:
    threshold: float = 0.5

    def check(self, root: Path) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ParamsError("evaluate.threshold", f"is {self.threshold}",
                              "Use a decision threshold in (0, 1).")


@dataclass(frozen=True)
class ExportParams:
    int8: bool = False
    float32_tolerance: float = 1e-4
    int8_min_agreement: float = 0.995

    def check(self, root: Path) -> None:
        if not 0.0 < self.float32_tolerance < 1.0:
            raise ParamsError("export.float32_tolerance", f"is {self.float32_tolerance}",
                              "Use the largest allowed |probability difference| in (0, 1), "
                              "e.g. 0.0001.")
        if not 0.0 <= self.int8_min_agreement <= 1.0:
            raise ParamsError("export.int8_min_agreement", f"is {self.int8_min_agreement}",
                              "Use a top-1 agreement fraction in [0, 1], e.g. 0.995.")


@dataclass(frozen=True)
class GateParams:
    min_accuracy: float = 0.9
    max_drop: float = 0.01

    def check(self, root: Path) -> None:
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ParamsError("gate.min_accuracy", f"is {self.min_accuracy}",
                              "Use a validation accuracy in [0, 1].")
        if not 0.0 <= self.max_drop <= 1.0:
            raise ParamsError("gate.max_drop", f"is {self.max_drop}",
                              "Use an accuracy difference in [0, 1] (0: never worse).")


@dataclass(frozen=True)
class OrchestrationParams:
    """Prefect flows (flows/, tasks/): schedule and retries. No DVC stage depends on it."""

    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    retries: int = 1
    stage_retries: dict = field(default_factory=lambda: {"ingest": 3, "validate": 0})
    retry_delay_seconds: float = 30.0

    def check(self, root: Path) -> None:
        if len(self.cron.split()) != 5:
            raise ParamsError("orchestration.cron", f"is {self.cron!r}, not 5 cron fields",
                              "Use minute hour day-of-month month day-of-week, e.g. "
                              "'0 2 * * *' (02:00 every day).")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ParamsError("orchestration.timezone", f"is {self.timezone!r}, not an IANA "
                              "time zone", "Use e.g. UTC or Europe/Berlin.") from exc
        if self.retries < 0:
            raise ParamsError("orchestration.retries", f"is {self.retries}", "Use 0 or more.")
        for stage, count in self.stage_retries.items():
            if not isinstance(stage, str) or type(count) is not int or count < 0:
                raise ParamsError(f"orchestration.stage_retries.{stage}", f"is {count!r}",
                                  "Map stage names to retry counts >= 0.")
        if self.retry_delay_seconds < 0:
            raise ParamsError("orchestration.retry_delay_seconds",
                              f"is {self.retry_delay_seconds}", "Use 0 or more seconds.")

    def retries_for(self, stage: str) -> int:
        return self.stage_retries.get(stage, self.retries)


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
    augment: AugmentParams
    evaluate: EvaluateParams
    export: ExportParams
    gate: GateParams
    orchestration: OrchestrationParams

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
    "augment": AugmentParams,
    "evaluate": EvaluateParams,
    "export": ExportParams,
    "gate": GateParams,
    "orchestration": OrchestrationParams,
}


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read, type-check and validate params.yaml; raise ParamsError naming the bad key."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ParamsError("(file)", f"not found at {path}",
                          "Run from the project root or pass --params.")
    raw = read_yaml(path.read_text())
    return params_from_dict(raw, root=path.parent)


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML reads ``1e-05`` (no dot) as text, as YAML 1.1 says; YAML 1.2 (and DVC, which writes
    such values for ``dvc exp run -S``) means a float. Accept the YAML 1.2 forms."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_yaml(text: str) -> dict[str, Any]:
    """Parse params.yaml text (YAML 1.2 floats such as ``1e-05`` are floats)."""
    return yaml.load(text, Loader=_Yaml12FloatLoader) or {}  # noqa: S506 - a SafeLoader


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
    hint = "Write a plain number such as 0.0001 or 1e-4." if float in allowed else ""
    raise ParamsError(key, f"must be {names}, got {value!r} ({type(value).__name__})", hint)


def _check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ParamsError(key, f"is {value}", "Use a value > 0.")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())


def as_dict(params: Params) -> dict[str, Any]:
    """The params as plain data (for logs and model cards), without ``root``."""
    return {name: dataclasses.asdict(getattr(params, name)) for name in SECTIONS}
