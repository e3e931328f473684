"""From a composed config to what TrainMgr trains: the layers dict, the sequence that wires them,
the plan of passes and the stage schedule.

The config is first turned into the typed schema objects (every type, choice and range checked);
the builder reads only those. The network is a list of nodes, each ``name <- layer(concat(inputs))``:
the usual FF stack (optional overlay, FFDense_i, FFPreNorm_i) generated from ``model``, then the
readouts the config declares with their inputs by name, so the wiring lives in YAML.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from ffrun.core.augment import Augment
from ffrun.core.network import Network
from ffrun.core.optimizers import FUSED
from ffrun.errors import ConfigError
from ffrun.experiment import protocols
from ffrun.experiment.datasets import ImageSplits, load_splits
from ffrun.experiment.graph import Context, build_graph
from ffrun.experiment.protocols import Plan
from ffrun.experiment.schema import (DataConfig, FFRunConfig, ModelConfig, build_schedule, check_shapes, node_types,
                                     network_nodes, per_layer, typed)

__all__ = ["Run", "build_network", "build_run", "build_schedule", "load_data", "make_initializer",
           "make_optimizer", "per_layer"]


def make_optimizer(spec: Any, key: str) -> keras.optimizers.Optimizer:
    """``{class_name: Adam, learning_rate: 1e-4, ...}`` -> a fresh Keras optimizer. Adam and SGD get
    their fused-kernel twins (same math, see ffrun.core.optimizers) unless ``fused: false``. A
    ``learning_rate`` mapping is a Keras schedule ``{class_name: CosineDecay, config: {...}}``."""
    spec = dict(spec)
    name = spec.pop("class_name")
    fused = spec.pop("fused", True)
    try:
        lr = spec.get("learning_rate")
        if isinstance(lr, (dict, DictConfig)):   # a Keras schedule, stepped by this optimizer's own steps
            spec["learning_rate"] = keras.optimizers.schedules.deserialize(
                {"class_name": lr["class_name"], "config": dict(lr["config"])})
        if fused and name in FUSED:
            return FUSED[name](**spec)
        return keras.optimizers.get({"class_name": name, "config": spec})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: cannot build optimizer {name} with {spec}: {exc}") from None


#: kernel initializers by name, beside Keras' own names (``glorot_uniform``, ``he_normal``, ...) and
#: ``{class_name: ..., config: ...}`` mappings, which ``init`` also takes
INITIALIZERS = {
    # N(0, 1/fan_out): the init of Hinton's released code and its PyTorch port
    "normal_fan_out": lambda: keras.initializers.VarianceScaling(1.0, "fan_out", "untruncated_normal"),
    # PyTorch's default for nn.Linear / nn.Conv2d weights, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    # (the code of PyTorch FF projects, e.g. CwComp, runs with it). Biases stay zero here; PyTorch
    # draws them from the same range.
    "torch_default": lambda: keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
}


def make_initializer(spec: Any) -> Any:
    """A kernel initializer: one of INITIALIZERS, a Keras name or a Keras config mapping."""
    if isinstance(spec, str) and spec in INITIALIZERS:
        return INITIALIZERS[spec]()
    if isinstance(spec, dict):
        return keras.initializers.get(spec)
    return spec


def build_network(model: ModelConfig, num_classes: int, supervised: bool,
                  routing: list[np.ndarray] | None = None, neg_routing: str = "same",
                  image_shape: tuple[int, int, int] = (0, 0, 0)) -> Network:
    """The network of the typed ``model`` config: its declared graph (``model.layers``), or the
    MLP generated from ``num_layers`` / ``units`` as the same kind of node list."""
    nodes = network_nodes(model, supervised)
    ctx = Context(model, num_classes, supervised, "mixed_bfloat16" if model.precision == "bf16" else None,
                  make_optimizer, make_initializer)
    return build_graph(nodes, ctx, image_shape, routing, neg_routing)


@dataclass
class Run:
    """Everything a training run needs, built from one config. ``splits`` (the numpy images) is
    None unless asked for: the plan holds the tensors, and a second copy of MNIST costs ~210 MB."""

    data_name: str
    splits: ImageSplits | None
    network: Network
    plan: Plan
    schedule: list[tuple[Any, int]]
    augment: Augment | None = None    # training-time shifts / flips (data.augment), None when off


def load_data(data: DataConfig) -> ImageSplits:
    return load_splits(data.name, data.path, data.val_size, data.normalize, data.train_size, data.test_size,
                       num_classes=data.num_classes, resize=data.resize)


def build_run(cfg: DictConfig | FFRunConfig, keep_splits: bool = False) -> Run:
    """YAML -> composed config -> typed config -> (data, layers dict + sequence, plan, schedule)."""
    spec = cfg if isinstance(cfg, FFRunConfig) else typed(cfg)
    if spec.mode.name not in ("sup", "unsup"):
        raise ConfigError(f"mode {spec.mode.name!r} is not an FF mode (sup or unsup)")
    splits = load_data(spec.data)
    supervised = spec.mode.name == "sup"
    protocol = protocols.make(spec.protocol, splits, supervised=supervised, seed=spec.seed)
    if spec.model.layers is None:
        dense_units = per_layer(spec.model.units, spec.model.num_layers, "units")
    else:   # a declared graph: the dense nodes in order
        registered = node_types().NODE_TYPES
        routed = [registered.get(node["type"]) for node in spec.model.layers.values()]
        dense_units = [node.get(ntype.width) for node, ntype in zip(spec.model.layers.values(), routed) if ntype.routed]
    routing, neg_routing = protocol.routing(dense_units)
    check_shapes(spec, (*splits.image_shape, splits.channels), protocol.num_classes)   # as the CLI did, on the loaded data
    network = build_network(spec.model, protocol.num_classes, supervised, routing, neg_routing,
                            (*splits.image_shape, splits.channels))
    try:   # shapes only the data knows (image size, channels per group): refused before any training
        y = tf.constant(splits.y_train[:2], tf.int32)
        network.transform(tf.constant(splits.x_train[:2]), y, y)
    except ValueError as exc:
        raise ConfigError(str(exc).split("\n")[0]) from None
    plan = protocols.make_plan(protocol, network.roles, eval_on=spec.eval_on, pairing=spec.pairing,
                               readout_step=spec.readout_step, readout_probs=network.readout_probs)
    aug = spec.data.augment
    try:
        augment = Augment((*splits.image_shape, splits.channels), aug.shift, aug.flip) if aug.shift or aug.flip else None
    except ValueError as exc:
        raise ConfigError(f"data.augment: {exc}") from None
    return Run(splits.name, splits if keep_splits else None, network, plan, build_schedule(spec.schedule), augment)
