"""Without internet, what needs it fails with a message that says so and names the param."""

from __future__ import annotations

from pathlib import Path

import pytest
from keras.src.applications import mobilenet_v2

from warmstart.config.params import BaseParams
from warmstart.modeling.model import ModelError, build_base

#: What Keras' ``get_file`` raises when the host cannot be reached (seen on this machine).
OFFLINE = ("URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
           "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5: "
           "None -- [Errno -2] Name or service not known")


def test_imagenet_weights_that_cannot_be_downloaded_name_base_weights(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def unreachable(*args: object, **kwargs: object) -> str:
        raise Exception(OFFLINE)  # noqa: TRY002 - what Keras itself raises

    monkeypatch.setattr(mobilenet_v2.file_utils, "get_file", unreachable)
    variant = BaseParams(architecture="MobileNetV2", alpha=0.35, weights="imagenet",
                         sha256=None)
    with pytest.raises(ModelError, match=r"base.weights is `imagenet`.*could not download.*"
                       r"Name or service not known.*local Keras weights file"):
        build_base(96, variant, tmp_path)


def test_other_keras_failures_are_not_disguised_as_download_failures(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("something else")

    monkeypatch.setattr(mobilenet_v2.file_utils, "get_file", broken)
    with pytest.raises(RuntimeError, match="something else"):
        build_base(96, BaseParams(architecture="MobileNetV2", alpha=0.35, weights="imagenet",
                                  sha256=None), tmp_path)
