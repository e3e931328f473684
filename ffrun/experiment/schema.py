"""The typed schema of ffrun's config: dataclasses registered in Hydra's ConfigStore.

Hydra merges the YAML of conf/ onto these classes when it composes a config, so a value of the
wrong type (``batch_size=abc``) or an unknown choice (``splitting=bogus``) is rejected at compose
time, whether or not the chosen protocol reads the key. Ranges (``batch_size=0``) are checked by
each class's ``__post_init__``, which runs when :func:`typed` turns a composed config into these
objects; the CLI does that before Hydra makes a run folder, and every run does it again at its start.

The choices are ``StrEnum``s: a chosen value compares equal to its string (``cfg.pairing ==
"same_step"``) and is saved in the run's config.yaml as that string.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ffrun.errors import ConfigError


class Mode(StrEnum):
    unsup = "unsup"
    sup = "sup"
    bp = "bp"


class EvalOn(StrEnum):
    validation = "validation"
    test = "test"


class StepChoice(StrEnum):
    separate = "separate"
    same_step = "same_step"


class Splitting(StrEnum):
    random = "random"
    same = "same"
    none = "none"


class LRSchedule(StrEnum):
    constant = "constant"
    linear_cooldown = "linear_cooldown"


class DataName(StrEnum):
    mnist = "mnist"
    npz = "npz"
    digits = "digits"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"


class Normalize(StrEnum):
    none = "none"
    standard = "standard"


class Goodness(StrEnum):
    sum = "sum"
    mean = "mean"


class Norm(StrEnum):
    l2 = "l2"
    rms = "rms"
    none = "none"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


class OverlayMode(StrEnum):
    add = "add"
    replace = "replace"


class ReadoutType(StrEnum):
    softmax = "softmax"
    goodness = "goodness"


class NegLabels(StrEnum):
    once = "once"
    every_epoch = "every_epoch"


class Negatives(StrEnum):
    uniform = "uniform"
    hard = "hard"
    hard_batch = "hard_batch"


class ProtocolName(StrEnum):
    five_digits = "five_digits"
    split = "split"
    wrong_label = "wrong_label"
    hybrid = "hybrid"
    competitive = "competitive"


#: FF losses by name (ffrun.core.losses.LOSSES; listed here so the check runs without TensorFlow,
#: and a test keeps the two lists equal)
LOSS_NAMES = ("threshold", "flipped", "symba", "cwc", "pvn", "cwg")
PAIRED_LOSSES = ("symba",)   # defined on aligned (positive, negative) pairs only
CLASS_LOSSES = ("cwc", "pvn", "cwg")   # on per-class goodness against the label: protocol competitive only

#: Keras 3 optimizers by class name (``keras.optimizers.get`` also accepts the abstract base
#: ``Optimizer``, which cannot train); kept here so that the check runs without importing TensorFlow.
OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adamax", "Adadelta", "Adafactor", "Adagrad", "Ftrl", "Lamb",
              "Lion", "Nadam", "RMSprop")


def _at_least(value: Any, minimum: float, key: str) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value!r}")


def _finite(value: Any, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")


#: Keras' learning-rate schedules (keras.optimizers.schedules) by class name. A learning_rate given as
#: {class_name: CosineDecay, config: {initial_learning_rate: 0.01, decay_steps: 782}} follows the
#: optimizer's own step count: every FF layer has its own optimizer, so it decays over the steps that
#: layer takes (a block trained for 2 epochs of 391 batches decays over its 782 steps).
LR_SCHEDULES = ("CosineDecay", "CosineDecayRestarts", "ExponentialDecay", "InverseTimeDecay",
                "PiecewiseConstantDecay", "PolynomialDecay")


def decays(spec: Any) -> bool:
    """Whether an optimizer mapping's learning rate is a schedule."""
    return isinstance(spec, (dict, DictConfig)) and isinstance(spec.get("learning_rate"), (dict, DictConfig))


