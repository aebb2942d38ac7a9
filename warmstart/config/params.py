"""`params.yaml`, read once into frozen, typed pydantic dataclasses that validate every value.

Every stage calls :func:`load_params` first, so a bad or missing value fails the run before any
work is done, with the offending key named and the fix spelled out. The sections and their
checks live in ``sections``; the wording of the errors in ``messages``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError, model_validator

from warmstart.config.messages import ParamsError, params_error, unknown_key
from warmstart.config.sections import (
    AugmentParams,
    BaseParams,
    DataParams,
    EvaluateParams,
    ExportParams,
    FinetuneParams,
    GateParams,
    HeadParams,
    OrchestrationParams,
    PathsParams,
    PreprocessParams,
    StoreParams,
    TrainParams,
    TransferParams,
    ValidateParams,
    invalid,
    is_url,
    section,
)
from warmstart.modeling.backbones import BACKBONES

__all__ = [
    "DEFAULT_PARAMS_FILE", "SECTIONS", "AugmentParams", "BaseParams",
    "DataParams", "EvaluateParams", "ExportParams", "FinetuneParams", "GateParams", "HeadParams",
    "OrchestrationParams", "Params", "ParamsError", "PathsParams", "PreprocessParams",
    "StoreParams", "TrainParams", "TransferParams", "ValidateParams", "as_dict", "is_url",
    "load_params", "params_from_dict", "read_yaml",
]

DEFAULT_PARAMS_FILE = "params.yaml"


@section
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
    store: StoreParams
    orchestration: OrchestrationParams

    def path(self, key: str) -> Path:
        """Absolute path of ``paths.<key>``."""
        return self.root / getattr(self.paths, key)

    @model_validator(mode="after")
    def _check_base_fits(self) -> Params:
        """The image size and the cut fit the base (three sections: known once all are read)."""
        family = BACKBONES[self.base.architecture]
        if self.preprocess.image_size < family.min_size:
            raise invalid(f"is {self.preprocess.image_size}",
                          f"{family.name} needs inputs of at least {family.min_size} pixels.",
                          key="preprocess.image_size")
        at = self.finetune.fine_tune_at
        if type(at) is int and at >= family.layers:
            raise invalid(f"is {at}, outside the base's layers", (
                f"{family.name} without its top has {family.layers} layers: use 0 to "
                f"{family.layers - 1}, a layer name (e.g. {family.layer_100!r}, layer 100) or "
                "a fraction of the layers in (0, 1)."), key="finetune.fine_tune_at")
        return self

    @model_validator(mode="after")
    def _check_imagenet_variant(self) -> Params:
        """Keras downloads imagenet weights only for some alphas and sizes (two sections)."""
        family = BACKBONES[self.base.architecture]
        if self.base.weights != "imagenet":
            return self
        if family.has_alpha and self.base.alpha not in family.imagenet_alphas:
            raise invalid(f"is {self.base.alpha}; Keras has no imagenet weights of "
                          f"{family.name} for it", f"Use one of {family.imagenet_alphas}.",
                          key="base.alpha")
        sizes = family.imagenet_sizes
        if sizes is not None and self.preprocess.image_size not in sizes:
            raise invalid(
                f"is {self.preprocess.image_size}; Keras has no imagenet weights of "
                f"{family.name} for it", f"Use one of {sizes} or a weights file.",
                key="preprocess.image_size")
        return self


#: Section name -> its class, in params.yaml's order.
SECTIONS: dict[str, type] = {name: field.annotation
                             for name, field in Params.__pydantic_fields__.items()
                             if name != "root"}
_PARAMS = TypeAdapter(Params)


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
    """Validate parsed params.yaml content; every section and key must be there."""
    if not isinstance(raw, dict):
        raise ParamsError("(top level)", "is not a mapping")
    if "root" in raw:  # a field of Params, but set by the code, never by params.yaml
        raise unknown_key("root", SECTIONS)
    try:
        return _PARAMS.validate_python({**raw, "root": Path(root)},
                                       context={"root": Path(root)})
    except ValidationError as exc:
        raise params_error(exc, Params) from None


def as_dict(params: Params) -> dict[str, Any]:
    """The params as plain data (for logs, fingerprints and model cards), without ``root``."""
    return {name: dataclasses.asdict(getattr(params, name)) for name in SECTIONS}
