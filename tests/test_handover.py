"""The validate → preprocess hand-over keeps class names as text, whatever they look like."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from warmstart.data.validated import read_validated, write_validated


@pytest.mark.parametrize("names", [["0", "1"], ["false", "true"], ["01", "02"]])
def test_class_names_that_look_like_numbers_or_booleans_stay_text(tmp_path: Path,
                                                                  names: list[str]) -> None:
    """Regression: pandas read a label column of 0/1 (or true/false) back as numbers, and
    preprocess could not find them among the class names."""
    table = pd.DataFrame({"path": [f"train/{n}/{i}.jpg" for i, n in enumerate(names)],
                          "split": ["train"] * len(names), "label": names,
                          "quarantined": [0] * len(names)})
    write_validated(tmp_path / "validated", table, names)
    read, classes = read_validated(tmp_path / "validated")
    assert list(read["label"]) == classes == names
