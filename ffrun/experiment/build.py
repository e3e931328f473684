"""From a composed config to what TrainMgr trains: the layers dict, the sequence that wires them,
the plan of passes and the stage schedule.

The config is first turned into the typed schema objects (every type, choice and range checked);
the builder reads only those. The network is a list of nodes, each ``name <- layer(concat(inputs))``:
the usual FF stack (optional overlay, FFDense_i, FFPreNorm_i) generated from ``model``, then the
readouts the config declares with their inputs by name, so the wiring lives in YAML.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import keras
import numpy as np
from omegaconf import DictConfig, ListConfig

from ffrun.core.layers import BaseFFLayer, FFDense, FFGoodness, FFOverlay, FFPreNorm, FFSoftmax
from ffrun.core.losses import make_loss
from ffrun.core.network import Network, Node, Roles, make_sequence
from ffrun.core.optimizers import FUSED
from ffrun.errors import ConfigError
from ffrun.experiment import protocols
from ffrun.experiment.datasets import ImageSplits, load_splits
from ffrun.experiment.protocols import Plan
from ffrun.experiment.schema import DataConfig, FFRunConfig, ModelConfig, typed


def per_layer(value: Any, n: int, key: str) -> list:
    """A scalar for every layer, or a list with one value per layer (the schema checked the values)."""
    if isinstance(value, (list, tuple, ListConfig)):
        if len(value) != n:
            raise ConfigError(f"{key} has {len(value)} values but the model has {n} FF layers")
        return list(value)
    return [value] * n


def expand_inputs(inputs: Sequence[str], n_layers: int) -> list[str]:
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
    their fused-kernel twins (same math, see ffrun.core.optimizers) unless ``fused: false``."""
    spec = dict(spec)
    name = spec.pop("class_name")
    fused = spec.pop("fused", True)
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
    if isinstance(spec, dict):
        return keras.initializers.get(spec)
    return spec


def build_network(model: ModelConfig, num_classes: int, supervised: bool,
                  routing: list[np.ndarray] | None = None, neg_routing: str = "same") -> Network:
    """Build the layers dict and the sequence from the typed ``model`` config."""
    n_layers = model.num_layers
    units = per_layer(model.units, n_layers, "units")
    th_pos = per_layer(model.th_pos, n_layers, "model.th_pos")
    th_neg = per_layer(model.th_neg if model.th_neg is not None else model.th_pos, n_layers, "model.th_neg")
    loss_names = per_layer(model.loss, n_layers, "model.loss")
    dtype = "mixed_bfloat16" if model.precision == "bf16" else None
    layers: dict[str, BaseFFLayer] = {}
    nodes: list[Node] = []

    def add(layer: BaseFFLayer, inputs, label="ff"):
        layers[layer.name] = layer
        nodes.append(Node(layer.name, tuple(inputs), label))
        return layer.name

    prev = "input"
    if supervised:
        prev = add(FFOverlay(num_classes, mode=model.overlay.mode, value=model.overlay.value, name="overlay"), [prev])
    if model.input_norm != "none":
        prev = add(FFPreNorm(model.input_norm, name="norm0"), [prev])
    ff_names = []
    for i in range(n_layers):
        name = f"dense{i + 1}"
        ff_names.append(add(FFDense(
            units[i], th_pos[i], th_neg[i], make_optimizer(model.optimizer, "model.optimizer"), name=name,
            goodness=model.goodness, activation=model.activation,
            kernel_initializer=make_initializer(model.init), routing=None if routing is None else routing[i],
            neg_routing=neg_routing, peer_norm=model.peer_norm, peer_init=model.peer_init,
            l2=model.weight_decay, dtype=dtype, split_gradient=model.split_gradient,
            loss=make_loss(loss_names[i], alpha=model.symba_alpha) if loss_names[i] == "symba" else loss_names[i]),
            [prev]))
        prev = add(FFPreNorm(model.norm, name=f"norm{i + 1}"), [name]) if model.norm != "none" else name

    softmax_names, goodness_names = [], []
    for rname, spec in model.readouts.items():
        inputs = expand_inputs(spec.inputs, n_layers)
        unknown = [i for i in inputs if i not in layers and i != "input"]
        if unknown:
            raise ConfigError(f"readout {rname}: unknown input(s) {unknown}; nodes are {['input', *layers]}")
        if spec.type == "softmax":
            add(FFSoftmax(num_classes, make_optimizer(spec.optimizer, f"model.readouts.{rname}.optimizer"),
                          name=rname, use_bias=spec.use_bias, kernel_initializer=make_initializer(spec.init),
                          l2=spec.weight_decay, dtype=dtype), inputs, label="true")
            softmax_names.append(rname)
        else:
            if not supervised:
                raise ConfigError(f"readout {rname}: a goodness readout needs the label overlaid (mode=sup)")
            # the label whose overlay scores best: the largest goodness, or the smallest when the
            # layers it sums were trained with the sign-flipped loss
            high = {layers[i].loss.positive_high for i in inputs if isinstance(layers.get(i), FFDense)}
            if len(high) > 1:
                raise ConfigError(f"readout {rname}: its inputs mix losses that point goodness opposite ways "
                                  f"(flipped and not); sum layers of one orientation")
            add(FFGoodness(num_classes, name=rname, lowest=high == {False}), inputs, label="true")
            goodness_names.append(rname)
    if not softmax_names and not goodness_names:
        raise ConfigError("the model declares no readout (model.readouts)")
    roles = Roles(tuple(ff_names), tuple(softmax_names), tuple(goodness_names), supervised)
    return Network(layers, make_sequence(layers, nodes), nodes, roles)


