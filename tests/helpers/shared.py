"""Where things are: this checkout (``REPO``) and the real data and weights in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
SHARED_ZIP = SHARED / "datasets" / "cats_and_dogs_filtered.zip"
SHARED_WEIGHTS_035 = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top.h5"
SHARED_WEIGHTS_100 = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5"

needs_shared = pytest.mark.skipif(
    not SHARED_ZIP.is_file() or not SHARED_WEIGHTS_035.is_file(),
    reason=f"real data and weights not found in {SHARED} (see README: ../shared beside the "
    "checkout holds the tutorial dataset and ImageNet weights)")
