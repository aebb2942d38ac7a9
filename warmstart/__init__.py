"""warmstart: transfer learning then fine-tuning as a reproducible DVC + Prefect pipeline.

For notebooks: ``warmstart.load(model).predict(images)``, ``warmstart.run(stage, overrides)``,
``warmstart.repro(stages, overrides)`` (``warmstart/api.py``; imported on first use, so stage
processes do not pay for it).
"""

from __future__ import annotations

from typing import Any

API = ("load", "run", "repro", "params_with", "Classifier")
__all__ = list(API)


def __getattr__(name: str) -> Any:
    if name in API:
        from warmstart import api

        return getattr(api, name)
    raise AttributeError(f"module 'warmstart' has no attribute {name!r}")