def check_optimizer(spec: Any, key: str) -> None:
    """An optimizer is a mapping with a known ``class_name`` and a finite, positive learning rate
    or a learning-rate schedule of Keras (LR_SCHEDULES) with a mapping of its arguments."""
    if not isinstance(spec, (dict, DictConfig)):
        raise ConfigError(f"{key} must be a mapping such as {{class_name: Adam, learning_rate: 1e-3}}, got {spec!r}")
    name = spec.get("class_name")
    if name not in OPTIMIZERS:
        raise ConfigError(f"{key}.class_name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    lr = spec.get("learning_rate", 1e-3)
    if isinstance(lr, (dict, DictConfig)):
        if lr.get("class_name") not in LR_SCHEDULES:
            raise ConfigError(f"{key}.learning_rate.class_name must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {lr.get('class_name')!r}")
        if not isinstance(lr.get("config"), (dict, DictConfig)):
            raise ConfigError(f"{key}.learning_rate.config must be a mapping of the schedule's arguments, "
                              f"got {lr.get('config')!r}")
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{key}.learning_rate must be a finite number > 0, got {lr!r}")


def check_per_layer(value: Any, key: str, kind: type, minimum: float | None = None) -> None:
    """A scalar, or a list with one value per layer (its length is checked by the builder)."""
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not values:
        raise ConfigError(f"{key} must not be an empty list")
    for v in values:
        ok = not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else kind)
        if not ok or (kind is float and not math.isfinite(v)):
            what = "an integer" if kind is int else "a finite number"
            raise ConfigError(f"{key} must be {what} or a list of them, got {value!r}")
        if minimum is not None and v < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value!r}")


@dataclass
class AugmentConfig:
    shift: int = 0         # pixels: each training image moved by a random offset in [-shift, shift] per axis
    flip: bool = False     # mirror each training image left-right with probability 1/2 (CIFAR, not digits)

    def __post_init__(self) -> None:
        _at_least(self.shift, 0, "data.augment.shift")


@dataclass
class DataConfig:
    name: DataName = DataName.mnist
    path: Optional[str] = None
    val_size: int = 10000
    normalize: Normalize = Normalize.none
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    num_classes: int = 10
    augment: AugmentConfig = field(default_factory=AugmentConfig)   # training passes only

    def __post_init__(self) -> None:
        _at_least(self.val_size, 0, "data.val_size")
        _at_least(self.train_size, 1, "data.train_size")
        _at_least(self.test_size, 1, "data.test_size")
        _at_least(self.num_classes, 2, "data.num_classes")


@dataclass
class OverlayConfig:
    mode: OverlayMode = OverlayMode.add
    value: float = 1.0

    def __post_init__(self) -> None:
        _finite(self.value, "model.overlay.value")


@dataclass
class ReadoutConfig:
    type: ReadoutType = ReadoutType.softmax
    inputs: List[str] = field(default_factory=list)
    optimizer: Optional[Dict[str, Any]] = None
    use_bias: bool = True
    init: Any = "glorot_uniform"
    weight_decay: float = 0.0

    @classmethod
    def parse(cls, spec: Any, key: str) -> "ReadoutConfig":
        """A readout's mapping, checked: its keys, their types, its inputs and its optimizer."""
        if not isinstance(spec, dict):
            raise ConfigError(f"{key} must be a mapping with type and inputs, got {spec!r}")
        unknown = sorted(set(spec) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"{key} has unknown key(s) {unknown}; keys are {list(cls.__dataclass_fields__)}")
        try:
            spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), spec))
        except Exception as exc:  # noqa: BLE001 - OmegaConf's validation error, in one line
            raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from None
        if not spec.inputs:
            raise ConfigError(f"{key}.inputs must name at least one node (e.g. [norm2..])")
        if spec.type == ReadoutType.softmax:
            check_optimizer(spec.optimizer, f"{key}.optimizer")
        _at_least(spec.weight_decay, 0.0, f"{key}.weight_decay")
        return spec


# --- declared networks (model.layers): what each node type takes, checked without building ----
FLAT, IMAGE = "flat", "image"