@dataclass
class Run:
    """Everything a training run needs, built from one config. ``splits`` (the numpy images) is
    None unless asked for: the plan holds the tensors, and a second copy of MNIST costs ~210 MB."""

    data_name: str
    splits: ImageSplits | None
    network: Network
    plan: Plan
    schedule: list[tuple[Any, int]]


def build_schedule(schedule: Any) -> list[tuple[Any, int]]:
    """``[[layers, epochs], ...]`` (layers: ``all`` or a list of node names) as tuples."""
    out = []
    for i, stage in enumerate(schedule or []):
        if not isinstance(stage, (list, tuple, ListConfig)) or len(stage) != 2:
            raise ConfigError(f"schedule[{i}] must be [layers, epochs], got {stage!r}")
        names, epochs = stage
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"schedule[{i}] epochs must be an integer >= 0, got {epochs!r}")
        out.append((names if isinstance(names, str) else list(names), epochs))
    return out


def load_data(data: DataConfig) -> ImageSplits:
    return load_splits(data.name, data.path, data.val_size, data.normalize, data.train_size, data.test_size,
                       num_classes=data.num_classes)


def build_run(cfg: DictConfig | FFRunConfig, keep_splits: bool = False) -> Run:
    """YAML -> composed config -> typed config -> (data, layers dict + sequence, plan, schedule)."""
    spec = cfg if isinstance(cfg, FFRunConfig) else typed(cfg)
    if spec.mode.name not in ("sup", "unsup"):
        raise ConfigError(f"mode {spec.mode.name!r} is not an FF mode (sup or unsup)")
    splits = load_data(spec.data)
    supervised = spec.mode.name == "sup"
    protocol = protocols.make(spec.protocol, splits, supervised=supervised, seed=spec.seed)
    routing, neg_routing = protocol.routing(per_layer(spec.model.units, spec.model.num_layers, "units"))
    network = build_network(spec.model, protocol.num_classes, supervised, routing, neg_routing)
    plan = protocols.make_plan(protocol, network.roles, eval_on=spec.eval_on, pairing=spec.pairing,
                               readout_step=spec.readout_step, readout_probs=network.readout_probs)
    return Run(splits.name, splits if keep_splits else None, network, plan, build_schedule(spec.schedule))
