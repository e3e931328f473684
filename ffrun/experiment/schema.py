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
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ffrun.errors import ConfigError, RegistryError
from ffrun.experiment.datasets import DATASETS
from ffrun.experiment.protocols import PROTOCOLS, Splitting


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


class LRSchedule(StrEnum):
    constant = "constant"
    linear_cooldown = "linear_cooldown"
    cosine = "cosine"


class Normalize(StrEnum):
    none = "none"
    standard = "standard"


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


def core_losses() -> ModuleType:
    """``ffrun.core.losses``, whose registries (``LOSSES``, ``GOODNESS``, ``CLASS_GOODNESS``) the checks
    read. It is TensorFlow code: TensorFlow is imported here, with its start-up lines kept off the
    console, and only when a config is checked (composing, ``--help`` and the ConfigStore stay without it)."""
    from ffrun import _import_tensorflow_quietly
    _import_tensorflow_quietly()
    from ffrun.core import losses
    return losses


def class_losses() -> tuple[str, ...]:
    """The registered losses on per-class goodness against the label (protocol competitive only)."""
    registered = core_losses().LOSSES
    return tuple(name for name in registered.in_order() if registered.get(name).competitive)


def loss_options(loss: str, node: dict, model: Any, where: str) -> dict[str, Any]:
    """The hyper-parameters of the registered loss ``loss`` for one layer: each ``<loss>_<parameter>``
    key of the node (``where``: its config path), else the model's key of that name (``model.symba_alpha``),
    else the loss's default; a value out of range is a ConfigError naming the key."""
    losses = core_losses()
    options = {}
    for key, keyword in losses.parameter_keys(loss).items():
        source = node if key in node else vars(model) if hasattr(model, key) else None
        if source is None:
            continue
        options[keyword] = source[key]
        try:   # one value at a time, so that the error names its key
            losses.make_loss(loss, **{keyword: source[key]})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where if source is node else 'model'}.{key} {exc}") from None
    return options

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
    """A scalar, or a list with one value per layer (its length is checked against the number of FF layers before a run folder is made)."""
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


def per_layer(value: Any, n: int, key: str) -> list:
    """A scalar for every layer, or a list with one value per layer (the schema checked the values)."""
    if isinstance(value, (list, tuple, ListConfig)):
        if len(value) != n:
            raise ConfigError(f"{key} has {len(value)} values but the model has {n} FF layers")
        return list(value)
    return [value] * n


def check_threshold(value: Any, key: str) -> None:
    """A threshold on goodness: goodness is a sum or mean of squares, never negative, so a negative
    threshold is exceeded by every sample and the loss cannot tell positives from negatives."""
    check_per_layer(value, key, float)
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if any(v < 0 for v in values):
        raise ConfigError(f"{key} must be >= 0 (goodness, a sum or mean of squares, is never negative), got {value!r}")


@dataclass
class AugmentConfig:
    shift: int = 0         # pixels: each training image moved by a random offset in [-shift, shift] per axis
    flip: bool = False     # mirror each training image left-right with probability 1/2 (CIFAR, not digits)

    def __post_init__(self) -> None:
        _at_least(self.shift, 0, "data.augment.shift")


@dataclass
class DataConfig:
    name: str = "mnist"            # a registered dataset (datasets.DATASETS, or a plugin's)
    path: Optional[str] = None
    val_size: int = 10000
    normalize: Normalize = Normalize.none
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    num_classes: int = 10
    augment: AugmentConfig = field(default_factory=AugmentConfig)   # training passes only
    resize: Optional[List[int]] = None   # [height, width]: every image resized first (bilinear)

    def __post_init__(self) -> None:
        try:
            DATASETS.get(self.name)
        except RegistryError as exc:
            raise ConfigError(f"data.name: {exc}") from None
        _at_least(self.val_size, 0, "data.val_size")
        _at_least(self.train_size, 1, "data.train_size")
        _at_least(self.test_size, 1, "data.test_size")
        _at_least(self.num_classes, 2, "data.num_classes")
        if self.resize is not None and (len(self.resize) != 2 or any(v < 1 for v in self.resize)):
            raise ConfigError(f"data.resize must be [height, width], two integers >= 1, got {list(self.resize)}")


@dataclass
class OverlayConfig:
    mode: OverlayMode = OverlayMode.add
    value: float = 1.0

    def __post_init__(self) -> None:
        _finite(self.value, "model.overlay.value")


