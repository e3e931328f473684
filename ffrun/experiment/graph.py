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

from ffrun.core.layers import (BaseFFLayer, FFClassGoodness, FFConv2D, FFDense, FFFlatten, FFGoodness, FFLocalLayer, FFOverlay,
                               FFPool, FFPreNorm, FFSoftmax)
from ffrun.core.losses import make_loss
from ffrun.core.network import Network, Node, Roles, make_sequence
from ffrun.errors import ConfigError
from ffrun.experiment.schema import NODE_TYPES, ModelConfig, ReadoutConfig, check_graph


@dataclass
class Context:
    """What every node builder may need besides its own keys: the model-wide defaults and the data."""

    model: ModelConfig
    num_classes: int
    supervised: bool
    dtype: Any
    make_optimizer: Callable[[Any, str], Any]
    make_initializer: Callable[[Any], Any]


def _loss(name: str, ctx: Context):
    return make_loss(name, alpha=ctx.model.symba_alpha) if name == "symba" else name


def _dense(name: str, p: dict, ctx: Context) -> BaseFFLayer:
    m = ctx.model
    th_pos = p.get("th_pos", m.th_pos)
    return FFDense(p["units"], th_pos, p.get("th_neg", m.th_neg if m.th_neg is not None else th_pos),
                   ctx.make_optimizer(p.get("optimizer", m.optimizer), f"model.layers.{name}.optimizer"), name=name,
                   goodness=p.get("goodness", m.goodness), activation=p.get("activation", m.activation),
                   kernel_initializer=ctx.make_initializer(p.get("init", m.init)), routing=p.get("routing"),
                   neg_routing=p.get("neg_routing", "same"), peer_norm=p.get("peer_norm", m.peer_norm),
                   peer_init=p.get("peer_init", m.peer_init), l2=p.get("weight_decay", m.weight_decay),
                   dtype=ctx.dtype, split_gradient=m.split_gradient, loss=_loss(p.get("loss", "threshold"), ctx),
                   num_classes=ctx.num_classes, xla=m.xla)


def _conv2d(name: str, p: dict, ctx: Context) -> BaseFFLayer:
    m = ctx.model
    th_pos = p.get("th_pos", 1.0)
    return FFConv2D(p["filters"], p.get("kernel_size", 3), p.get("strides", 1), p.get("padding", "same"),
                    th_pos, p.get("th_neg", th_pos),
                    ctx.make_optimizer(p.get("optimizer", m.optimizer), f"model.layers.{name}.optimizer"), name=name,
                    goodness=p.get("goodness", "mean"), activation=p.get("activation", "relu"),
                    kernel_initializer=ctx.make_initializer(p.get("init", m.init)),
                    loss=_loss(p.get("loss", "threshold"), ctx), l2=p.get("weight_decay", 0.0), dtype=ctx.dtype,
                    groups=p.get("groups", 1), pool=p.get("pool", 0), batchnorm=p.get("batchnorm", False),
                    num_classes=ctx.num_classes)


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
    "pool": lambda n, p, c: FFPool(p.get("kind", "max"), p.get("size", 2), name=n),
    "flatten": lambda n, p, c: FFFlatten(name=n),
    "prenorm": lambda n, p, c: FFPreNorm(p.get("kind", "l2"), name=n, scope=p.get("scope", "channels")),
    "overlay": lambda n, p, c: FFOverlay(c.num_classes, mode=p.get("mode", "add"), value=p.get("value", 1.0), name=n),
    "softmax": _softmax,
    "goodness": lambda n, p, c: FFGoodness(c.num_classes, name=n),
    "classes": lambda n, p, c: FFClassGoodness(c.num_classes, name=n),
}


def expand_inputs(inputs: list[str], n_layers: int) -> list[str]:
    """``norm2..`` stands for norm2, norm3, ..., normN (the last layer alone if N < 2), so readout
    wiring survives a change of ``num_layers``."""
    import re
    out = []
    for name in inputs:
        m = re.fullmatch(r"([a-z_]+)(\d+)\.\.", str(name))
        if m:
            first = min(int(m[2]), n_layers)
            out += [f"{m[1]}{i}" for i in range(first, n_layers + 1)]
        else:
            out.append(str(name))
    return out


