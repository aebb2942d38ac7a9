"""Graph surgery for the fine-tune prefix cache: cut the classifier at ``fine_tune_at``.

While fine-tuning, base layers before ``fine_tune_at`` are frozen and BatchNorm runs in inference
mode, so those layers compute the same activations every epoch. The *boundary* of the cut is every
tensor produced before layer ``fine_tune_at`` and consumed from it on (or leaving the base).
MobileNetV2 has residual connections, so the boundary can hold several tensors: at layer 100
(``block_11_expand_relu``) it is ``block_11_expand_BN``'s output AND ``block_10_project_BN``'s
output, which ``block_11_add`` consumes.

"Before" is in the order of the base's *operations*, which is topological (Keras sorts them by
depth) and holds its layers in ``base.layers`` order. Some families also hold operations that are
not layers (``x + 3``, ``a * b`` and ``a + b`` written on tensors: MobileNetV3's hard sigmoid,
ConvNeXt's residual adds): they have no weights, and fall on the side of the cut where they
come in that order, so a boundary tensor may be one of their outputs.

* :func:`prefix_model`: raw pixels -> boundary tensors (inference only; computed once, cached).
* :func:`top_model`: boundary tensors -> classifier output. It REUSES the classifier's layer
  objects, so training it trains the classifier itself; save the classifier afterwards.
"""

from __future__ import annotations

import keras
from keras import tree

from warmstart.modeling.model import FineTuneAt, base_input, find_base, fine_tune_index


def _producer(tensor) -> keras.Operation:
    return tensor._keras_history.operation


def graph_nodes(model: keras.Model) -> list:
    """Every call (node) in ``model``'s graph, found from its outputs back to its inputs.

    The nodes that made the tensors, not ``layer.input``: that of a nested model (ConvNeXt's
    Sequential stages) is its own internal input, not the tensor it was called on here."""
    nodes, pending = {}, list(tree.flatten(model.output))
    while pending:
        operation, index, _ = pending.pop()._keras_history
        node = operation._inbound_nodes[index]
        if id(node) not in nodes:
            nodes[id(node)] = node
            pending.extend(node.input_tensors)
    return list(nodes.values())


def boundary_tensors(base: keras.Model, fine_tune_at: FineTuneAt) -> list:
    """The base's tensors crossing from before layer ``fine_tune_at`` to it and after, in the
    order of their operations.

    The input layer (index 0) always counts as frozen: at ``fine_tune_at`` 0 or 1 the boundary is
    the base's input (scaled, for the families scaled in front of the base).
    """
    position = {id(op): index for index, op in enumerate(base.operations)}
    cut = position[id(base.layers[max(fine_tune_index(base, fine_tune_at), 1)])]
    consumed = [t for node in graph_nodes(base) if position[id(node.operation)] >= cut
                for t in node.input_tensors]
    found = {id(t): t for t in [*consumed, *tree.flatten(base.output)]
             if position[id(_producer(t))] < cut}
    return sorted(found.values(), key=lambda t: (position[id(_producer(t))],
                                                 t._keras_history.tensor_index))


def boundary_names(base: keras.Model, fine_tune_at: FineTuneAt) -> list[str]:
    """Names of the layers whose outputs form the boundary (for logs and the cache's info file)."""
    return [_producer(t).name for t in boundary_tensors(base, fine_tune_at)]


def prefix_model(base: keras.Model, fine_tune_at: FineTuneAt) -> keras.Model:
    """Raw 0-255 pixels -> the boundary tensors (same scaling as the classifier)."""
    inner = keras.Model(base.input, boundary_tensors(base, fine_tune_at), name="frozen_prefix")
    pixels = keras.Input(shape=base.input_shape[1:], name="image")
    outputs = inner(base_input(base, pixels), training=False)
    return keras.Model(pixels, tree.flatten(outputs), name="prefix")


def classifier_tail(model: keras.Model) -> list[keras.layers.Layer]:
    """The classifier's layers after the base (pooling and head), in order."""
    layers = model.layers
    return layers[layers.index(find_base(model)) + 1:]


def top_model(model: keras.Model, fine_tune_at: FineTuneAt) -> keras.Model:
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