@dataclass(frozen=True)
class NodeType:
    """A layer type's keys (required first), the shape it takes and gives (FLAT, IMAGE; takes None:
    either; gives "same": what it is fed), and the label it sees ("ff": the label the FF layers see,
    "true": the true label, for readouts). ffrun/experiment/graph.py builds each type's layer."""

    required: tuple[str, ...]
    optional: tuple[str, ...]
    takes: str | None
    gives: str
    label: str = "ff"


NODE_TYPES: dict[str, NodeType] = {
    "dense": NodeType(("units",), ("th_pos", "th_neg", "activation", "goodness", "loss", "optimizer", "init",
                                   "peer_norm", "peer_init", "weight_decay"), FLAT, FLAT),
    "conv2d": NodeType(("filters",), ("kernel_size", "strides", "padding", "th_pos", "th_neg", "activation",
                                      "goodness", "loss", "optimizer", "init", "weight_decay", "groups", "pool",
                                      "batchnorm"), IMAGE, IMAGE),
    "pool": NodeType((), ("kind", "size"), IMAGE, IMAGE),
    "flatten": NodeType((), (), None, FLAT),
    "prenorm": NodeType((), ("kind", "scope"), None, "same"),
    "overlay": NodeType((), ("mode", "value"), None, "same"),
    "softmax": NodeType((), ("optimizer", "use_bias", "init", "weight_decay"), None, FLAT, "true"),
    "goodness": NodeType((), (), None, FLAT, "true"),
    "classes": NodeType((), (), None, FLAT, "true"),
}


def check_graph(nodes: dict[str, Any]) -> bool:
    """Check every node's type, keys and inputs, and the shapes between them, without building
    anything (the CLI runs it before a run folder is made). The data is an image (H, W, C) when a
    conv or pool node is in the graph, else a flat vector. Returns whether it is. Errors name the
    node and the key."""
    convolutional = any(isinstance(s, dict) and s.get("type") in ("conv2d", "pool") for s in nodes.values())
    kinds = {"input": IMAGE if convolutional else FLAT}
    for name, spec in nodes.items():
        where = f"model.layers.{name}"
        if name == "input":
            raise ConfigError(f"{where}: 'input' is the data; give the node another name")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a mapping with type and inputs, got {spec!r}")
        ntype = NODE_TYPES.get(spec.get("type"))
        if ntype is None:
            raise ConfigError(f"{where}.type: unknown layer type {spec.get('type')!r}; types are {', '.join(NODE_TYPES)}")
        unknown = sorted(set(spec) - {"type", "inputs", "routing", "neg_routing"} - set(ntype.required) - set(ntype.optional))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} for type {spec['type']}; its keys are "
                              f"{list(ntype.required + ntype.optional)}")
        missing = [k for k in ntype.required if k not in spec]
        if missing:
            raise ConfigError(f"{where}.{missing[0]} is required for type {spec['type']}")
        inputs = spec.get("inputs")
        if not inputs or not isinstance(inputs, list):
            raise ConfigError(f"{where}.inputs must list at least one node (or input, the data)")
        for i in inputs:
            if i not in kinds:
                raise ConfigError(f"{where}.inputs: {i!r} " + (
                    "comes later: nodes run in the order they are declared, so an input must come first "
                    "(a cycle cannot run)" if i in nodes else f"is not a node; nodes so far are {list(kinds)}"))
        fed = kinds[inputs[0]] if len(inputs) == 1 else FLAT    # several inputs are flattened and joined
        if ntype.takes is not None and fed != ntype.takes:
            fix = "put a flatten node before it" if ntype.takes == FLAT else \
                "conv and pool layers need images: feed them the input (kept as H x W x C) or a conv/pool node"
            what = "an image" if fed == IMAGE else "a flat vector"
            raise ConfigError(f"{where}: a {spec['type']} layer is fed {what} ({', '.join(inputs)}); {fix}")
        if "optimizer" in spec:
            check_optimizer(spec["optimizer"], f"{where}.optimizer")
        groups, filters = spec.get("groups", 1), spec.get("filters")
        if spec["type"] == "conv2d" and isinstance(groups, int) and isinstance(filters, int) and groups > 0 \
                and filters % groups:
            raise ConfigError(f"{where}.groups={groups} must divide filters={filters}")
        if spec["type"] == "overlay" and spec.get("mode") == "channels" and fed != IMAGE:
            raise ConfigError(f"{where}.mode: 'channels' adds label planes to an image; it is fed a flat vector")
        kinds[name] = fed if ntype.gives == "same" else ntype.gives
    return convolutional