def generate_mlp(model: ModelConfig, supervised: bool, units: list[int], th_pos: list, th_neg: list,
                 losses: list[str]) -> dict[str, dict]:
    """The default network as nodes: [overlay] -> [norm0] -> dense1 -> norm1 -> ... -> readouts."""
    nodes: dict[str, dict] = {}
    prev = "input"

    def add(name: str, spec: dict) -> str:
        nodes[name] = {**spec, "inputs": [prev]} if "inputs" not in spec else spec
        return name

    if supervised:
        prev = add("overlay", {"type": "overlay", "mode": model.overlay.mode, "value": model.overlay.value})
    if model.input_norm != "none":
        prev = add("norm0", {"type": "prenorm", "kind": model.input_norm})
    for i, u in enumerate(units):
        prev = add(f"dense{i + 1}", {"type": "dense", "units": u, "th_pos": th_pos[i], "th_neg": th_neg[i],
                                     "loss": losses[i]})
        if model.norm != "none":
            prev = add(f"norm{i + 1}", {"type": "prenorm", "kind": model.norm})
    for name, spec in model.readouts.items():
        node = {"type": str(spec.type), "inputs": expand_inputs(spec.inputs, len(units))}
        if spec.type == "softmax":
            node |= {"optimizer": spec.optimizer, "use_bias": spec.use_bias, "init": spec.init,
                     "weight_decay": spec.weight_decay}
        nodes[name] = node
    return nodes


def build_graph(nodes: dict[str, dict], ctx: Context, image_shape: tuple[int, int, int],
                routing: list[np.ndarray] | None = None, neg_routing: str = "same") -> Network:
    """Make the layers of checked nodes in order and wire them. The data becomes an image
    (``image_shape``) when a conv or pool layer is in the graph; ``routing`` goes to the dense
    layers in order (A/B splitting)."""
    convolutional = check_graph(nodes)
    dense = [n for n, spec in nodes.items() if spec["type"] == "dense"]
    if routing is not None:
        if convolutional:
            raise ConfigError("protocol split routes the units of dense layers; a graph with conv layers cannot use it")
        nodes = {n: ({**spec, "routing": routing[dense.index(n)], "neg_routing": neg_routing} if n in dense else spec)
                 for n, spec in nodes.items()}
    layers: dict[str, BaseFFLayer] = {}
    wiring: list[Node] = []
    for name, spec in nodes.items():
        params = {k: v for k, v in spec.items() if k not in ("type", "inputs")}
        try:
            layers[name] = BUILDERS[spec["type"]](name, params, ctx)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.layers.{name}: {exc}") from None
        wiring.append(Node(name, tuple(spec["inputs"]), NODE_TYPES[spec["type"]].label))
    softmax = tuple(n for n, s in nodes.items() if s["type"] == "softmax")
    goodness = tuple(n for n, s in nodes.items() if s["type"] == "goodness")
    classes = tuple(n for n, s in nodes.items() if s["type"] == "classes")
    if not softmax and not goodness and not classes:
        raise ConfigError("the model declares no readout (a softmax, goodness or classes node)")

    if goodness and not ctx.supervised:
        raise ConfigError(f"readout {goodness[0]}: a goodness readout needs the label overlaid (mode=sup)")
    for name in goodness:   # the label that scores best: largest goodness, or smallest (flipped loss)
        high = {layers[i].loss.positive_high for i in nodes[name]["inputs"] if isinstance(layers[i], FFLocalLayer)}
        if len(high) > 1:
            raise ConfigError(f"readout {name}: its inputs mix losses that point goodness opposite ways "
                              f"(flipped and not); sum layers of one orientation")
        layers[name].lowest = high == {False}
    ff = tuple(n for n, layer in layers.items() if isinstance(layer, FFLocalLayer))
    roles = Roles(ff, softmax, goodness, ctx.supervised, classes)
    return Network(layers, make_sequence(layers, wiring, image_shape if convolutional else None), wiring, roles)
