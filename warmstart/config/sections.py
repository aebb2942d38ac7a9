"""The sections of params.yaml as frozen pydantic dataclasses: each field's type, range and fix.

No field has a default: params.yaml is the single source of truth, so a key missing there is an
error, never a value from the code. Pydantic *dataclasses* rather than ``BaseModel``: callers use
``dataclasses.replace``/``asdict`` on them, and ``BaseModel``'s own ``validate`` and ``schema``
would shadow the section ``validate`` and the path ``paths.schema``.
"""

from __future__ import annotations

import dataclasses
import shlex
import urllib.parse
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from warmstart.layout import SPLITS, STAT_FEATURES
from warmstart.modeling.backbones import ARCHITECTURES, BACKBONES, NO_ALPHA

WEIGHTS_KEYWORDS = ("imagenet", "none")

#: Frozen, and an unknown key is an error. Strictness is per field (``Strict*``): a strict config
#: would also refuse the plain dicts that sections are read from.
section = dataclass(frozen=True, config=ConfigDict(extra="forbid"))


@dataclasses.dataclass(frozen=True)
class Fix:
    """Field metadata: how to repair a value out of range (the second sentence of ParamsError);
    ``detail`` follows ``is <value>`` in the first one."""

    text: str
    detail: str = ""


def invalid(problem: str, fix: str = "", key: str = "") -> PydanticCustomError:
    """A check's failure, turned into ParamsError by ``messages``. ``key`` extends the location
    pydantic reports (a field of a model validator, or a dotted key from ``Params``); an empty
    ``fix`` falls back to the field's :class:`Fix`."""
    return PydanticCustomError("params", "{problem}", {"problem": problem, "fix": fix, "key": key})


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def project_root(info: ValidationInfo) -> Path | None:
    """params.yaml's folder while its content is validated (the context of ``params_from_dict``);
    None for sections built in code (``dataclasses.replace``), which skip the checks about the
    project's files: a benchmark may point outputs to a temporary folder."""
    return (info.context or {}).get("root")


def _relative(text: str, info: ValidationInfo) -> str:
    path = Path(text)
    outside = path.is_absolute() or ".." in path.parts or not path.parts
    if outside and project_root(info) is not None:
        raise invalid(f"is {str(path)!r}", "Pipeline outputs live inside the project: use a "
                      "relative path without `..`.")
    return text


def _sha256(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text.lower()):
        raise invalid(f"is {text!r}, not 64 hex digits")
    return text


def _source_url(source: str) -> str:
    """The URL rules of ``data.source``; a local path is checked by ``Params`` (needs the root)."""
    if "://" in source and not is_url(source):
        raise invalid(f"uses an unsupported scheme: {source!r}",
                      "Use an http(s) URL, a local .zip file or a local folder.")
    if is_url(source) and urllib.parse.urlsplit(source).password is not None:
        raise invalid("contains a password", "Credentials never go in params.yaml (it is "
                      "committed and logged): use a URL without user:password@.")
    return source


def _beam_flags(options: str) -> str:
    try:
        flags = shlex.split(options)
    except ValueError as exc:
        raise invalid(f"cannot be parsed: {exc}") from exc
    bad = [flag for flag in flags if not flag.startswith("--")]
    if bad:
        raise invalid(f"has {bad[0]!r}, not a --flag", "Give Beam pipeline flags, e.g. "
                      "'--runner=DirectRunner --direct_running_mode=multi_processing "
                      "--direct_num_workers=2'.")
    return options


def _cron(expression: str) -> str:
    if len(expression.split()) != 5:
        raise invalid(f"is {expression!r}, not 5 cron fields", "Use minute hour day-of-month "
                      "month day-of-week, e.g. '0 2 * * *' (02:00 every day).")
    return expression


def _time_zone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise invalid(f"is {name!r}, not an IANA time zone",
                      "Use e.g. UTC or Europe/Berlin.") from exc
    return name


