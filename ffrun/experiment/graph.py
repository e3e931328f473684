"""The network as an ordered mapping of nodes: ``model.layers`` in YAML, or generated from
``num_layers`` / ``units`` (the default MLP). Each node names a type from ``schema.NODE_TYPES``, its
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

from ffrun.core.layers import (BaseFFLayer, FFClassGoodness, FFConv2D, FFDense, FFFlatten, FFGoodness, FFLocalLayer,
                               FFMerge, FFOverlay, FFPool, FFPreNorm, FFSoftmax)
from ffrun.core.losses import FFLoss, make_loss
from ffrun.core.network import Network, Node, Roles, make_sequence
from ffrun.errors import ConfigError
from ffrun.experiment.schema import (NODE_TYPES, ModelConfig, ReadoutConfig, check_graph, check_roles,
                                     expand_inputs, generate_mlp, loss_options)

__all__ = ["BUILDERS", "Context", "build_graph", "expand_inputs", "generate_mlp"]


@dataclass
class Context:
    """What every node builder may need besides its own keys: the model-wide defaults and the data."""

    model: ModelConfig
    num_classes: int
    supervised: bool
    dtype: Any
    make_optimizer: Callable[[Any, str], Any]
    make_initializer: Callable[[Any], Any]


def _loss(name: str, node: str, p: dict, ctx: Context) -> FFLoss:
    return make_loss(name, **loss_options(name, p, ctx.model, f"model.layers.{node}"))


def _dense(name: str, p: dict, ctx: Context) -> BaseFFLayer:
    m = ctx.model
    th_pos = p.get("th_pos", m.th_pos)
    return FFDense(p["units"], th_pos, p.get("th_neg", m.th_neg if m.th_neg is not None else th_pos),
                   ctx.make_optimizer(p.get("optimizer", m.optimizer), f"model.layers.{name}.optimizer"), name=name,
                   goodness=p.get("goodness", m.goodness), activation=p.get("activation", m.activation),
                   kernel_initializer=ctx.make_initializer(p.get("init", m.init)), routing=p.get("routing"),
                   neg_routing=p.get("neg_routing", "same"), peer_norm=p.get("peer_norm", m.peer_norm),
                   peer_init=p.get("peer_init", m.peer_init), l2=p.get("weight_decay", m.weight_decay),
                   dtype=ctx.dtype, split_gradient=m.split_gradient, loss=_loss(p.get("loss", "threshold"), name, p, ctx),
                   num_classes=ctx.num_classes, xla=m.xla)


def _conv2d(name: str, p: dict, ctx: Context) -> BaseFFLayer:
    m = ctx.model
    th_pos = p.get("th_pos", 1.0)
    return FFConv2D(p["filters"], p.get("kernel_size", 3), p.get("strides", 1), p.get("padding", "same"),
                    th_pos, p.get("th_neg", th_pos),
                    ctx.make_optimizer(p.get("optimizer", m.optimizer), f"model.layers.{name}.optimizer"), name=name,
                    goodness=p.get("goodness", "mean"), activation=p.get("activation", "relu"),
                    kernel_initializer=ctx.make_initializer(p.get("init", m.init)),
                    loss=_loss(p.get("loss", "threshold"), name, p, ctx), l2=p.get("weight_decay", 0.0), dtype=ctx.dtype,
                    groups=p.get("groups", 1), pool=p.get("pool", 0), batchnorm=p.get("batchnorm", False),
                    num_classes=ctx.num_classes, pool_kind=p.get("pool_kind", "max"), dropout=p.get("dropout", 0.0),
                    use_bias=p.get("use_bias", True), class_goodness=p.get("class_goodness", "mean_square"))


def _softmax(name: str, p: dict, ctx: Context) -> BaseFFLayer:
    # the same keys, types and optimizer check as a readout of model.readouts (its inputs are the node's)
    spec = ReadoutConfig.parse({"type": "softmax", "inputs": ["(node inputs)"], **p}, f"model.layers.{name}")
    return FFSoftmax(ctx.num_classes, ctx.make_optimizer(spec.optimizer, f"model.layers.{name}.optimizer"),
                     name=name, use_bias=spec.use_bias, kernel_initializer=ctx.make_initializer(spec.init),
                     l2=spec.weight_decay, dtype=ctx.dtype)


#: node type -> how to build its layer from its keys (the keys, the shapes and the label each type
#: takes are in schema.NODE_TYPES, checked before anything is built)
BUILDERS: dict[str, Callable[[str, dict, Context], BaseFFLayer]] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "pool": lambda n, p, c: FFPool(p.get("kind", "max"), p.get("size", 2), name=n, padding=p.get("padding", "valid")),
    "flatten": lambda n, p, c: FFFlatten(name=n),
    "prenorm": lambda n, p, c: FFPreNorm(p.get("kind", "l2"), name=n, scope=p.get("scope", "channels"),
                                         num_classes=c.num_classes),
    "add": lambda n, p, c: FFMerge("add", name=n),
    "concat": lambda n, p, c: FFMerge("concat", name=n),
    "overlay": lambda n, p, c: FFOverlay(c.num_classes, mode=p.get("mode", "add"), value=p.get("value", 1.0), name=n),
    "softmax": _softmax,
    "goodness": lambda n, p, c: FFGoodness(c.num_classes, name=n),
    # each input's class goodness is set in build_graph, from the layer that feeds it
    "classes": lambda n, p, c: FFClassGoodness(c.num_classes, name=n, select_range=p.get("select_range", False),
                                               num_inputs=p["num_inputs"]),
}


def build_graph(nodes: dict[str, dict], ctx: Context, image_shape: tuple[int, int, int],
                routing: list[np.ndarray] | None = None, neg_routing: str = "same") -> Network:
    """Make the layers of checked nodes in order and wire them. The data becomes an image
    (``image_shape``) when a conv or pool layer is in the graph; ``routing`` goes to the dense
    layers in order (A/B splitting)."""
    convolutional = check_graph(nodes)
    check_roles(nodes, ctx.supervised)
    dense = [n for n, spec in nodes.items() if spec["type"] == "dense"]
    if routing is not None:
        assert not convolutional, "the schema refuses protocol split with conv layers (FFRunConfig._check_run)"
        nodes = {n: ({**spec, "routing": routing[dense.index(n)], "neg_routing": neg_routing} if n in dense else spec)
                 for n, spec in nodes.items()}
    layers: dict[str, BaseFFLayer] = {}
    wiring: list[Node] = []
    for name, spec in nodes.items():
        params = {k: v for k, v in spec.items() if k not in ("type", "inputs")}
        if spec["type"] == "classes":
            params["num_inputs"] = len(spec["inputs"])
        try:
            layers[name] = BUILDERS[spec["type"]](name, params, ctx)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.layers.{name}: {exc}") from None
        wiring.append(Node(name, tuple(spec["inputs"]), NODE_TYPES[spec["type"]].label))
    softmax = tuple(n for n, s in nodes.items() if s["type"] == "softmax")
    goodness = tuple(n for n, s in nodes.items() if s["type"] == "goodness")
    classes = tuple(n for n, s in nodes.items() if s["type"] == "classes")
    for name in goodness:   # the label that scores best: largest goodness, or smallest (flipped loss)
        high = {layers[i].loss.positive_high for i in nodes[name]["inputs"] if isinstance(layers[i], FFLocalLayer)}
        layers[name].lowest = high == {False}
    for name in classes:   # each input read with the class goodness its FF layer trains on
        layers[name].kinds = tuple(getattr(layers[i], "class_goodness", "mean_square") for i in nodes[name]["inputs"])
    ff = tuple(n for n, layer in layers.items() if isinstance(layer, FFLocalLayer))
    roles = Roles(ff, softmax, goodness, ctx.supervised, classes)
    return Network(layers, make_sequence(layers, wiring, image_shape if convolutional else None), wiring, roles)