@dataclass
class ModelConfig:
    num_layers: int = 4
    units: Any = 500
    activation: str = "relu"
    goodness: Goodness = Goodness.sum
    loss: Any = "threshold"        # a name of LOSS_NAMES, or one per layer
    symba_alpha: float = 4.0       # the symba loss's sharpness (Trifecta's default)
    th_pos: Any = 0.1
    th_neg: Any = None
    norm: Norm = Norm.l2
    input_norm: Norm = Norm.none
    init: Any = "glorot_uniform"
    optimizer: Dict[str, Any] = field(default_factory=lambda: {"class_name": "Adam", "learning_rate": 1e-4})
    weight_decay: float = 0.0
    peer_norm: float = 0.0
    peer_init: float = 0.0
    precision: Precision = Precision.fp32
    split_gradient: bool = True
    # XLA-compile the element-wise part and the optimizer update of each dense FF step (the
    # matmuls stay TensorFlow's); see FFDense._step_on_z and docs/performance.md
    xla: bool = False
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    # a mapping name -> readout (or null to drop one); parsed into ReadoutConfig below, not typed
    # here, so that a readout can also be added from the command line (+model.readouts.x={...})
    readouts: Dict[str, Any] = field(default_factory=dict)
    # a declared network (ffrun/experiment/graph.py): an ordered mapping node -> {type, inputs, ...};
    # null: the MLP generated from num_layers / units with the readouts above
    layers: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        _at_least(self.num_layers, 1, "num_layers")
        check_per_layer(self.units, "units", int, minimum=1)
        check_per_layer(self.th_pos, "model.th_pos", float)
        if self.th_neg is not None:
            check_per_layer(self.th_neg, "model.th_neg", float)
        check_optimizer(self.optimizer, "model.optimizer")
        for name in (self.loss if isinstance(self.loss, list) else [self.loss]):
            if name not in LOSS_NAMES:
                raise ConfigError(f"model.loss must be one of {', '.join(LOSS_NAMES)} (or one per layer), got {self.loss!r}")
        if not (math.isfinite(self.symba_alpha) and self.symba_alpha > 0):
            raise ConfigError(f"model.symba_alpha must be a finite number > 0, got {self.symba_alpha!r}")
        for key in ("weight_decay", "peer_norm"):
            _finite(getattr(self, key), f"model.{key}")
            _at_least(getattr(self, key), 0.0, f"model.{key}")
        _finite(self.peer_init, "model.peer_init")
        self.readouts = {name: ReadoutConfig.parse(spec, f"model.readouts.{name}")
                         for name, spec in self.readouts.items() if spec is not None}
        if self.layers is not None:
            check_graph(self.layers)


@dataclass
class ModeConfig:
    name: Mode = Mode.unsup
    optimizer: Optional[Dict[str, Any]] = None   # mode=bp: the end-to-end optimizer
    dropout: float = 0.0                          # mode=bp: after every hidden layer

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"mode.dropout must be in [0, 1), got {self.dropout!r}")
        if self.name == Mode.bp:
            check_optimizer(self.optimizer, "mode.optimizer")