def _rate_or_auto(value: float | str) -> float | str:
    if value == "auto" or (isinstance(value, float) and value > 0):
        return value
    raise invalid(f"is {value!r}", "Use a learning rate > 0 (e.g. 0.0001), or auto: the best of "
                  "transfer.learning_rates on the validation split.")


RelPath = Annotated[StrictStr, AfterValidator(_relative)]
Sha256 = Annotated[StrictStr, AfterValidator(_sha256)]
PositiveInt = Annotated[StrictInt, Field(gt=0), Fix("Use a value > 0.")]
PositiveFloat = Annotated[StrictFloat, Field(gt=0), Fix("Use a value > 0.")]
NonNegativeFloat = Annotated[StrictFloat, Field(ge=0), Fix("Use a value >= 0.")]
OptionalNonNegativeFloat = Annotated[StrictFloat | None, Field(ge=0), Fix("Use a value >= 0.")]
Fraction = Annotated[StrictFloat, Field(ge=0, le=1)]


@section
class PathsParams:
    """Every file and folder the pipeline reads or writes; dvc.yaml interpolates the same keys."""

    raw: RelPath
    downloads: RelPath
    split_assignments: RelPath
    schema: RelPath
    validated: RelPath
    validation_report: RelPath
    validation_html: RelPath
    validation_baseline: RelPath
    validate_metrics: RelPath
    validate_details: RelPath
    processed: RelPath
    features: RelPath
    prefix: RelPath
    transfer_model: RelPath
    finetune_model: RelPath
    transfer_predictions: RelPath
    finetune_predictions: RelPath
    transfer_metrics: RelPath
    finetune_metrics: RelPath
    evaluate_metrics: RelPath
    evaluate_details: RelPath
    transfer_details: RelPath
    transfer_history: RelPath
    finetune_history: RelPath
    evaluate_plots: RelPath
    evaluation_html: RelPath
    label_issues: RelPath
    export_model: RelPath
    export_metrics: RelPath
    export_details: RelPath
    model_card: RelPath
    promoted_model: RelPath
    gate_metrics: RelPath
    gate_details: RelPath
    checkpoints: RelPath
    store: RelPath
    ingest_details: RelPath
    preprocess_details: RelPath
    features_details: RelPath


#: ``data.layout``: how the source is organised (``auto``: detected by ingest).
LAYOUTS = ("auto", "split_folders", "class_folders", "csv")


