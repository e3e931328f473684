"""From a composed config to a network: the layers dict, the sequence that wires them, the plan.

The network is a list of nodes, each ``name <- layer(concat(inputs))``; the builder generates the
usual FF stack (optional overlay, FFDense_i, FFPreNorm_i) from ``model`` and adds the readouts that
the config declares with their inputs by name, so the wiring lives in YAML.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, ListConfig, OmegaConf

from ffrun import protocols
from ffrun.data import ImageSplits, load_splits
from ffrun.errors import ConfigError
from ffrun.optimizers import FUSED
from ffrun.layers import Task, BaseFFLayer, FFDense, FFGoodness, FFOverlay, FFPreNorm, FFSoftmax
from ffrun.protocols import Plan, Roles


@dataclass
class Node:
    name: str
    inputs: tuple[str, ...]
    label: str          # "ff": the layer sees y_ff; "true": the layer sees the true label y


@dataclass
class Network:
    layers: dict[str, BaseFFLayer]
    nodes: list[Node]
    roles: Roles
    seq: Callable
    _forward: dict = field(default_factory=dict)

    @property
    def ff_names(self) -> tuple[str, ...]:
        return self.roles.ff

    def readout_probs(self, data, readout: str | None = None, batch_size: int = 2000) -> np.ndarray:
        """Softmax probabilities of a softmax readout, one plain pass with the neutral label."""
        readout = readout or self.roles.softmax[0]
        for layer in self.layers.values():
            layer.set_task(Task.TRANSFORM)
        fn = self._forward.get(readout)
        if fn is None:
            spec = [tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int32)]
            fn = tf.function(lambda X, y: tf.nn.softmax(self.seq(X, y, tf.fill(tf.shape(y), -1))[readout]),
                             input_signature=spec)
            self._forward[readout] = fn
        return np.concatenate([fn(data.X[i:i + batch_size], data.y[i:i + batch_size]).numpy()
                               for i in range(0, len(data), batch_size)])


def make_sequence(layers: dict[str, BaseFFLayer], nodes: list[Node]) -> Callable:
    """The sequence function ``seq(X, y, y_ff)`` that runs the nodes in order; returns all outputs."""
    def seq(X, y, y_ff):
        outs = {"input": X}
        for node in nodes:
            xs = [outs[i] for i in node.inputs]
            x = xs[0] if len(xs) == 1 else tf.concat([tf.cast(t, tf.float32) for t in xs], axis=-1)
            outs[node.name] = layers[node.name].ff_do_task(x, y_ff if node.label == "ff" else y)
        return outs
    return seq


# --- small typed readers: a bad value gives one clear line ------------------------------
def _int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _per_layer(value: Any, n: int, key: str, cast: Callable) -> list:
    """A scalar for every layer, or a list with one value per layer."""
    if isinstance(value, (list, tuple, ListConfig)):
        if len(value) != n:
            raise ConfigError(f"{key} has {len(value)} values but the model has {n} FF layers")
        return [cast(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return [cast(value, key)] * n


def expand_inputs(inputs, n_layers: int) -> list[str]:
    """``norm2..`` stands for norm2, norm3, ..., normN (the last layer alone if N < 2), so readout
    wiring survives a change of ``num_layers``."""
    out = []
    for name in inputs:
        m = re.fullmatch(r"([a-z_]+)(\d+)\.\.", str(name))
        if m:
            first = min(int(m[2]), n_layers)
            out += [f"{m[1]}{i}" for i in range(first, n_layers + 1)]
        else:
            out.append(str(name))
    return out


def make_optimizer(spec: Any, key: str) -> keras.optimizers.Optimizer:
    """``{class_name: Adam, learning_rate: 1e-4, ...}`` -> a fresh Keras optimizer. Adam and SGD get
    their fused-kernel twins (same math, see ffrun.optimizers) unless ``fused: false``."""
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    name = spec.pop("class_name", None)
    fused = spec.pop("fused", True)
    if not name:
        raise ConfigError(f"{key}.class_name is required (e.g. Adam, SGD)")
    try:
        if fused and name in FUSED:
            return FUSED[name](**spec)
        return keras.optimizers.get({"class_name": name, "config": spec})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: cannot build optimizer {name} with {spec}: {exc}") from None


def make_initializer(spec: Any) -> Any:
    if spec == "normal_fan_out":
        # N(0, 1/fan_out): the init of Hinton's released code and its PyTorch port.
        return keras.initializers.VarianceScaling(1.0, "fan_out", "untruncated_normal")
    if isinstance(spec, DictConfig):
        return keras.initializers.get(OmegaConf.to_container(spec, resolve=True))
    return spec


def build_network(model: DictConfig, num_classes: int, supervised: bool,
                  routing: list[np.ndarray] | None = None, neg_routing: str = "same") -> Network:
    """Build the layers dict and the sequence from the ``model`` config."""
    n_layers = _int(model.num_layers, "num_layers")
    units = _per_layer(model.units, n_layers, "units", _int)
    th_pos = _per_layer(model.th_pos, n_layers, "model.th_pos", _float)
    th_neg = _per_layer(model.th_neg if model.th_neg is not None else model.th_pos, n_layers, "model.th_neg", _float)
    dtype = "mixed_bfloat16" if model.get("precision", "fp32") == "bf16" else None
    if model.get("precision", "fp32") not in ("fp32", "bf16"):
        raise ConfigError(f"model.precision must be fp32 or bf16, got {model.precision!r}")

    layers: dict[str, BaseFFLayer] = {}
    nodes: list[Node] = []

    def add(layer: BaseFFLayer, inputs, label="ff"):
        layers[layer.name] = layer
        nodes.append(Node(layer.name, tuple(inputs), label))
        return layer.name

    prev = "input"
    if supervised:
        ov = model.overlay
        prev = add(FFOverlay(num_classes, mode=ov.mode, value=ov.value, name="overlay"), [prev])
    if model.input_norm != "none":
        prev = add(FFPreNorm(model.input_norm, name="norm0"), [prev])
    ff_names = []
    for i in range(n_layers):
        name = f"dense{i + 1}"
        try:
            layer = FFDense(
                units[i], th_pos[i], th_neg[i], make_optimizer(model.optimizer, "model.optimizer"), name=name,
                goodness=model.goodness, activation=model.activation,
                kernel_initializer=make_initializer(model.init), routing=None if routing is None else routing[i],
                neg_routing=neg_routing, peer_norm=model.peer_norm, peer_init=float(model.get("peer_init", 0.0)),
                l2=model.weight_decay, dtype=dtype,
                split_gradient=bool(model.get("split_gradient", True)))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        ff_names.append(add(layer, [prev]))
        if model.norm != "none":
            try:
                prev = add(FFPreNorm(model.norm, name=f"norm{i + 1}"), [ff_names[-1]])
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        else:
            prev = ff_names[-1]

    softmax_names, goodness_names = [], []
    for rname, spec in (model.readouts or {}).items():
        if spec is None:
            continue
        inputs = expand_inputs(spec.inputs, n_layers)
        unknown = [i for i in inputs if i not in layers and i != "input"]
        if unknown:
            raise ConfigError(f"readout {rname}: unknown input(s) {unknown}; nodes are {['input', *layers]}")
        if spec.type == "softmax":
            add(FFSoftmax(num_classes, make_optimizer(spec.optimizer, f"model.readouts.{rname}.optimizer"),
                          name=rname, use_bias=spec.get("use_bias", True),
                          kernel_initializer=make_initializer(spec.get("init", "glorot_uniform")),
                          l2=spec.get("weight_decay", 0.0), dtype=dtype), inputs, label="true")
            softmax_names.append(rname)
        elif spec.type == "goodness":
            if not supervised:
                raise ConfigError(f"readout {rname}: a goodness readout needs the label overlaid (mode=sup)")
            add(FFGoodness(num_classes, name=rname), inputs, label="true")
            goodness_names.append(rname)
        else:
            raise ConfigError(f"readout {rname}: type must be softmax or goodness, got {spec.type!r}")
    if not softmax_names and not goodness_names:
        raise ConfigError("the model declares no readout (model.readouts)")
    roles = Roles(tuple(ff_names), tuple(softmax_names), tuple(goodness_names), supervised)
    return Network(layers, nodes, roles, make_sequence(layers, nodes))


@dataclass
class Run:
    """Everything a training run needs, built from one config. ``splits`` (the numpy images) is
    None unless asked for: the plan holds the tensors, and a second copy of MNIST costs ~210 MB."""

    data_name: str
    splits: ImageSplits | None
    network: Network
    plan: Plan
    schedule: list[tuple[Any, int]]


def build_schedule(cfg: DictConfig) -> list[tuple[Any, int]]:
    schedule = []
    for i, stage in enumerate(cfg.schedule):
        if not isinstance(stage, (list, ListConfig)) or len(stage) != 2:
            raise ConfigError(f"schedule[{i}] must be [layers, epochs], got {stage!r}")
        names, epochs = stage
        names = names if isinstance(names, str) else list(names)
        schedule.append((names, _int(epochs, f"schedule[{i}] epochs", minimum=0)))
    return schedule


def build_run(cfg: DictConfig, keep_splits: bool = False) -> Run:
    """YAML -> composed config -> (data, layers dict + sequence, plan, schedule)."""
    d = cfg.data
    splits = load_splits(d.name, d.get("path"), _int(d.val_size, "data.val_size", 0), d.normalize,
                         d.get("train_size"), d.get("test_size"), num_classes=d.get("num_classes"))
    mode = cfg.mode.name
    if mode not in ("sup", "unsup"):
        raise ConfigError(f"mode {mode!r} is not an FF mode (sup or unsup)")
    supervised = mode == "sup"
    spec = protocols.prepare(cfg.protocol, splits, cfg.model, supervised, seed=cfg.seed)
    network = build_network(cfg.model, spec.num_classes, supervised, spec.routing, spec.neg_routing)
    plan = protocols.make_plan(cfg.protocol, splits, network.roles, seed=cfg.seed, eval_on=cfg.eval_on,
                               pairing=cfg.pairing,
                               readout_step=cfg.get("readout_step", "separate"), readout_probs=network.readout_probs)
    plan.routing, plan.neg_routing = spec.routing, spec.neg_routing
    return Run(splits.name, splits if keep_splits else None, network, plan, build_schedule(cfg))
