"""Pydantic's validation errors, rewritten as ParamsError: the dotted key, the problem, the fix.

A user editing params.yaml (or running ``dvc exp run -S``) sees one actionable sentence naming
the key, never pydantic's report; the fixes come from the fields' :class:`Fix` metadata.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from warmstart.config.sections import Fix
from warmstart.errors import WarmstartError

MISSING_FIX = "Add it (see the documented params.yaml of warmstart)."
FLOAT_FIX = "Write a plain number such as 0.0001 or 1e-4."
TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str",
              "bool_type": "bool", "dict_type": "dict"}
RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
UNKNOWN_ERRORS = ("unexpected_keyword_argument", "invalid_key")


class ParamsError(WarmstartError, ValueError):
    """A value in params.yaml is missing, unknown or invalid. The message names the key."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key = key
        message = f"params.yaml: `{key}` {problem}"
        super().__init__(f"{message}. {fix}" if fix else message)


def unknown_key(key: str, known: typing.Iterable[str]) -> ParamsError:
    return ParamsError(key, "is not a known key", f"Known keys here: {', '.join(sorted(known))}.")


def params_error(exc: ValidationError, model: type) -> ParamsError:
    """The first error of ``exc`` (validating ``model``) as a ParamsError. Unknown keys come
    first: a typo also makes the real key 'missing', and the known keys show the fix."""
    errors = exc.errors()
    error = next((e for e in errors if e["type"] in UNKNOWN_ERRORS), errors[0])
    owner, field, inside = _locate(model, error["loc"])
    key = ".".join(str(part) for part in error["loc"] if part != "[key]")
    if error["type"] in UNKNOWN_ERRORS:
        return unknown_key(key, set(_fields(owner)) - {"root"})
    problem, fix = _describe(error, field, inside)
    extra = (error.get("ctx") or {}).get("key") if error["type"] == "params" else ""
    return ParamsError(".".join(part for part in (key, extra) if part), problem, fix)


def _fields(cls: Any) -> dict[str, FieldInfo]:
    return getattr(cls, "__pydantic_fields__", {})


def _locate(model: type, loc: tuple[int | str, ...]) -> tuple[type, FieldInfo | None, bool]:
    """The innermost section on ``loc``, its field there (None for a whole section or an unknown
    key) and whether ``loc`` goes on inside that field (a value of a mapping)."""
    owner = model
    for index, part in enumerate(loc):
        field = _fields(owner).get(str(part))
        if field is None:
            return owner, None, False
        if not _fields(field.annotation):
            return owner, field, index < len(loc) - 1
        owner = field.annotation
    return owner, None, False


def _describe(error: ErrorDetails, field: FieldInfo | None, inside: bool) -> tuple[str, str]:
    """Problem and fix of one error: ``is <value>`` or ``must be <type>``, then the field's fix."""
    kind, value = error["type"], error["input"]
    fix = next((m for m in field.metadata if isinstance(m, Fix)), Fix("")) if field else Fix("")
    if kind == "params":
        ctx = error.get("ctx") or {}
        return ctx["problem"], ctx["fix"] or fix.text
    if kind == "missing":
        return "is missing", MISSING_FIX
    if inside and fix.text:
        return f"is {value!r}", fix.text
    if kind == "literal_error" and not isinstance(value, str):
        kind = "string_type"  # every choice is a word: say so, as for any other str key
    if kind in TYPE_NAMES:
        return _type_problem(kind, value, field), FLOAT_FIX if kind == "float_type" else ""
    if kind == "literal_error" and field is not None:
        return f"is {value!r}", f"Use one of {', '.join(typing.get_args(field.annotation))}."
    if kind == "dataclass_type":
        return _not_a_mapping(value)
    if kind in RANGE_ERRORS:
        return f"is {_shown(value, field)}{fix.detail}", fix.text
    return f"is {value!r}: {error['msg']}", fix.text


def _not_a_mapping(value: Any) -> tuple[str, str]:
    if value is None:  # a section whose keys are all commented out
        return "is empty", "Add its keys (see the documented params.yaml of warmstart)."
    return f"must be a mapping, not {type(value).__name__}", ""


def _type_problem(kind: str, value: Any, field: FieldInfo | None) -> str:
    nullable = field is not None and type(None) in _kinds(field.annotation)
    names = TYPE_NAMES[kind] + (" or null" if nullable else "")
    return f"must be {names}, got {value!r} ({type(value).__name__})"


def _shown(value: Any, field: FieldInfo | None) -> Any:
    """The value as the field holds it: an int given for a float reads ``1.0``."""
    is_float = field is not None and float in _kinds(field.annotation)
    return float(value) if is_float and type(value) is int else value


def _kinds(hint: Any) -> tuple[Any, ...]:
    """The plain types a hint allows: ``Annotated[float, ...] | None`` -> (float, NoneType)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _kinds(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        return tuple(kind for arg in typing.get_args(hint) for kind in _kinds(arg))
    return (hint,)