@dataclass
class ReadoutConfig:
    # a readout node type: softmax (trained) | goodness (sup: the label of most goodness) | classes
    type: str = "softmax"
    inputs: List[str] = field(default_factory=list)      # node names; "norm2.." = norm2..normN
    optimizer: Optional[Dict[str, Any]] = None           # softmax: its own, required
    use_bias: bool = True                                # softmax
    init: Any = "glorot_uniform"                         # softmax: a Keras initializer
    weight_decay: float = 0.0                            # softmax: coupled L2, as model.weight_decay

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
        registered = node_types().NODE_TYPES
        readouts = [name for name in registered.in_order() if registered.get(name).role == "readout"]
        if spec.type not in readouts:
            raise ConfigError(f"{key}.type must be one of {', '.join(readouts)}, got {spec.type!r}")
        if "optimizer" in registered.get(spec.type).keys:
            check_optimizer(spec.optimizer, f"{key}.optimizer")
        _at_least(spec.weight_decay, 0.0, f"{key}.weight_decay")
        return spec


# --- declared networks (model.layers): what each node type takes, checked without building ----

def node_types() -> ModuleType:
    """``ffrun.experiment.nodes``: the registered node types (``NODE_TYPES``), built from core's
    layers; imported as ``core_losses`` is, only when a graph is checked."""
    core_losses()
    from ffrun.experiment import nodes
    return nodes


def registered_choices(spec: dict) -> dict[str, tuple[str, ...]]:
    """The keys of a node that name a registered function: its goodness and class goodness."""
    if "goodness" not in spec and "class_goodness" not in spec:
        return {}
    losses = core_losses()
    return {"goodness": losses.GOODNESS.in_order(), "class_goodness": losses.CLASS_GOODNESS.in_order()}


def check_node_values(where: str, spec: dict) -> None:
    """One node's values: its integers, its choices and its thresholds (``where``: model.layers.<name>)."""
    ntype = spec["type"]
    declared = node_types().NODE_TYPES.get(ntype)
    for key, low in declared.integers.items():
        value = spec.get(key)
        if key in spec and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{where}.{key} must be an integer >= {low}, got {value!r}")
    for key, words in {**declared.choices, **registered_choices(spec)}.items():
        if key in spec and spec[key] not in words:
            raise ConfigError(f"{where}.{key} must be one of {', '.join(words)}, got {spec[key]!r}")
    for key in ("th_pos", "th_neg"):
        if spec.get(key) is not None:
            check_threshold(spec[key], f"{where}.{key}")
    for key in ("batchnorm", "use_bias", "select_range"):
        if key in spec and not isinstance(spec[key], bool):
            raise ConfigError(f"{where}.{key} must be true or false, got {spec[key]!r}")
    if "dropout" in spec:
        rate = spec["dropout"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"{where}.dropout must be a rate in [0, 1), got {rate!r}")
    if "class_goodness" in spec and spec.get("loss", "threshold") not in class_losses():
        raise ConfigError(f"{where}.class_goodness applies to the class losses ({', '.join(class_losses())}); "
                          f"its loss is {spec.get('loss', 'threshold')!r}")


def check_graph(nodes: dict[str, Any]) -> bool:
    """Check every node's type, keys and inputs, and the shapes between them, without building
    anything (the CLI runs it before a run folder is made). The data is an image (H, W, C) when a
    conv or pool node is in the graph, else a flat vector. Returns whether it is. Errors name the
    node and the key."""
    registered = node_types()
    FLAT, IMAGE = registered.FLAT, registered.IMAGE
    convolutional = is_convolutional(nodes)
    kinds = {"input": IMAGE if convolutional else FLAT}
    for name, spec in nodes.items():
        where = f"model.layers.{name}"
        if name == "input":
            raise ConfigError(f"{where}: 'input' is the data; give the node another name")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a mapping with type and inputs, got {spec!r}")
        if spec.get("type") not in registered.NODE_TYPES:
            raise ConfigError(f"{where}.type: unknown layer type {spec.get('type')!r}; types are "
                              f"{', '.join(registered.NODE_TYPES.in_order())}")
        ntype = registered.NODE_TYPES.get(spec["type"])
        loss_keys = node_loss_keys(spec) if "loss" in ntype.keys else ()
        unknown = sorted(set(spec) - {"type", "inputs", "routing", "neg_routing"} - set(ntype.required)
                         - set(ntype.optional) - set(loss_keys))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} for type {spec['type']}; its keys are "
                              f"{list(ntype.required + ntype.optional + loss_keys)}")
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
        if ntype.merges:
            if len(inputs) < 2 or len({kinds[i] for i in inputs}) > 1:
                raise ConfigError(f"{where}.inputs: {spec['type']} joins two or more inputs of one kind "
                                  f"(all images or all flat), got {', '.join(inputs)}")
            fed = kinds[inputs[0]]
        else:
            fed = kinds[inputs[0]] if len(inputs) == 1 else FLAT    # several inputs are flattened and joined
        if ntype.takes is not None and fed != ntype.takes:
            fix = "put a flatten node before it" if ntype.takes == FLAT else \
                "conv and pool layers need images: feed them the input (kept as H x W x C) or a conv/pool node"
            what = "an image" if fed == IMAGE else "a flat vector"
            raise ConfigError(f"{where}: a {spec['type']} layer is fed {what} ({', '.join(inputs)}); {fix}")
        check_node_values(where, spec)
        if "optimizer" in spec:
            check_optimizer(spec["optimizer"], f"{where}.optimizer")
        if ntype.check is not None:   # the type's own rules between its keys and what it is fed
            ntype.check(where, spec, fed)
        kinds[name] = fed if ntype.gives == "same" else ntype.gives
    return convolutional