def _split_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """One share per canonical split (train, validation, test), summing to 1, train > 0."""
    if set(fractions) != set(SPLITS):
        raise invalid(f"has keys {sorted(fractions)}", f"Give exactly {', '.join(SPLITS)}.")
    if any(value < 0 for value in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise invalid(f"is {fractions}", "Use shares >= 0 that sum to 1, e.g. "
                      "{train: 0.8, validation: 0.1, test: 0.1}.")
    if fractions["train"] == 0:
        raise invalid("gives train no images", "Give train a share > 0.")
    return {split: float(fractions[split]) for split in SPLITS}


@section
class DataParams:
    """Where the data comes from and how the source is organised; after ingest every stage sees
    the canonical splits of ``warmstart.layout.SPLITS`` whatever the source calls them."""

    source: Annotated[StrictStr, AfterValidator(_source_url)]
    sha256: Annotated[Sha256 | None, Fix("Give the archive's `sha256sum` or null.")]
    layout: Literal[LAYOUTS]
    train_split: StrictStr
    validation_split: StrictStr
    test_split: StrictStr
    test_fraction: Annotated[StrictFloat, Field(ge=0, lt=1), Fix(
        "Use the share of each class's validation images held out as test, in [0, 1).")]
    split_fractions: Annotated[dict[StrictStr, Annotated[StrictFloat | StrictInt, Field(ge=0)]],
                               AfterValidator(_split_fractions),
                               Fix("Use shares >= 0 of train, validation and test.")]
    csv: StrictStr
    max_download_bytes: PositiveInt
    max_extract_bytes: PositiveInt

    @model_validator(mode="after")
    def _check_splits_and_source(self, info: ValidationInfo) -> DataParams:
        names = [("train_split", self.train_split),
                 ("validation_split", self.validation_split), ("test_split", self.test_split)]
        for index, (key, name) in enumerate(names):
            if name in [earlier for _, earlier in names[:index]]:
                raise invalid(f"is {name!r}, the name of another split",
                              "Name three different split folders.", key=key)
        root = project_root(info)
        if root is not None and not is_url(self.source):
            self._check_local_source(root / self.source)
        return self

    @staticmethod
    def _check_local_source(path: Path) -> None:
        if not path.exists():
            raise invalid(f"points to {path}, which does not exist", "Fix the path (relative "
                          "to params.yaml) or use an http(s) URL.", key="source")
        if path.is_file() and path.suffix.lower() != ".zip":
            raise invalid(f"is a file but not a .zip: {path}", "Give a .zip archive or a folder "
                          "(split folders, class folders or a CSV of labels).", key="source")


@section
class ValidateParams:
    policy: Literal["fail", "quarantine"]
    workers: PositiveInt
    max_image_pixels: PositiveInt
    max_file_bytes: PositiveInt
    min_side: PositiveInt
    max_aspect: Annotated[StrictFloat, Field(ge=1),
                          Fix("Use a ratio long side / short side >= 1.")]
    min_contrast: NonNegativeFloat
    near_duplicate_distance: Annotated[StrictInt, Field(ge=-1, le=64), Fix(
        "Use a pHash Hamming distance in [0, 64], or -1 to turn it off.")]
    min_images_per_class: PositiveInt
    warn_class_ratio: Annotated[StrictFloat, Field(ge=1),
                                Fix("Use a ratio largest / smallest class >= 1.")]
    max_quarantine_fraction: Annotated[Fraction, Fix("Use a fraction in [0, 1].")]
    skew_linf: OptionalNonNegativeFloat
    skew_jsd: OptionalNonNegativeFloat
    drift_linf: OptionalNonNegativeFloat
    drift_jsd: OptionalNonNegativeFloat
    noise_factor: NonNegativeFloat
    noise_samples: PositiveInt
    drift_blocking: Annotated[list[Literal[STAT_FEATURES]], Fix(
        f"List features of the statistics: {', '.join(STAT_FEATURES)}.")]
    beam_options: Annotated[StrictStr, AfterValidator(_beam_flags)]
    max_thumbnails: PositiveInt


@section
class PreprocessParams:
    #: At least the base's minimum input size (checked by ``Params``, which knows the base).
    image_size: PositiveInt
    shard_size: PositiveInt


@section
class BaseParams:
    """The frozen base: which ``keras.applications`` family (``modeling/backbones.py``), its
    width and its weights."""

    architecture: Literal[ARCHITECTURES]
    alpha: Annotated[StrictFloat, Field(gt=0), Fix("Use a width multiplier > 0.")]
    weights: StrictStr
    sha256: Annotated[Sha256 | None, Fix("Give the weights file's `sha256sum` or null.")]

    def weights_path(self, root: Path) -> Path | None:
        """The weights file, or None for the keywords ``imagenet`` and ``none``."""
        return None if self.weights in WEIGHTS_KEYWORDS else root / self.weights

    @model_validator(mode="after")
    def _check_alpha(self) -> BaseParams:
        """Only MobileNets have a width multiplier: another alpha must not pass unnoticed."""
        if not BACKBONES[self.architecture].has_alpha and self.alpha != NO_ALPHA:
            with_alpha = [name for name, family in BACKBONES.items() if family.has_alpha]
            raise invalid(f"is {self.alpha}, but {self.architecture} has no width multiplier",
                          f"Set base.alpha: {NO_ALPHA} (alpha applies to "
                          f"{', '.join(with_alpha)} only).", key="alpha")
        return self

    @model_validator(mode="after")
    def _check_weights_file(self, info: ValidationInfo) -> BaseParams:
        """A weights path names an existing file: a typo must not mean random weights."""
        root = project_root(info)
        path = None if root is None else self.weights_path(root)
        if path is not None and not path.is_file():
            raise invalid(
                f"points to {path}, which is not a file", "Give an existing Keras "
                f".h5/.weights.h5 file of {self.architecture} without its top, `imagenet` to "
                "download it, or `none` for random weights (tests only).", key="weights")
        return self


@section
class HeadParams:
    dropout: Annotated[StrictFloat, Field(ge=0, lt=1), Fix("Use a value in [0, 1).")]


@section
class TrainParams:
    batch_size: PositiveInt
    seed: Annotated[StrictInt, Field(ge=0), Fix("Use a seed >= 0.")]
    deterministic: StrictBool
    strategy: Literal["default", "mirrored", "multi_worker"]
    #: ``balanced``: each training image weighs n / (k * n_c) in the loss (n training images,
    #: k classes, n_c of its class), from the training split's counts; ``none``: all weigh 1.
    class_weight: Literal["none", "balanced"]
    #: The validation figure early stopping, the learning-rate search and the choice between the
    #: two stages' models are made on (``val_loss``: lower is better; ``val_accuracy``: higher).
    monitor: Literal["val_loss", "val_accuracy"]
    min_delta: Annotated[StrictFloat, Field(ge=0), Fix(
        "Use the least change of train.monitor that counts as an improvement (>= 0).")]
    label_smoothing: Annotated[StrictFloat, Field(ge=0, lt=1), Fix(
        "Use a smoothing in [0, 1), e.g. 0.1 (0: off).")]


Patience = Annotated[StrictInt | None, Field(gt=0), Fix(
    "Use the number of epochs without improvement of train.monitor before stopping (> 0), or "
    "null to train every epoch and keep the last.")]


@section
class TransferParams:
    epochs: PositiveInt
    #: A number, or ``auto``: the best of ``learning_rates`` on the validation split (trials on
    #: the cached features, seconds each; ``modeling/lr_search.py``).
    learning_rate: Annotated[StrictFloat | StrictStr, AfterValidator(_rate_or_auto)]
    learning_rates: Annotated[list[PositiveFloat], Field(min_length=1), Fix(
        "List the candidate head learning rates of learning_rate `auto`, e.g. "
        "[0.0001, 0.001, 0.01].")]
    patience: Patience


FINE_TUNE_AT_FIX = ("Give a layer index (0 up to the base's layer count - 1), a layer name "
                    "of the base or a fraction of its layers in (0, 1), e.g. 100, "
                    "'block_11_expand_relu' or 0.65.")


def _fine_tune_at(value: object) -> int | float | str:
    """The three forms of ``finetune.fine_tune_at``; the base's own range and names are checked
    where the base is known (``Params`` for the layer count, the stages for the names)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid(f"is {value!r} ({type(value).__name__})", FINE_TUNE_AT_FIX)
    if isinstance(value, int) and value < 0:
        raise invalid(f"is {value}, outside the base's layers", FINE_TUNE_AT_FIX)
    if isinstance(value, float) and not 0 < value < 1:
        raise invalid(f"is {value}, not a fraction of the base's layers in (0, 1)",
                      FINE_TUNE_AT_FIX)
    if isinstance(value, str) and not value.strip():
        raise invalid("is an empty layer name", FINE_TUNE_AT_FIX)
    return value


@section
class FinetuneParams:
    #: A layer index (int), a layer name of the base (str) or a fraction of its layers (float).
    fine_tune_at: Annotated[int | float | str, PlainValidator(_fine_tune_at)]
    epochs: Annotated[StrictInt, Field(ge=0), Fix("Use 0 or more epochs.")]
    learning_rate: PositiveFloat
    #: ``constant``: ``learning_rate`` every step; ``cosine``: from it down to 0 along a half
    #: cosine over the ``epochs`` (``modeling/model.py``, :func:`fine_tune_rate`).
    schedule: Literal["constant", "cosine"]
    patience: Patience
    cache_dtype: Literal["float16", "float32"]


@section
class AugmentParams:
    """Random augmentation while training (Keras preprocessing layers, inactive at inference)."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"]
    rotation: Annotated[StrictFloat, Field(ge=0, le=0.5),
                        Fix("Use a fraction of a full turn in [0, 0.5] (0: off).")]
    zoom: Annotated[StrictFloat, Field(ge=0, lt=1),
                    Fix("Use a fraction of the image size in [0, 1) (0: off).")]

    @property
    def enabled(self) -> bool:
        return self.flip != "none" or self.rotation > 0 or self.zoom > 0


