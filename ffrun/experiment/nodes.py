"""The node types of a declared network (``model.layers``): one registry, ``NODE_TYPES``, and every
built-in type registered once, beside its builder, with ``@node_type(...)``.

A node type carries what every part of ffrun needs of it: its keys (required first; their integer
ranges and word choices, checked like the built-in ones), the shape it takes and gives, its role
(an FF layer trained by its own loss, a readout, or a weightless op), its output-shape rule (for
``schema.graph_sizes``: shapes checked before a run folder is made, and the weights counted for the
memory floor), its FLOP rule (forward FLOPs of one sample; ``core.flops`` counts an epoch from it),
and its builder (keys -> a ``core.layers`` layer). The contract refuses a type that lacks a piece:
a new layer never counts 0 FLOPs by omission (a weightless op declares ``flop=no_flop``).

    @node_type("my_block", required=("filters",), takes=IMAGE, gives=IMAGE, role=FF,
               shape=my_block_shape, flop=my_block_flop, width="filters")
    def build_my_block(name: str, p: dict, ctx) -> BaseFFLayer:
        \"\"\"A conv block with ...\"\"\"
        return MyBlock(p["filters"], ..., name=name)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ffrun.core.layers import (BaseFFLayer, FFClassGoodness, FFConv2D, FFDense, FFFlatten, FFGoodness, FFMerge,
                               FFOverlay, FFPool, FFPreNorm, FFSoftmax)
from ffrun.core.losses import make_loss
from ffrun.errors import ConfigError
from ffrun.registry import Registry

#: what a node gives or takes: a flat vector per sample, or an image (H, W, C)
FLAT, IMAGE = "flat", "image"
#: roles: an FF layer (trained by its own loss on goodness), a readout (scores the label), a weightless op
FF, READOUT, OP = "ff", "readout", "op"
#: how a readout is trained and scored (``core.network.Roles``' fields): ``softmax`` trained on its
#: stopped input, scored in one plain pass; ``goodness`` scores every label (EVAL_ALL_LABELS), needs
#: the label overlaid; ``classes`` reads class goodness in one plain pass, trains nothing
READOUT_KINDS = ("softmax", "goodness", "classes")

#: (where, x, fed, spec, classes) -> (output shape, number of weights); ``x`` is the shape the node
#: reads (its input's, or its inputs' flattened and joined), ``fed`` every input's own shape
ShapeRule = Callable[[str, tuple, list, dict, int], tuple[tuple, int]]
#: (x, output shape, spec) -> forward FLOPs of one sample
FlopRule = Callable[[tuple, tuple, dict], float]
#: (where, spec, what it is fed: FLAT or IMAGE) -> None, or a ConfigError naming the key
KeyCheck = Callable[[str, dict, str], None]
Builder = Callable[[str, dict, Any], BaseFFLayer]


@dataclass(frozen=True)
class NodeType:
    """A node type's pieces (see the module's docstring). ``label``: the label the node sees ("ff":
    the FF layers' label, "true": the true label, for readouts). ``width``: the key that sets its
    output width (a class loss splits it into class groups). ``merges``: its inputs each keep their
    own shape (shortcuts) rather than being flattened and joined. ``routed``: it takes a protocol's
    routing of units (split). ``label_in_input``: it needs the label shown in the input. ``check``:
    its own rules between its keys, and against what it is fed (the schema checks each key's type,
    range and choices first)."""

    build: Builder
    role: str
    takes: str | None
    gives: str
    shape: ShapeRule
    flop: FlopRule
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    label: str = "ff"
    integers: dict[str, int] = field(default_factory=dict)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    readout: str | None = None
    width: str | None = None
    merges: bool = False
    routed: bool = False
    label_in_input: bool = False
    check: KeyCheck | None = None

    @property
    def __wrapped__(self) -> Builder:
        """Its builder: where it was registered from, for messages (``registry.where``)."""
        return self.build

    @property
    def keys(self) -> tuple[str, ...]:
        return self.required + self.optional

    @property
    def doc(self) -> str:
        """Its builder's docstring, first paragraph: its line in docs/config.md."""
        return " ".join((self.build.__doc__ or "").strip().split("\n\n")[0].split())


def check_node_type(name: str, node: object) -> str | None:
    """What a registered node type must have: a builder with a docstring, a known role (a readout
    with its kind), a shape rule, a FLOP rule, and keys that are identifiers."""
    if not isinstance(node, NodeType):
        return "it must be a ffrun.experiment.nodes.NodeType (register a builder with @node_type(...))"
    if not callable(node.build) or not node.doc:
        return "its builder must be a function with a docstring (its first line describes it in docs/config.md)"
    if node.role not in (FF, READOUT, OP):
        return f"its role must be one of {FF}, {READOUT}, {OP}, got {node.role!r}"
    if (node.role == READOUT) != (node.readout is not None) or node.readout not in (None, *READOUT_KINDS):
        return f"a readout (and only a readout) names its kind, one of {', '.join(READOUT_KINDS)}; got {node.readout!r}"
    if node.takes not in (FLAT, IMAGE, None) or node.gives not in (FLAT, IMAGE, "same"):
        return (f"it takes {FLAT}, {IMAGE} or None (either) and gives {FLAT}, {IMAGE} or same, "
                f"got {node.takes!r}, {node.gives!r}")
    if not callable(node.shape):
        return "it has no shape rule (shape=...: its output shape and weights from its input's shape)"
    if not callable(node.flop):
        return "it has no FLOP rule (flop=...: a weightless op declares flop=no_flop)"
    if node.check is not None and not callable(node.check):
        return "its check must be a function (where, spec, fed)"
    keys = node.keys + tuple(node.integers) + tuple(node.choices)
    if not all(isinstance(k, str) and k.isidentifier() for k in keys) or not set(keys) <= set(node.keys):
        return f"its keys must be identifiers, and its integers and choices among its keys, got {keys!r}"
    return None


#: node types by the name ``type:`` gives in YAML; a plugin registers its own with ``@node_type``
NODE_TYPES: Registry[NodeType] = Registry("node type", contract=check_node_type)


def node_type(name: str, **pieces: Any) -> Callable[[Builder], Builder]:
    """Register the decorated builder ``(node name, its keys, context) -> layer`` as node type
    ``name`` with its pieces (the fields of :class:`NodeType`)."""
    def register(build: Builder) -> Builder:
        try:
            node = NodeType(build=build, **pieces)
        except TypeError as exc:
            raise ConfigError(f"node type '{name}': {exc}") from None
        NODE_TYPES.add(name, node)
        return build
    return register


# --- shape and FLOP rules shared by several types ---------------------------------------------

def no_flop(x: tuple, out: tuple, spec: dict) -> float:
    """A weightless op: no multiply-adds to count (its element-wise work is not matmul work)."""
    return 0.0


def same_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    return x, 0


def matmul_flop(x: tuple, out: tuple, spec: dict) -> float:
    """A dense product: 2 x inputs x outputs per sample."""
    return 2.0 * math.prod(x) * math.prod(out)


def conv_map(where: str, x: tuple, spec: dict) -> tuple[int, int]:
    """The map a conv2d node's convolution gives (before its own pooling)."""
    (h, w, _), k, stride = x, spec.get("kernel_size", 3), spec.get("strides", 1)
    if stride > min(h, w):
        raise ConfigError(f"{where}.strides={stride} is larger than the {h}x{w} map it is fed")
    if spec.get("padding", "same") == "valid":
        if k > min(h, w):
            raise ConfigError(f"{where}.kernel_size={k} is larger than the {h}x{w} map it is fed "
                              f"(padding valid); use a smaller kernel or padding same")
        return (h - k) // stride + 1, (w - k) // stride + 1
    return -(-h // stride), -(-w // stride)


def _shape_list(inputs: list[str], fed: list) -> str:
    return ", ".join(f"{i} {'x'.join(map(str, f))}" for i, f in zip(inputs, fed))


# --- FF layers ---------------------------------------------------------------------------------

_FF_KEYS = ("th_pos", "th_neg", "activation", "goodness", "loss", "optimizer", "init")


def _loss(p: dict, ctx: Any, name: str) -> Any:
    loss = p.get("loss", "threshold")
    return make_loss(loss, **ctx.loss_options(loss, p, f"model.layers.{name}"))


def _dense_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    return (spec["units"],), (math.prod(x) + 1) * spec["units"]


@node_type("dense", required=("units",), optional=(*_FF_KEYS, "peer_norm", "peer_init", "weight_decay"),
           takes=FLAT, gives=FLAT, role=FF, shape=_dense_shape, flop=matmul_flop, integers={"units": 1},
           width="units", routed=True)
def build_dense(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """A fully connected FF layer (FFDense); the model's keys are its defaults."""
    m = ctx.model
    th_pos = p.get("th_pos", m.th_pos)
    return FFDense(p["units"], th_pos, p.get("th_neg", m.th_neg if m.th_neg is not None else th_pos),
                   ctx.make_optimizer(p.get("optimizer", m.optimizer), f"model.layers.{name}.optimizer"), name=name,
                   goodness=p.get("goodness", m.goodness), activation=p.get("activation", m.activation),
                   kernel_initializer=ctx.make_initializer(p.get("init", m.init)), routing=p.get("routing"),
                   neg_routing=p.get("neg_routing", "same"), peer_norm=p.get("peer_norm", m.peer_norm),
                   peer_init=p.get("peer_init", m.peer_init), l2=p.get("weight_decay", m.weight_decay),
                   dtype=ctx.dtype, split_gradient=m.split_gradient, loss=_loss(p, ctx, name),
                   num_classes=ctx.num_classes, xla=m.xla)


def conv2d_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    """A conv block's map after its convolution and pool, and its weights (a conv block of a plugin
    with conv2d's keys may reuse it, with conv2d_flop and conv2d_check)."""
    h, w = conv_map(where, x, spec)
    pool = spec.get("pool", 0)
    if pool and pool > min(h, w):
        raise ConfigError(f"{where}.pool={pool} is larger than the {h}x{w} map its convolution gives")
    if pool:
        h, w = h // pool, w // pool
    k, c, filters = spec.get("kernel_size", 3), x[2], spec["filters"]
    bias = filters if spec.get("use_bias", True) else 0
    return (h, w, filters), k * k * (c // spec.get("groups", 1)) * filters + bias


def conv2d_flop(x: tuple, out: tuple, spec: dict) -> float:
    """2 x Hout x Wout x k x k x (C / groups) x filters per image (Hout, Wout: before its pool)."""
    h, w = conv_map("", x, spec)
    k = spec.get("kernel_size", 3)
    return 2.0 * h * w * k * k * (x[2] // spec.get("groups", 1)) * spec["filters"]


def conv2d_check(where: str, spec: dict, fed: str) -> None:
    """The groups of a conv block divide its filters."""
    groups, filters = spec.get("groups", 1), spec.get("filters")
    if isinstance(groups, int) and isinstance(filters, int) and groups > 0 and filters % groups:
        raise ConfigError(f"{where}.groups={groups} must divide filters={filters}")


@node_type("conv2d", required=("filters",),
           optional=("kernel_size", "strides", "padding", *_FF_KEYS, "weight_decay", "groups", "pool", "batchnorm",
                     "pool_kind", "dropout", "use_bias", "class_goodness"),
           takes=IMAGE, gives=IMAGE, role=FF, shape=conv2d_shape, flop=conv2d_flop,
           integers={"filters": 1, "kernel_size": 1, "strides": 1, "groups": 1, "pool": 0},
           choices={"padding": ("same", "valid"), "pool_kind": ("max", "avg")}, width="filters", check=conv2d_check)
def build_conv2d(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """A conv FF block (FFConv2D): convolution, optional groups, pool, BatchNorm and dropout inside."""
    m = ctx.model
    th_pos = p.get("th_pos", 1.0)
    return FFConv2D(p["filters"], p.get("kernel_size", 3), p.get("strides", 1), p.get("padding", "same"),
                    th_pos, p.get("th_neg", th_pos),
                    ctx.make_optimizer(p.get("optimizer", m.optimizer), f"model.layers.{name}.optimizer"), name=name,
                    goodness=p.get("goodness", "mean"), activation=p.get("activation", "relu"),
                    kernel_initializer=ctx.make_initializer(p.get("init", m.init)),
                    loss=_loss(p, ctx, name), l2=p.get("weight_decay", 0.0), dtype=ctx.dtype,
                    groups=p.get("groups", 1), pool=p.get("pool", 0), batchnorm=p.get("batchnorm", False),
                    num_classes=ctx.num_classes, pool_kind=p.get("pool_kind", "max"), dropout=p.get("dropout", 0.0),
                    use_bias=p.get("use_bias", True), class_goodness=p.get("class_goodness", "mean_square"))


# --- weightless ops ----------------------------------------------------------------------------

def _pool_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    (h, w, c), pool = x, spec.get("size", 2)
    if pool > min(h, w):
        raise ConfigError(f"{where}.size={pool} is larger than the {h}x{w} map it is fed")
    return ((-(-h // pool), -(-w // pool), c) if spec.get("padding") == "same" else (h // pool, w // pool, c)), 0


@node_type("pool", optional=("kind", "size", "padding"), takes=IMAGE, gives=IMAGE, role=OP, shape=_pool_shape,
           flop=no_flop, integers={"size": 1}, choices={"kind": ("max", "avg"), "padding": ("valid", "same")})
def build_pool(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """Max or average pooling of a map."""
    return FFPool(p.get("kind", "max"), p.get("size", 2), name=name, padding=p.get("padding", "valid"))


@node_type("flatten", takes=None, gives=FLAT, role=OP, shape=lambda where, x, fed, spec, classes: ((math.prod(x),), 0),
           flop=no_flop)
def build_flatten(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """A map (or several inputs) as one flat vector per sample."""
    return FFFlatten(name=name)


def _prenorm_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    if spec.get("kind") == "class_groupnorm" and classes and x[-1] % classes:
        raise ConfigError(f"{where}.kind: class_groupnorm splits the {x[-1]} channels/units it is fed into "
                          f"{classes} class groups; they do not divide")
    return x, 0


def _prenorm_check(where: str, spec: dict, fed: str) -> None:
    if "scope" in spec and spec.get("kind") in ("layernorm", "class_groupnorm"):
        raise ConfigError(f"{where}.scope applies to kinds l2 and rms; kind {spec['kind']} fixes its own statistics")


@node_type("prenorm", optional=("kind", "scope"), takes=None, gives="same", role=OP, shape=_prenorm_shape,
           flop=no_flop, choices={"kind": ("l2", "rms", "layernorm", "class_groupnorm"), "scope": ("channels", "map")},
           check=_prenorm_check)
def build_prenorm(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """A normalization before the next layer (l2, rms, layernorm, class_groupnorm)."""
    return FFPreNorm(p.get("kind", "l2"), name=name, scope=p.get("scope", "channels"), num_classes=ctx.num_classes)


def _add_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    if len(set(fed)) > 1:
        raise ConfigError(f"{where}.inputs: add needs inputs of one shape, got {_shape_list(spec['inputs'], fed)}; "
                          f"concat joins different channel counts")
    return x, 0


@node_type("add", takes=None, gives="same", role=OP, shape=_add_shape, flop=no_flop, merges=True)
def build_add(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """The sum of two or more inputs of one shape (a shortcut)."""
    return FFMerge("add", name=name)


def _concat_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    if len({f[:-1] for f in fed}) > 1:
        raise ConfigError(f"{where}.inputs: concat joins maps of one height and width, got "
                          f"{_shape_list(spec['inputs'], fed)}; pool the larger one first")
    return (*x[:-1], sum(f[-1] for f in fed)), 0


@node_type("concat", takes=None, gives="same", role=OP, shape=_concat_shape, flop=no_flop, merges=True)
def build_concat(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """Two or more inputs joined along their channels (a shortcut)."""
    return FFMerge("concat", name=name)


def _overlay_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    if spec.get("mode", "add") == "channels":
        return (*x[:2], x[2] + classes), 0
    if math.prod(x) < classes:
        raise ConfigError(f"{where}: mode {spec.get('mode', 'add')} writes the label into the first "
                          f"{classes} values, but it is fed {math.prod(x)}")
    return x, 0


def _overlay_check(where: str, spec: dict, fed: str) -> None:
    value = spec.get("value", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}.value must be a finite number, got {value!r}")
    if spec.get("mode") == "channels" and fed != IMAGE:
        raise ConfigError(f"{where}.mode: 'channels' adds label planes to an image; it is fed a flat vector")


@node_type("overlay", optional=("mode", "value"), takes=None, gives="same", role=OP, shape=_overlay_shape,
           flop=no_flop, choices={"mode": ("add", "replace", "channels")}, label_in_input=True, check=_overlay_check)
def build_overlay(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """The label written into the input (added, replacing the first values, or as label planes)."""
    return FFOverlay(ctx.num_classes, mode=p.get("mode", "add"), value=p.get("value", 1.0), name=name)


# --- readouts ----------------------------------------------------------------------------------

def _softmax_shape(where: str, x: tuple, fed: list, spec: dict, classes: int) -> tuple[tuple, int]:
    return (classes,), (math.prod(x) + 1) * classes


@node_type("softmax", optional=("optimizer", "use_bias", "init", "weight_decay"), takes=None, gives=FLAT,
           label="true", role=READOUT, readout="softmax", shape=_softmax_shape, flop=matmul_flop)
def build_softmax(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """A linear softmax readout trained on its (stopped) inputs; needs its own optimizer."""
    spec = ctx.readout_spec("softmax", name, p)
    return FFSoftmax(ctx.num_classes, ctx.make_optimizer(spec.optimizer, f"model.layers.{name}.optimizer"),
                     name=name, use_bias=spec.use_bias, kernel_initializer=ctx.make_initializer(spec.init),
                     l2=spec.weight_decay, dtype=ctx.dtype)


@node_type("goodness", takes=None, gives=FLAT, label="true", role=READOUT, readout="goodness",
           shape=same_shape, flop=no_flop, label_in_input=True)
def build_goodness(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """The label whose overlay gives its inputs the most goodness (mode=sup; the least for a flipped loss)."""
    return FFGoodness(ctx.num_classes, name=name)


@node_type("classes", optional=("select_range",), takes=None, gives=FLAT, label="true", role=READOUT,
           readout="classes", shape=lambda where, x, fed, spec, classes: ((classes,), 0), flop=no_flop)
def build_classes(name: str, p: dict, ctx: Any) -> BaseFFLayer:
    """The class whose group of units has the most class goodness, summed over its inputs (CwComp)."""
    # each input's class goodness is set in build_graph, from the layer that feeds it
    return FFClassGoodness(ctx.num_classes, name=name, select_range=p.get("select_range", False),
                           num_inputs=len(p["inputs"]))
