"""The backbone families ``base.architecture`` can name: every fact about a family in one table.

Plain data, no TensorFlow: ``config/sections.py`` validates params.yaml against it (cheaply, before
any work), ``modeling/model.py`` builds and recognises the bases from it. Each row is checked
against Keras by ``tests/test_backbones.py`` (layer count, example layer, model name, scaling).

Input scaling (the saved model always takes raw 0-255 pixels; read in the Keras source of each
``keras.applications`` module):

* ``unit``: the family was trained on [-1, 1] and has no preprocessing layer of its own
  (MobileNetV2; ResNet50V2, whose ``preprocess_input`` is mode ``tf``): warmstart puts a
  ``Rescaling(1/127.5, offset=-1)`` layer named ``scale_to_unit`` in front of the base.
* ``inside``: the family's constructor adds its own preprocessing layers at the bottom of the base
  (``include_preprocessing=True``, Keras' default), which take 0-255: MobileNetV3 a
  ``Rescaling`` to [-1, 1], EfficientNetV2-B* ``Rescaling(1/255)`` + ImageNet mean/std
  ``Normalization``, ConvNeXt a mean/std ``Normalization`` (its "prestem").
"""

from __future__ import annotations

import dataclasses
from typing import Literal

#: Input scaling of a family (see the module docstring).
Scaling = Literal["unit", "inside"]
#: The alphas and input sizes for which Keras publishes ``weights="imagenet"`` MobileNetV2 files.
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)
#: The alphas Keras has ImageNet MobileNetV3 weights for (any input size: it loads the 224 ones).
MOBILENET_V3_ALPHAS = (0.75, 1.0)
#: ``base.alpha`` of the families without a width multiplier (the only value they accept).
NO_ALPHA = 1.0


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One ``keras.applications`` family (``include_top=False``), as warmstart uses it.

    ``name`` is both the value of ``base.architecture`` and the ``keras.applications``
    constructor; ``model_name`` the name Keras gives the built model (how ``find_base`` spots the
    base inside a classifier); ``layers`` its layer count at any input size and alpha;
    ``layer_100`` the name of its layer 100 (the default ``finetune.fine_tune_at``), for
    messages; ``imagenet_alphas`` the alphas Keras has ImageNet weights for,
    None where ``base.alpha`` does not apply; ``imagenet_sizes`` the input sizes it has them for,
    None for any size.
    """

    name: str
    model_name: str
    scaling: Scaling
    native_size: int
    min_size: int
    layers: int
    layer_100: str
    imagenet_alphas: tuple[float, ...] | None
    imagenet_sizes: tuple[int, ...] | None

    @property
    def has_alpha(self) -> bool:
        """Whether ``base.alpha`` (the width multiplier) applies to this family."""
        return self.imagenet_alphas is not None


def _efficientnet_v2(variant: str, native_size: int, layers: int, layer_100: str) -> Backbone:
    return Backbone(f"EfficientNetV2{variant}", f"efficientnetv2-{variant.lower()}", "inside",
                    native_size, 32, layers, layer_100, None, None)


#: ``base.architecture`` -> its family, in the order the README's table lists them.
BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("MobileNetV2", "mobilenetv2", "unit", 224, 32, 154, "block_11_expand_relu",
             MOBILENET_V2_ALPHAS, MOBILENET_V2_SIZES),
    Backbone("MobileNetV3Small", "MobilenetV3small", "inside", 224, 32, 157,
             "expanded_conv_7_squeeze_excite_avg_pool", MOBILENET_V3_ALPHAS, None),
    Backbone("MobileNetV3Large", "MobilenetV3large", "inside", 224, 32, 187,
             "expanded_conv_8_add", MOBILENET_V3_ALPHAS, None),
    _efficientnet_v2("B0", 224, 270, "block5b_project_conv"),
    _efficientnet_v2("B1", 240, 334, "block4d_activation"),
    _efficientnet_v2("B2", 260, 349, "block4d_activation"),
    _efficientnet_v2("B3", 300, 409, "block4d_activation"),
    Backbone("ResNet50V2", "resnet50v2", "unit", 224, 32, 190, "conv4_block2_1_conv", None, None),
    Backbone("ConvNeXtTiny", "convnext_tiny", "inside", 224, 32, 133,
             "convnext_tiny_stage_2_block_7_pointwise_conv_2", None, None),
)}
ARCHITECTURES = tuple(BACKBONES)