@section
class EvaluateParams:
    threshold: Annotated[StrictFloat, Field(gt=0, lt=1),
                         Fix("Use a decision threshold in (0, 1).")]
    #: The validation figure the candidate (transfer or fine-tuned model) is chosen on.
    select_on: Literal["accuracy", "balanced_accuracy", "macro_f1", "loss"]
    #: Most images per gallery of reports/evaluation.html (top losses, changed verdicts, label
    #: issues): bounds the page's size and the thumbnails made.
    max_thumbnails: PositiveInt
    calibration_bins: Annotated[StrictInt, Field(ge=2), Fix(
        "Use at least 2 confidence bins, e.g. 10.")]
    #: Folds of the out-of-fold head whose predictions rank the training split's label issues.
    label_issue_folds: Annotated[StrictInt, Field(ge=2), Fix(
        "Use at least 2 folds (5 is usual); each class needs as many training images.")]
    #: C of the out-of-fold logistic regression (inverse regularisation strength).
    label_issue_c: PositiveFloat
    max_label_issues: PositiveInt


@section
class ExportParams:
    int8: StrictBool
    float32_tolerance: Annotated[StrictFloat, Field(gt=0, lt=1), Fix(
        "Use the largest allowed |probability difference| in (0, 1), e.g. 0.0001.")]
    int8_min_agreement: Annotated[Fraction, Fix(
        "Use a top-1 agreement fraction in [0, 1], e.g. 0.995.")]


