"""Graph surgery for the fine-tune prefix cache: cut the classifier at ``fine_tune_at``.

While fine-tuning, base layers before ``fine_tune_at`` are frozen and BatchNorm runs in inference
mode, so those layers compute the same activations every epoch. The *boundary* of the cut is every
tensor produced by a layer with index < ``fine_tune_at`` and consumed by a layer with index >=
``fine_tune_at`` (or leaving the base). MobileNetV2 has residual connections, so the boundary can
hold several tensors: at layer 100 (``block_11_expand_relu``) it is ``block_11_expand_BN``'s output
AND ``block_10_project_BN``'s output, which ``block_11_add`` consumes.

* :func:`prefix_model`: raw pixels -> boundary tensors (inference only; computed once, cached).
* :func:`top_model`: boundary tensors -> classifier output. It REUSES the classifier's layer
  objects, so training it trains the classifier itself; save the classifier afterwards.
"""

from __future__ import annotations

import keras
from keras import tree

from warmstart.modeling.model import find_base, scale_to_unit


def _producer(tensor) -> keras.layers.Layer:
    return tensor._keras_history.operation


def boundary_tensors(base: keras.Model, fine_tune_at: int) -> list:
    """The base's tensors crossing from layers < ``fine_tune_at`` to layers >= it, in layer order.

    The input layer (index 0) always counts as frozen: at ``fine_tune_at`` 0 or 1 the boundary is
    the base's (scaled) input.
    """
    position = {id(layer): index for index, layer in enumerate(base.layers)}
    cut = max(fine_tune_at, 1)
    consumed = [t for layer in base.layers[cut:] for t in tree.flatten(layer.input)]
    found = {}
    for tensor in [*consumed, *tree.flatten(base.output)]:
        if position[id(_producer(tensor))] < cut:
            found[id(tensor)] = tensor
    return sorted(found.values(), key=lambda t: position[id(_producer(t))])


def boundary_names(base: keras.Model, fine_tune_at: int) -> list[str]:
    """Names of the layers whose outputs form the boundary (for logs and the cache's info file)."""
    return [_producer(t).name for t in boundary_tensors(base, fine_tune_at)]


def prefix_model(base: keras.Model, fine_tune_at: int) -> keras.Model:
    """Raw 0-255 pixels -> the boundary tensors (same scaling as the classifier)."""
    inner = keras.Model(base.input, boundary_tensors(base, fine_tune_at), name="frozen_prefix")
    pixels = keras.Input(shape=base.input_shape[1:], name="image")
    outputs = inner(scale_to_unit()(pixels), training=False)
    return keras.Model(pixels, tree.flatten(outputs), name="prefix")


def classifier_tail(model: keras.Model) -> list[keras.layers.Layer]:
    """The classifier's layers after the base (pooling and head), in order."""
    layers = model.layers
    return layers[layers.index(find_base(model)) + 1:]


def top_model(model: keras.Model, fine_tune_at: int) -> keras.Model:
    """Boundary tensors -> the classifier's output, sharing every layer with ``model``."""
    base = find_base(model)
    boundary = boundary_tensors(base, fine_tune_at)
    inner = keras.Model(boundary, base.output, name="trainable_top")
    inputs = [keras.Input(shape=t.shape[1:], name=f"boundary_{i}")
              for i, t in enumerate(boundary)]
    outputs = inner(inputs)
    for layer in classifier_tail(model):
        outputs = layer(outputs)
    return keras.Model(inputs, outputs, name="top")