def node_loss_keys(spec: dict) -> tuple[str, ...]:
    """The hyper-parameter keys (``symba_alpha``) a node may set for its registered loss."""
    losses = core_losses()
    loss = spec.get("loss", "threshold")
    return tuple(losses.parameter_keys(loss)) if loss in losses.LOSSES else ()


def is_convolutional(nodes: dict[str, Any]) -> bool:
    """Whether the data reaches the graph as an image (H, W, C): a node type that takes images is in it."""
    registered = node_types()
    return any(isinstance(s, dict) and s.get("type") in registered.NODE_TYPES
               and registered.NODE_TYPES.get(s["type"]).takes == registered.IMAGE for s in nodes.values())


def with_role(nodes: dict[str, dict], role: str, readout: str | None = None) -> dict[str, dict]:
    """The nodes whose registered type plays ``role`` (nodes.FF, READOUT, OP); of readouts, those of
    kind ``readout`` when given."""
    registered = node_types().NODE_TYPES
    return {n: spec for n, spec in nodes.items() if isinstance(spec, dict) and spec.get("type") in registered
            and registered.get(spec["type"]).role == role
            and (readout is None or registered.get(spec["type"]).readout == readout)}


def types_with_role(role: str) -> str:
    """The registered node types of a role, as a message lists them: "dense or conv2d"."""
    registered = node_types().NODE_TYPES
    names = [name for name in registered.in_order() if registered.get(name).role == role]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def check_roles(nodes: dict[str, dict], supervised: bool) -> None:
    """What the network's nodes must play: at least one FF layer and one readout; a goodness
    readout needs the label in the input and inputs whose losses point goodness one way. The
    builder calls it too, so a graph built from Python meets the same rules."""
    ff = with_role(nodes, "ff")
    if not ff:
        raise ConfigError(f"the model declares no FF layer (a {types_with_role('ff')} node): "
                          f"FF has nothing to train")
    if not with_role(nodes, "readout"):
        raise ConfigError(f"the model declares no readout (a {types_with_role('readout')} node)")
    for name, spec in with_role(nodes, "readout", "goodness").items():
        if not supervised:
            raise ConfigError(f"readout {name}: a goodness readout needs the label overlaid (mode=sup)")
        # a loss may give positives the LOWER goodness (core.losses.FlippedLoss.positive_high)
        registered = core_losses().LOSSES
        flipped = {not registered.get(ff[i].get("loss", "threshold")).positive_high for i in spec["inputs"] if i in ff}
        if len(flipped) > 1:
            raise ConfigError(f"readout {name}: its inputs mix losses that point goodness opposite ways "
                              f"(flipped and not); sum layers of one orientation")


def build_schedule(schedule: Any) -> list[tuple[Any, int]]:
    """``[[layers, epochs], ...]`` (layers: ``all`` or a list of node names) as tuples."""
    if schedule is not None and not isinstance(schedule, (list, tuple, ListConfig)):
        raise ConfigError(f"schedule must be a list of [layers, epochs] stages, got {schedule!r}")
    out = []
    for i, stage in enumerate(schedule or []):
        if not isinstance(stage, (list, tuple, ListConfig)) or len(stage) != 2:
            raise ConfigError(f"schedule[{i}] must be [layers, epochs], got {stage!r}")
        names, epochs = stage
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"schedule[{i}] epochs must be an integer >= 0, got {epochs!r}")
        if not isinstance(names, str) and not (isinstance(names, (list, tuple, ListConfig))
                                                and all(isinstance(n, str) for n in names)):
            raise ConfigError(f"schedule[{i}] layers must be all or a list of node names, got {names!r}")
        out.append((names if isinstance(names, str) else list(names), epochs))
    return out


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