@dataclass
class FiveDigitsProtocol:
    name: ProtocolName = ProtocolName.five_digits
    positive_classes: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    neg_labels: NegLabels = NegLabels.once

    def __post_init__(self) -> None:
        classes = list(self.positive_classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or min(classes) < 0:
            raise ConfigError(f"protocol.positive_classes must be >= 2 distinct classes >= 0, got {classes}")


@dataclass
class SplitProtocol:
    name: ProtocolName = ProtocolName.split
    splitting: Splitting = Splitting.random
    route_seed: int = 0
    neg_labels: NegLabels = NegLabels.once


@dataclass
class WrongLabelProtocol:
    name: ProtocolName = ProtocolName.wrong_label
    neg_labels: NegLabels = NegLabels.every_epoch
    negatives: Negatives = Negatives.uniform


@dataclass
class HybridProtocol:
    name: ProtocolName = ProtocolName.hybrid
    blur_steps: int = 6

    def __post_init__(self) -> None:
        _at_least(self.blur_steps, 0, "protocol.blur_steps")


@dataclass
class CompetitiveProtocol:
    name: ProtocolName = ProtocolName.competitive


PROTOCOL_SCHEMAS = {"five_digits": FiveDigitsProtocol, "split": SplitProtocol,
                    "wrong_label": WrongLabelProtocol, "hybrid": HybridProtocol,
                    "competitive": CompetitiveProtocol}


@dataclass
class CheckpointConfig:
    every: int = 10
    keep: int = 2

    def __post_init__(self) -> None:
        _at_least(self.every, 0, "checkpoint.every")
        _at_least(self.keep, 1, "checkpoint.keep")


@dataclass
class TensorBoardConfig:
    enabled: bool = True
    histogram_every: int = 10

    def __post_init__(self) -> None:
        _at_least(self.histogram_every, 0, "tensorboard.histogram_every")


@dataclass
class FFRunConfig:
    """The top level of conf/config.yaml (the short knobs that model/ and protocol/ interpolate)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    protocol: Any = None          # typed by its option's own schema (PROTOCOL_SCHEMAS)
    mode: ModeConfig = field(default_factory=ModeConfig)
    schedule: Any = None          # [[layers, epochs], ...]; checked by the builder
    seed: int = 0
    num_layers: int = 4
    units: Any = 500
    batch_size: int = 512
    eval_batch_size: int = 1000
    epochs: int = 20
    readout_epochs: int = 5
    shuffle: bool = True
    shuffle_buffer: Optional[int] = None   # the seed's pipeline: tf.data shuffle(buffer) order (null: full)
    drop_last: bool = False                # the seed's pipeline: no partial last training batch
    same_order: bool = False               # the seed's pipeline: one order for an epoch's pos and neg passes
    eval_on: EvalOn = EvalOn.validation
    eval_every: int = 1
    track_test: bool = False
    pairing: StepChoice = StepChoice.separate
    readout_step: StepChoice = StepChoice.separate
    splitting: Splitting = Splitting.random
    lr_schedule: LRSchedule = LRSchedule.constant
    primary_readout: Optional[str] = None
    max_loss: float = 1.0e6
    progress: bool = True
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    stop_after_epoch: Optional[int] = None
    resume: Optional[str] = None
    # MB for the outputs of frozen layers kept over a stage's epochs (0: recompute them every
    # epoch): per pass whose data is fixed (no augmentation, no negatives drawn per epoch), while
    # the budget lasts; the curve stays the same (see ffrun.core.trainer)
    feature_cache_mb: float = 512

    def __post_init__(self) -> None:
        _at_least(self.seed, 0, "seed")
        _at_least(self.feature_cache_mb, 0, "feature_cache_mb")
        for key in ("batch_size", "eval_batch_size", "eval_every"):
            _at_least(getattr(self, key), 1, key)
        for key in ("epochs", "readout_epochs"):
            _at_least(getattr(self, key), 0, key)
        _at_least(self.stop_after_epoch, 1, "stop_after_epoch")
        _at_least(self.shuffle_buffer, 1, "shuffle_buffer")
        if not (math.isfinite(self.max_loss) and self.max_loss > 0):
            raise ConfigError(f"max_loss must be a finite number > 0, got {self.max_loss!r}")
        if self.lr_schedule != LRSchedule.constant:
            decaying = [key for key, spec in self._optimizers() if decays(spec)]
            if decaying:
                raise ConfigError(f"{decaying[0]}.learning_rate is a schedule, and lr_schedule={self.lr_schedule} would "
                                  f"overwrite it every epoch: use one of the two (lr_schedule=constant)")
        if self.readout_step == StepChoice.same_step and self.pairing != StepChoice.same_step:
            raise ConfigError("readout_step=same_step trains the readout in the pos+neg step: it needs pairing=same_step")
        if self.model.layers is not None:
            losses = {name: node.get("loss", "threshold") for name, node in self.model.layers.items()
                      if isinstance(node, dict)}
        else:
            losses = self.model.loss if isinstance(self.model.loss, list) else [self.model.loss]
            losses = {(f"dense{i + 1}" if isinstance(self.model.loss, list) else ""): n for i, n in enumerate(losses)}
        unknown = [(node, name) for node, name in losses.items() if name not in LOSS_NAMES]
        if unknown:
            raise ConfigError(f"model.layers.{unknown[0][0]}.loss must be one of {', '.join(LOSS_NAMES)}, "
                              f"got {unknown[0][1]!r}")
        paired = [(node, name) for node, name in losses.items() if name in PAIRED_LOSSES]
        if paired and self.pairing != StepChoice.same_step:
            node, name = paired[0]
            where = f"{node}: " if node else ""
            raise ConfigError(f"{where}model.loss={name} compares each positive with its aligned negative: it needs "
                              f"pairing=same_step (and a protocol with aligned pairs: split, wrong_label or hybrid)")
        protocol = getattr(self.protocol, "name", None)
        if self.pairing == StepChoice.same_step and protocol == ProtocolName.five_digits:
            raise ConfigError("protocol five_digits has unequal positive and negative sets: use pairing=separate")
        self._check_competitive(losses, protocol)

    def _optimizers(self) -> list[tuple[str, Any]]:
        """(config key, optimizer mapping) of every optimizer the config declares."""
        found = [("model.optimizer", self.model.optimizer), ("mode.optimizer", self.mode.optimizer)]
        for group in ("layers", "readouts"):
            for name, spec in (getattr(self.model, group) or {}).items():
                opt = spec.get("optimizer") if isinstance(spec, dict) else getattr(spec, "optimizer", None)
                found.append((f"model.{group}.{name}.optimizer", opt))
        return [(key, spec) for key, spec in found if spec is not None]

    def _check_competitive(self, losses: dict[str, str], protocol: Any) -> None:
        """Class losses (cwc, pvn, cwg) train on labels without negatives: they go with protocol
        competitive, and that protocol's FF layers all need one (it makes no negatives), with the
        label never in the input."""
        where = lambda node: f"model.layers.{node}.loss" if node else "model.loss"
        if protocol != ProtocolName.competitive:
            for node, name in losses.items():
                if name in CLASS_LOSSES:
                    raise ConfigError(f"{where(node)}={name} trains each class's group of units on the label, "
                                      f"without negatives: it needs protocol=competitive")
            for node, spec in (self.model.layers or {}).items():
                if isinstance(spec, dict) and spec.get("type") == "classes":
                    raise ConfigError(f"model.layers.{node}: a classes readout reads layers trained by a class loss "
                                      f"(cwc, pvn, cwg): it needs protocol=competitive")
            return
        if self.pairing == StepChoice.same_step:
            raise ConfigError("protocol competitive has no negatives to pair: use pairing=separate")
        if self.model.layers is None:
            if self.mode.name == Mode.sup:
                raise ConfigError("protocol competitive never shows the label in the input: use mode=unsup "
                                  "(or declare model.layers without an overlay)")
        else:
            ff = {n for n, node in self.model.layers.items() if isinstance(node, dict) and node.get("type") in ("dense", "conv2d")}
            losses = {n: name for n, name in losses.items() if n in ff}
            for node, spec in self.model.layers.items():
                if isinstance(spec, dict) and spec.get("type") in ("overlay", "goodness"):
                    raise ConfigError(f"model.layers.{node}: protocol competitive never shows the label in the "
                                      f"input, so a {spec['type']} node cannot be used (read out with a classes node)")
        for node, name in losses.items():
            if name not in CLASS_LOSSES:
                raise ConfigError(f"{where(node)}={name} needs negatives, and protocol competitive makes none: "
                                  f"use a class loss ({', '.join(CLASS_LOSSES)})")
        classes = self.data.num_classes
        nodes = self.model.layers or {}
        for node, spec in nodes.items():
            key = {"dense": "units", "conv2d": "filters"}.get(spec.get("type"))
            if key and isinstance(spec.get(key), int) and spec[key] % classes:
                raise ConfigError(f"model.layers.{node}.{key}={spec[key]} must be divisible by the {classes} classes: "
                                  f"a class loss gives each class an equal group of them")
            groups = spec.get("groups", 1)
            if key == "filters" and isinstance(groups, int) and groups > 1 and groups % classes and classes % groups:
                raise ConfigError(f"model.layers.{node}.groups={groups} does not line up with the {classes} class "
                                  f"groups: use a multiple or a divisor of {classes}")
            if spec.get("type") == "classes":
                plain = [i for i in spec.get("inputs", []) if i not in losses]
                if plain:
                    raise ConfigError(f"model.layers.{node}.inputs: {plain[0]!r} is not a layer with a class loss: "
                                      f"a classes readout reads the class groups of such layers")
        if self.model.layers is None:
            for units in (self.model.units if isinstance(self.model.units, list) else [self.model.units]):
                if units % classes:
                    raise ConfigError(f"units={units} must be divisible by the {classes} classes: a class loss gives "
                                      f"each class an equal group of them")


def register_resolvers() -> None:
    """``${ffrun_pick:a,b}``: a unless it is null/empty, else b; ``${ffrun_if:c,x}``: x if c else null.
    They let ``resume=<folder>`` point Hydra's run dir at the resumed folder."""
    if not OmegaConf.has_resolver("ffrun_pick"):
        OmegaConf.register_new_resolver("ffrun_pick", lambda a, b: a if a not in (None, "") else b)
        OmegaConf.register_new_resolver("ffrun_if", lambda c, x: x if c not in (None, "") else None)



def register_configs(store: ConfigStore | None = None) -> None:
    """Put the schemas where conf/ names them: ``ffrun_schema`` at the top of config.yaml's defaults,
    ``<option>_schema`` at the top of each protocol option's defaults; and the config's resolvers.
    conf/__init__.py calls it, so composing ffrun.conf from anywhere (the CLI, tests, a notebook)
    finds both."""
    register_resolvers()
    store = store or ConfigStore.instance()
    store.store(name="ffrun_schema", node=FFRunConfig)
    for name, node in PROTOCOL_SCHEMAS.items():
        store.store(group="protocol", name=f"{name}_schema", node=node)


def typed(cfg: DictConfig) -> FFRunConfig:
    """The composed config as schema objects, every range checked (a ConfigError names the key).

    Hydra's own section, if the config carries it, is left out: it is Hydra's to check."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    try:
        if OmegaConf.get_type(cfg) is not FFRunConfig:
            # a config saved by a run (plain YAML): lay it over the schema, as composing would
            proto = PROTOCOL_SCHEMAS.get(str(OmegaConf.select(cfg, "protocol.name")))
            base = OmegaConf.structured(FFRunConfig)
            if proto is not None:
                base.protocol = OmegaConf.structured(proto)
            cfg = OmegaConf.merge(base, cfg)
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - OmegaConf's validation errors: one line each
        raise ConfigError(" ".join(str(exc).split("\n")[0].split())) from None
    if isinstance(obj.protocol, dict):   # a protocol without a schema (e.g. a user's +protocol=...)
        raise ConfigError(f"protocol {obj.protocol.get('name')!r} has no schema; choices: "
                          f"{', '.join(PROTOCOL_SCHEMAS)}")
    return obj