@section
class GateParams:
    """The promotion bounds, all on the TEST split (never used for a choice before the gate)."""

    min_gain_over_baseline: Annotated[StrictFloat | None, Field(ge=0, le=1), Fix(
        "Use the accuracy margin over the majority-class baseline in [0, 1] (0: strictly "
        "better), or null to skip this check.")]
    min_accuracy: Annotated[StrictFloat | None, Field(ge=0, le=1), Fix(
        "Use a test accuracy in [0, 1], or null for no absolute bar.")]
    max_drop: Annotated[Fraction, Fix("Use an accuracy difference in [0, 1] (0: never worse).")]


@section
class StoreParams:
    """The per-image store (``warmstart/store.py``): on or off, and its size limit. Neither
    changes a stage's outputs, so no DVC stage depends on this section."""

    enabled: StrictBool
    max_bytes: Annotated[StrictInt, Field(gt=0), Fix(
        "Use the most bytes the store may hold, e.g. 20000000000 (20 GB); to empty it, delete "
        "the paths.store folder.")]


@section
class OrchestrationParams:
    """Prefect flows (flows/, tasks/): schedule and retries. No DVC stage depends on it."""

    cron: Annotated[StrictStr, AfterValidator(_cron)]
    timezone: Annotated[StrictStr, AfterValidator(_time_zone)]
    retries: Annotated[StrictInt, Field(ge=0), Fix("Use 0 or more.")]
    stage_retries: Annotated[dict[StrictStr, Annotated[StrictInt, Field(ge=0)]],
                             Fix("Map stage names to retry counts >= 0.")]
    retry_delay_seconds: Annotated[StrictFloat, Field(ge=0), Fix("Use 0 or more seconds.")]

    def retries_for(self, stage: str) -> int:
        return self.stage_retries.get(stage, self.retries)