def generate_mlp(model: "ModelConfig", supervised: bool, units: list[int], th_pos: list, th_neg: list,
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
    registered = node_types().NODE_TYPES
    for name, spec in model.readouts.items():
        node = {"type": str(spec.type), "inputs": expand_inputs(spec.inputs, len(units))}
        # the readout's own keys among model.readouts' fields (a softmax: its optimizer, bias, init, decay)
        nodes[name] = node | {key: getattr(spec, key) for key in registered.get(spec.type).keys
                              if key in ReadoutConfig.__dataclass_fields__}
    return nodes


def network_nodes(model: "ModelConfig", supervised: bool) -> dict[str, dict]:
    """The network as nodes: the declared ``model.layers``, or the MLP generated from
    ``num_layers`` / ``units`` (the builder makes the layers of exactly these nodes)."""
    if model.layers is not None:
        return model.layers
    n = model.num_layers
    th_pos = per_layer(model.th_pos, n, "model.th_pos")
    th_neg = per_layer(model.th_neg if model.th_neg is not None else model.th_pos, n, "model.th_neg")
    return generate_mlp(model, supervised, per_layer(model.units, n, "units"), th_pos, th_neg,
                        per_layer(model.loss, n, "model.loss"))


def graph_sizes(nodes: dict[str, dict], image: tuple[int, int, int],
                num_classes: int | None) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Each node's output shape for one sample, (H, W, C) or (D,), propagated from the data's image
    shape, and each node's number of weights. A kernel, stride or pool that does not fit the map it
    is fed is refused, naming the node, the key and the map. ``num_classes`` None (inferred from
    the labels at load) counts as 0: the label planes and readout widths are then left out."""
    shapes: dict[str, tuple[int, ...]] = {}
    weights: dict[str, int] = {}
    for name, _, _, out, n_weights in walk_shapes(nodes, image, num_classes):
        shapes[name], weights[name] = out, n_weights
    return shapes, weights


def walk_shapes(nodes: dict[str, dict], image: tuple[int, int, int], num_classes: int | None
                ) -> Iterator[tuple[str, Any, tuple[int, ...], tuple[int, ...], int]]:
    """(node, its registered type, the shape it reads, its output shape, its weights) in order,
    each by its type's shape rule (``graph_sizes``)."""
    classes = num_classes or 0
    registered = node_types().NODE_TYPES
    shapes: dict[str, tuple[int, ...]] = {"input": image if is_convolutional(nodes) else (math.prod(image),)}
    for name, spec in nodes.items():
        ntype = registered.get(spec["type"])
        fed = [shapes[i] for i in spec["inputs"]]
        x = fed[0] if len(fed) == 1 or ntype.merges else (sum(math.prod(f) for f in fed),)   # flattened, joined
        out, n_weights = ntype.shape(f"model.layers.{name}", x, fed, spec, classes)
        shapes[name] = out
        yield name, ntype, x, out, n_weights


@dataclass
class ModelConfig:
    num_layers: int = 4
    units: Any = 500
    activation: str = "relu"
    goodness: str = "sum"          # a registered goodness function (ffrun.core.losses.GOODNESS)
    loss: Any = "threshold"        # a registered loss (ffrun.core.losses.LOSSES), or one per layer
    # a loss's hyper-parameter set model-wide is a key <loss>_<parameter> here (a node of
    # model.layers may set any of its loss's); its default and range are the loss's own
    symba_alpha: float = 4.0
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
    # null: the MLP generated from num_layers / units with the readouts above. Typed Any, not
    # Optional[Dict]: OmegaConf cannot merge a mapping given on the command line
    # (model.layers={d1: {...}}) into a None typed as a dict; __post_init__ checks the type.
    layers: Any = None

    def __post_init__(self) -> None:
        _at_least(self.num_layers, 1, "num_layers")
        check_per_layer(self.units, "units", int, minimum=1)
        check_threshold(self.th_pos, "model.th_pos")
        if self.th_neg is not None:
            check_threshold(self.th_neg, "model.th_neg")
        check_optimizer(self.optimizer, "model.optimizer")
        for key in ("weight_decay", "peer_norm"):
            _finite(getattr(self, key), f"model.{key}")
            _at_least(getattr(self, key), 0.0, f"model.{key}")
        _finite(self.peer_init, "model.peer_init")
        self.readouts = {name: ReadoutConfig.parse(spec, f"model.readouts.{name}")
                         for name, spec in self.readouts.items() if spec is not None}
        if self.layers is not None:
            if not isinstance(self.layers, dict):
                raise ConfigError(f"model.layers must be a mapping node -> {{type, inputs, ...}}, got {self.layers!r}")
            if not self.layers:
                raise ConfigError("model.layers is empty: declare at least one FF layer and a readout "
                                  "(or leave model.layers unset for the MLP of num_layers x units)")
            check_graph(self.layers)
        else:   # the generated MLP: one value per layer, or a scalar for all
            for key, value in (("units", self.units), ("model.th_pos", self.th_pos), ("model.th_neg", self.th_neg),
                               ("model.loss", self.loss)):
                per_layer(value, self.num_layers, key)


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
class CheckpointConfig:
    every: int = 10
    keep: int = 2
    #: an epoch that took at least this many seconds is also kept in memory at its end, so that
    #: Ctrl-C or SIGTERM in the next one stops within about a second (that epoch runs again on resume)
    in_memory_after_s: float = 30.0

    def __post_init__(self) -> None:
        _at_least(self.every, 0, "checkpoint.every")
        _at_least(self.keep, 1, "checkpoint.keep")
        _at_least(self.in_memory_after_s, 0, "checkpoint.in_memory_after_s")


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
    protocol: Any = None          # typed by its protocol's own config (protocols.PROTOCOLS)
    mode: ModeConfig = field(default_factory=ModeConfig)
    schedule: Any = None          # [[layers, epochs], ...]; checked before a run folder is made
    seed: int = 0
    num_layers: int = 4
    units: Any = 500
    batch_size: int = 512
    eval_batch_size: int = 1000
    epochs: int = 20
    readout_epochs: int = 5
    shuffle: bool = True
    shuffle_buffer: Optional[int] = None   # rmwkwok's pipeline: tf.data shuffle(buffer) order (null: full)
    drop_last: bool = False                # rmwkwok's pipeline: no partial last training batch
    same_order: bool = False               # rmwkwok's pipeline: one order for an epoch's pos and neg passes
    eval_on: EvalOn = EvalOn.validation
    eval_every: int = 1
    track_test: bool = False
    pairing: StepChoice = StepChoice.separate
    readout_step: StepChoice = StepChoice.separate
    splitting: Splitting = Splitting.random
    lr_schedule: LRSchedule = LRSchedule.constant
    lr_min_factor: float = 0.0             # lr_schedule=cosine decays to this fraction of each base rate
    primary_readout: Optional[str] = None
    max_loss: float = 1.0e6
    progress: bool = True
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    stop_after_epoch: Optional[int] = None
    resume: Optional[str] = None
    # modules imported before the config is checked, to register their components (docs/extending.md)
    plugins: List[str] = field(default_factory=list)
    # MB for the outputs of frozen layers kept over a stage's epochs (0: recompute them every
    # epoch): per pass whose data is fixed (no augmentation, no negatives drawn per epoch), while
    # the budget lasts; the curve stays the same (see ffrun.core.trainer)
    feature_cache_mb: float = 512
    # MB of those outputs kept in files in the run folder when they do not fit feature_cache_mb
    # (0: recompute them), while the disk has room; removed when the stage ends
    feature_cache_disk_mb: float = 0

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2 ** 32:   # the range of keras.utils.set_random_seed (NumPy's legacy seed)
            raise ConfigError(f"seed must be in [0, 2**32 - 1 = {2 ** 32 - 1}], got {self.seed}")
        _at_least(self.feature_cache_mb, 0, "feature_cache_mb")
        _at_least(self.feature_cache_disk_mb, 0, "feature_cache_disk_mb")
        for key in ("batch_size", "eval_batch_size", "eval_every"):
            _at_least(getattr(self, key), 1, key)
        for key in ("epochs", "readout_epochs"):
            _at_least(getattr(self, key), 0, key)
        _at_least(self.stop_after_epoch, 1, "stop_after_epoch")
        _at_least(self.shuffle_buffer, 1, "shuffle_buffer")
        if not (math.isfinite(self.max_loss) and self.max_loss > 0):
            raise ConfigError(f"max_loss must be a finite number > 0, got {self.max_loss!r}")
        if not 0.0 <= self.lr_min_factor <= 1.0:
            raise ConfigError(f"lr_min_factor must be in [0, 1], got {self.lr_min_factor!r}")
        if self.lr_min_factor and self.lr_schedule != LRSchedule.cosine:
            raise ConfigError(f"lr_min_factor is the floor of lr_schedule=cosine; lr_schedule={self.lr_schedule} "
                              f"has none")
        if self.lr_schedule != LRSchedule.constant:
            decaying = [key for key, spec in self._optimizers() if decays(spec)]
            if decaying:
                raise ConfigError(f"{decaying[0]}.learning_rate is a schedule, and lr_schedule={self.lr_schedule} would "
                                  f"overwrite it every epoch: use one of the two (lr_schedule=constant)")
        if self.readout_step == StepChoice.same_step and self.pairing != StepChoice.same_step:
            raise ConfigError("readout_step=same_step trains the readout in the pos+neg step: it needs pairing=same_step")
        self._goodness()
        losses = self._losses()
        paired = [(node, name) for node, name in losses.items() if core_losses().LOSSES.get(name).needs_pairs]
        if paired and self.pairing != StepChoice.same_step:
            node, name = paired[0]
            where = f"{node}: " if node else ""
            raise ConfigError(f"{where}model.loss={name} compares each positive with its aligned negative: it needs "
                              f"pairing=same_step (and a protocol with aligned pairs: split, wrong_label or hybrid)")
        protocol = getattr(self.protocol, "name", None)
        self._check_competitive(losses, protocol)
        self._check_run()

    def _check_run(self) -> None:
        """The rules the builder would otherwise meet only after the run folder exists: what the
        schedule trains, the protocol against the mode, the network's roles and readouts."""
        stages = build_schedule(self.schedule if self.schedule is not None else [["all", self.epochs]])
        if sum(epochs for _, epochs in stages) == 0:
            raise ConfigError(f"epochs={self.epochs} and readout_epochs={self.readout_epochs}: the schedule "
                              f"{[[n, e] for n, e in stages]} trains for 0 epochs, so there is nothing to train "
                              f"(give a stage at least 1 epoch)")
        if self.eval_on == EvalOn.validation and self.data.val_size == 0:
            raise ConfigError("eval_on=validation needs data.val_size > 0 (or eval_on=test)")
        if self.mode.name == Mode.bp or self.protocol is None:
            return
        supervised = self.mode.name == Mode.sup
        nodes = network_nodes(self.model, supervised)
        if self.model.layers is None:
            check_graph(nodes)
        check_roles(nodes, supervised)
        PROTOCOLS.get(self.protocol.name).check_config(
            self.protocol, supervised=supervised, num_classes=self.data.num_classes, pairing=str(self.pairing),
            convolutional=is_convolutional(nodes), has_softmax=bool(with_role(nodes, "readout", "softmax")))
        readouts = list(with_role(nodes, "readout"))
        if self.primary_readout is not None and self.primary_readout not in readouts:
            raise ConfigError(f"primary_readout {self.primary_readout!r} is not a readout; readouts are {readouts}")
        ranged = [n for n, spec in with_role(nodes, "readout", "classes").items() if spec.get("select_range")]
        if ranged and self.eval_on == EvalOn.test:
            raise ConfigError(f"model.layers.{ranged[0]}.select_range chooses its range on the per-epoch evaluation "
                              f"split; eval_on=test would choose it on the test set (use eval_on=validation)")
        for i, (names, _) in enumerate(stages):
            unknown = [] if names == "all" else [n for n in names if n not in nodes]
            if unknown:
                raise ConfigError(f"schedule[{i}] names {unknown[0]!r}, not a node of the network (its nodes: "
                                  f"{', '.join(nodes)}); a stage trains all or a list of nodes: name a node so, "
                                  f"or set schedule=[[all, N]]")

    def _goodness(self) -> None:
        names = core_losses().GOODNESS.in_order()
        if self.model.goodness not in names:
            raise ConfigError(f"model.goodness must be one of {', '.join(names)}, got {self.model.goodness!r}")

    def _losses(self) -> dict[str, str]:
        """Each FF layer's registered loss by node ('' for every layer of the generated MLP with one
        loss), its hyper-parameters checked, and every model-wide loss key in range."""
        registered = core_losses().LOSSES
        for name in registered.names():
            loss_options(name, {}, self.model, "model")
        if self.model.layers is None:
            names = self.model.loss if isinstance(self.model.loss, list) else [self.model.loss]
            if any(name not in registered for name in names):
                raise ConfigError(f"model.loss must be one of {', '.join(registered.in_order())} (or one per layer), "
                                  f"got {self.model.loss!r}")
            return {(f"dense{i + 1}" if isinstance(self.model.loss, list) else ""): n for i, n in enumerate(names)}
        losses = {name: node.get("loss", "threshold") for name, node in self.model.layers.items()
                  if isinstance(node, dict)}
        for node, name in losses.items():
            if name not in registered:
                raise ConfigError(f"model.layers.{node}.loss must be one of {', '.join(registered.in_order())}, "
                                  f"got {name!r}")
            loss_options(name, self.model.layers[node], self.model, f"model.layers.{node}")
        return losses

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
        competitive = class_losses()
        if protocol != "competitive":
            for node, name in losses.items():
                if name in competitive:
                    raise ConfigError(f"{where(node)}={name} trains each class's group of units on the label, "
                                      f"without negatives: it needs protocol=competitive")
            group = "model.layers" if self.model.layers is not None else "model.readouts"
            for node in with_role(network_nodes(self.model, self.mode.name == Mode.sup), "readout", "classes"):
                raise ConfigError(f"{group}.{node}: a classes readout reads layers trained by a class loss "
                                  f"({', '.join(competitive)}): it needs protocol=competitive")
            return
        if self.pairing == StepChoice.same_step:
            raise ConfigError("protocol competitive has no negatives to pair: use pairing=separate")
        if self.model.layers is None:
            if self.mode.name == Mode.sup:
                raise ConfigError("protocol competitive never shows the label in the input: use mode=unsup "
                                  "(or declare model.layers without an overlay)")
        else:
            ff = with_role(self.model.layers, "ff")
            losses = {n: name for n, name in losses.items() if n in ff}
            registered = node_types().NODE_TYPES
            for node, spec in self.model.layers.items():
                if isinstance(spec, dict) and registered.get(spec.get("type")).label_in_input:
                    raise ConfigError(f"model.layers.{node}: protocol competitive never shows the label in the "
                                      f"input, so a {spec['type']} node cannot be used (read out with a classes node)")
        for node, name in losses.items():
            if name not in competitive:
                raise ConfigError(f"{where(node)}={name} needs negatives, and protocol competitive makes none: "
                                  f"use a class loss ({', '.join(competitive)})")
        classes = self.data.num_classes
        nodes = self.model.layers or {}
        for node, spec in nodes.items():
            key = node_types().NODE_TYPES.get(spec.get("type")).width
            if key and isinstance(spec.get(key), int) and spec[key] % classes:
                raise ConfigError(f"model.layers.{node}.{key}={spec[key]} must be divisible by the {classes} classes: "
                                  f"a class loss gives each class an equal group of them")
            groups = spec.get("groups", 1)
            if key == "filters" and isinstance(groups, int) and groups > 1 and groups % classes and classes % groups:
                raise ConfigError(f"model.layers.{node}.groups={groups} does not line up with the {classes} class "
                                  f"groups: use a multiple or a divisor of {classes}")
            if spec in with_role(nodes, "readout", "classes").values():
                plain = [i for i in spec.get("inputs", []) if i not in losses]
                if plain:
                    raise ConfigError(f"model.layers.{node}.inputs: {plain[0]!r} is not a layer with a class loss: "
                                      f"a classes readout reads the class groups of such layers")
        if self.model.layers is None:
            for units in (self.model.units if isinstance(self.model.units, list) else [self.model.units]):
                if units % classes:
                    raise ConfigError(f"units={units} must be divisible by the {classes} classes: a class loss gives "
                                      f"each class an equal group of them")


def network_classes(spec: FFRunConfig) -> int | None:
    """The classes the network's label overlay and readouts have (protocols.Protocol.num_classes):
    five_digits labels its positive classes only; None: inferred from the labels at load."""
    if spec.protocol is None:
        return spec.data.num_classes
    return PROTOCOLS.get(spec.protocol.name).network_classes(spec.protocol, spec.data.num_classes)


def check_shapes(spec: FFRunConfig, image: tuple[int, int, int], num_classes: int | None) -> dict[str, int]:
    """The network's shapes on images of ``image`` (H, W, C); returns each node's number of weights."""
    return graph_sizes(network_nodes(spec.model, spec.mode.name == Mode.sup), image, num_classes)[1]


def check_before_run(spec: FFRunConfig) -> None:
    """The checks that need the data's shape, run by the CLI before Hydra makes a run folder: the
    data's paths, data.val_size against the training set's size, the shapes through the network,
    and memory. The data is only peeked at (datasets.peek_data: a fixed dataset's known shape, an
    npz's headers); what only the pixels can tell is checked when the run loads them.

    Memory is a floor, so that a refusal is certain: float32 weights and their gradients (8 bytes
    a weight; the optimizer's state and the activations of a batch come on top) plus the float32
    images (4 bytes a pixel), against MemAvailable."""
    from ffrun.experiment.datasets import available_memory, format_bytes, peek_data
    data = spec.data
    available = available_memory()
    peek = peek_data(str(data.name), data.path, data.train_size, available)
    if peek is None:
        return
    n = peek.train_images
    if n is not None and not 0 <= data.val_size < n:
        raise ConfigError(f"data.val_size={data.val_size} must be in [0, {n}) for {data.name} "
                          f"({peek.source}: {n} training images)")
    if spec.mode.name == Mode.bp:
        return
    image = (*data.resize, peek.image[2]) if data.resize is not None else peek.image
    if spec.protocol is not None:
        PROTOCOLS.get(spec.protocol.name).check_image(spec.protocol, image, peek.source)
    weights = check_shapes(spec, image, network_classes(spec))
    if available is None:
        return
    need = 8 * sum(weights.values()) + 4 * math.prod(image) * (n or 0)
    if need <= available:
        return
    node = max(weights, key=weights.get)
    spec_node = network_nodes(spec.model, spec.mode.name == Mode.sup)[node]
    width = node_types().NODE_TYPES.get(spec_node["type"]).width
    if width is None:
        source = f"model.layers.{node}"
    else:
        source = f"{width}={spec_node[width]}" if spec.model.layers is None else f"model.layers.{node}.{width}={spec_node[width]}"
    raise ConfigError(f"{source}: the network's {sum(weights.values()):.3g} weights ({node}: {weights[node]:.3g}) "
                      f"and the images need at least {format_bytes(need)} of memory (float32 weights and "
                      f"gradients, 8 bytes a weight), but {format_bytes(available)} is available; use fewer units "
                      f"or filters")


def register_resolvers() -> None:
    """``${ffrun_pick:a,b}``: a unless it is null/empty, else b; ``${ffrun_if:c,x}``: x if c else null.
    They let ``resume=<folder>`` point Hydra's run dir at the resumed folder."""
    if not OmegaConf.has_resolver("ffrun_pick"):
        OmegaConf.register_new_resolver("ffrun_pick", lambda a, b: a if a not in (None, "") else b)
        OmegaConf.register_new_resolver("ffrun_if", lambda c, x: x if c not in (None, "") else None)



def register_configs(store: ConfigStore | None = None) -> None:
    """Put the schemas where conf/ names them: ``ffrun_schema`` at the top of config.yaml's defaults,
    ``<protocol>_schema`` (each registered protocol's config) at the top of each protocol option's
    defaults; and the config's resolvers. A registered protocol or dataset without a YAML file in
    conf/ (a plugin's) is stored as an option of its group, so that ``protocol=<name>`` and
    ``data=<name>`` compose from its defaults alone. conf/__init__.py calls it, and so does loading
    plugins, so composing ffrun.conf from anywhere (the CLI, tests, a notebook) finds them all."""
    from importlib.resources import files
    register_resolvers()
    store = store or ConfigStore.instance()
    store.store(name="ffrun_schema", node=FFRunConfig)
    conf = files("ffrun.conf")
    for name, protocol in PROTOCOLS.items():
        store.store(group="protocol", name=f"{name}_schema", node=protocol.config)
        if not conf.joinpath("protocol", f"{name}.yaml").is_file():
            store.store(group="protocol", name=name, node=protocol.config)
    for name, dataset in DATASETS.items():
        if not conf.joinpath("data", f"{name}.yaml").is_file():
            store.store(group="data", name=name, node={"name": name, **dataset.defaults})


def typed(cfg: DictConfig) -> FFRunConfig:
    """The composed config as schema objects, every range checked (a ConfigError names the key).

    Hydra's own section, if the config carries it, is left out: it is Hydra's to check."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    try:
        name = OmegaConf.select(cfg, "protocol.name")
        protocol = PROTOCOLS.get(str(name)).config if name is not None else None
        if OmegaConf.get_type(cfg) is not FFRunConfig:
            # a config saved by a run (plain YAML): lay it over the schema, as composing would
            base = OmegaConf.structured(FFRunConfig)
            if protocol is not None:
                base.protocol = OmegaConf.structured(protocol)
            cfg = OmegaConf.merge(base, cfg)
        elif protocol is not None and OmegaConf.get_type(cfg.protocol) not in (protocol, dict):
            # the keys were typed by another protocol's config: they would not be this one's
            raise ConfigError(f"protocol.name={name} names another protocol than the one composed "
                              f"({OmegaConf.get_type(cfg.protocol).__qualname__}'s keys): choose it with protocol={name}")
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - OmegaConf's validation errors: one line each
        raise ConfigError(" ".join(str(exc).split("\n")[0].split())) from None
    if isinstance(obj.protocol, dict):   # a protocol option without its config (e.g. a user's +protocol=...)
        raise ConfigError(f"protocol {obj.protocol.get('name')!r} has no config; registered protocols: "
                          f"{', '.join(PROTOCOLS.names())}")
    return obj
