"""The network as an ordered mapping of nodes: ``model.layers`` in YAML, or generated from
``num_layers`` / ``units`` (the default MLP). Each node names a registered type
(``ffrun.experiment.nodes.NODE_TYPES``), its
parameters and its ``inputs`` (earlier nodes; ``input`` is the data). The builder checks every node
(its type, its keys, its inputs, the shapes between them) and makes the layers in order.

```yaml
model:
  layers:
    conv1: {type: conv2d, filters: 32, inputs: [input]}
    norm1: {type: prenorm, kind: rms, inputs: [conv1]}
    pool1: {type: pool, kind: max, inputs: [norm1]}
    flat:  {type: flatten, inputs: [pool1]}
    softmax: {type: softmax, inputs: [flat], optimizer: {class_name: Adam, learning_rate: 1.0e-3}}
```
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ffrun.core.layers import BaseFFLayer, FFLocalLayer
from ffrun.core.network import Network, Node, Roles, make_sequence
from ffrun.errors import ConfigError
from ffrun.experiment import nodes as node_registry
from ffrun.experiment.schema import (ModelConfig, ReadoutConfig, check_graph, check_roles, expand_inputs,
                                     generate_mlp, loss_options, walk_shapes, with_role)

__all__ = ["Context", "build_graph", "expand_inputs", "generate_mlp"]


@dataclass
class Context:
    """What every node builder may need besides its own keys: the model-wide defaults and the data."""

    model: ModelConfig
    num_classes: int
    supervised: bool
    dtype: Any
    make_optimizer: Callable[[Any, str], Any]
    make_initializer: Callable[[Any], Any]

    def loss_options(self, loss: str, node: dict, where: str) -> dict[str, Any]:
        """The hyper-parameters of a node's registered loss (``schema.loss_options``)."""
        return loss_options(loss, node, self.model, where)

    def readout_spec(self, kind: str, name: str, node: dict) -> ReadoutConfig:
        """A readout node's keys with the same types and optimizer check as a readout of
        model.readouts (its inputs are the node's)."""
        return ReadoutConfig.parse({"type": kind, **{k: v for k, v in node.items() if k != "inputs"},
                                    "inputs": ["(node inputs)"]}, f"model.layers.{name}")


def build_graph(nodes: dict[str, dict], ctx: Context, image_shape: tuple[int, int, int],
                routing: list[np.ndarray] | None = None, neg_routing: str = "same") -> Network:
    """Make the layers of checked nodes in order and wire them. The data becomes an image
    (``image_shape``) when a conv or pool layer is in the graph; ``routing`` goes to the dense
    layers in order (A/B splitting)."""
    convolutional = check_graph(nodes)
    check_roles(nodes, ctx.supervised)
    routed = [n for n, spec in nodes.items() if node_registry.NODE_TYPES.get(spec["type"]).routed]
    if routing is not None:
        assert not convolutional, "the schema refuses protocol split with conv layers (FFRunConfig._check_run)"
        nodes = {n: ({**spec, "routing": routing[routed.index(n)], "neg_routing": neg_routing} if n in routed else spec)
                 for n, spec in nodes.items()}
    layers: dict[str, BaseFFLayer] = {}
    wiring: list[Node] = []
    for name, spec in nodes.items():
        params = {k: v for k, v in spec.items() if k != "type"}
        ntype = node_registry.NODE_TYPES.get(spec["type"])
        try:
            layers[name] = ntype.build(name, params, ctx)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.layers.{name}: {exc}") from None
        wiring.append(Node(name, tuple(spec["inputs"]), ntype.label))
    if all(image_shape):   # each layer's FLOPs by its type's rule, on the data's shapes
        for name, ntype, x, out, _ in walk_shapes(nodes, image_shape, ctx.num_classes):
            layers[name].forward_flop = ntype.flop(x, out, nodes[name])
    readouts = {kind: tuple(with_role(nodes, "readout", kind)) for kind in node_registry.READOUT_KINDS}
    for name in readouts["goodness"]:   # the label that scores best: largest goodness, or smallest (flipped loss)
        high = {layers[i].loss.positive_high for i in nodes[name]["inputs"] if isinstance(layers[i], FFLocalLayer)}
        layers[name].lowest = high == {False}
    for name in readouts["classes"]:   # each input read with the class goodness its FF layer trains on
        layers[name].kinds = tuple(getattr(layers[i], "class_goodness", "mean_square") for i in nodes[name]["inputs"])
    ff = tuple(n for n, layer in layers.items() if isinstance(layer, FFLocalLayer))
    roles = Roles(ff, supervised=ctx.supervised, **readouts)
    return Network(layers, make_sequence(layers, wiring, image_shape if convolutional else None), wiring, roles)
