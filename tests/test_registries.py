"""Every registry of components (losses, goodness functions, node types, readouts): each registered
component has every piece its kind needs, a broken one is refused at registration in one line, and
the checks that read the registries (the schema, the divergence check) see what is registered."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from ffrun.core import losses
from ffrun.core.layers import FFDense
from ffrun.core.trainer import EpochResult, TrainingDiverged, TrainMgr
from ffrun.errors import ConfigError, RegistryError
from ffrun.experiment import nodes, schema
from ffrun.experiment.protocols.split import SplitConfig
from ffrun.registry import Registry

REPO = Path(__file__).resolve().parents[1]

# --- losses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", losses.LOSSES.names())
def test_every_registered_loss_has_its_pieces(name):
    cls = losses.LOSSES.get(name)
    assert cls.name == name and cls.__doc__.strip()
    assert cls.train_metrics and all(m.isidentifier() for m in cls.train_metrics)
    loss = losses.make_loss(name)     # every hyper-parameter has a default
    g = tf.constant([0.5, 2.0, 3.0])
    if cls.competitive:
        assert math.isfinite(float(loss.classes(tf.constant([[0.5, 2.0], [1.0, 0.1]]), tf.constant([1, 0]), 1.0)))
    else:
        value, metrics = loss.pair(g, g[::-1], 1.0, 1.0)
        assert math.isfinite(float(value)) and set(metrics) == set(cls.train_metrics)
    for key, keyword in losses.parameter_keys(name).items():
        assert key == f"{name}_{keyword}"
        param = inspect.signature(cls).parameters[keyword]
        if hasattr(schema.ModelConfig, key):   # a model-wide key starts at the loss's own default
            assert getattr(schema.ModelConfig(), key) == param.default


def test_the_schema_reads_the_loss_kinds_from_the_registry():
    competitive = {n for n, cls in losses.LOSSES.items() if cls.competitive}
    assert set(schema.class_losses()) == competitive == {"cwc", "pvn", "cwg"}
    assert {n for n, cls in losses.LOSSES.items() if cls.needs_pairs} == {"symba"}
    with pytest.raises(ValueError, match="loss must be one of cwc, cwg, flipped, pvn, symba, threshold, got 'hinge'"):
        losses.make_loss("hinge")


class _Contrast(losses.FFLoss):
    """A margin on the gap between aligned goodness pairs."""

    name = "contrast"
    needs_pairs = True
    train_metrics = ("loss_contrast",)

    def __init__(self, margin: float = 1.0):
        self.margin = margin

    def pair(self, g_pos, g_neg, th_pos, th_neg):
        loss = tf.reduce_mean(tf.nn.relu(self.margin - (g_pos - g_neg)))
        return loss, {"loss_contrast": loss}


def test_a_complete_loss_registers_and_its_parameter_becomes_a_key():
    registry = Registry("loss", contract=losses.check_loss)
    registry.add("contrast", _Contrast)
    assert registry.get("contrast") is _Contrast


def _broken(**attrs) -> type:
    return type("Broken", (_Contrast,), {"__doc__": "A broken loss.", **attrs})


class _NoTerms(losses.FFLoss):
    """Has neither positive/negative terms nor a pair."""

    name = "noterms"


class _Untyped(_Contrast):
    """A hyper-parameter without a type."""

    def __init__(self, margin=1.0):
        super().__init__(margin)


@pytest.mark.parametrize("name, component, reason", [
    ("contrast", int, "it must be a subclass of ffrun.core.losses.FFLoss"),
    ("other", _Contrast, "its `name` attribute is 'contrast'; set it to the name it is registered under"),
    ("contrast", _broken(__doc__=None), "it has no docstring"),
    ("contrast", _broken(train_metrics=()), "its `train_metrics` must be a non-empty tuple of the metric names"),
    ("contrast", _broken(train_metrics="loss"), "its `train_metrics` must be a non-empty tuple"),
    ("contrast", _broken(pair=losses.FFLoss.pair), "a paired loss \\(needs_pairs\\) must define pair"),
    ("noterms", _NoTerms, "it must define positive\\(g, threshold\\) and negative"),
    ("contrast", _broken(competitive=True), "a class loss \\(competitive\\) must define classes"),
    ("contrast", _Untyped, "its hyper-parameter 'margin' needs a default and a type annotation"),
])
def test_a_broken_loss_is_refused_at_registration_in_one_line(name, component, reason):
    registry = Registry("loss", contract=losses.check_loss)
    with pytest.raises(RegistryError, match=f"^loss '{name}' from .*: {reason}") as info:
        registry.add(name, component)
    assert "\n" not in str(info.value) and name not in registry


def test_a_builtin_loss_name_cannot_be_taken_twice():
    with pytest.raises(RegistryError, match="loss 'symba' from .*_Contrast clashes with ffrun.core.losses.SymbaLoss"):
        losses.LOSSES.add("symba", _Contrast)
    assert losses.LOSSES.get("symba") is losses.SymbaLoss


def _symba_and_custom_layers() -> TrainMgr:
    keras.utils.set_random_seed(0)
    layers = {"dense1": FFDense(4, loss=losses.make_loss("symba"), name="dense1"),
              "dense2": FFDense(4, loss=_Contrast(), name="dense2"),
              "dense3": FFDense(4, name="dense3")}
    return TrainMgr(layers, lambda X, y, y_ff: None, max_loss=1e3)


@pytest.mark.parametrize("key", ["dense1/loss_pair", "dense2/loss_contrast", "dense3/loss_neg"])
def test_a_loss_metric_above_max_loss_stops_the_run(key):
    """The divergence check reads each layer's loss metrics from its loss: symba's loss_pair and
    a plugin's own metric are held under max_loss like the threshold loss's."""
    mgr = _symba_and_custom_layers()
    mgr.check_losses(EpochResult(1, 0, 0.1, 10, {key: 999.0}))     # under the bound: goes on
    with pytest.raises(TrainingDiverged, match=f"{key} reached 5e\\+04 in epoch 2, above max_loss=1000"):
        mgr.check_losses(EpochResult(2, 0, 0.1, 10, {key: 5e4}))


def test_a_metric_that_is_not_a_training_loss_may_exceed_max_loss():
    """goodness is not a loss: a wide layer's goodness in the thousands is no divergence."""
    _symba_and_custom_layers().check_losses(EpochResult(1, 0, 0.1, 10, {"dense1/goodness_pos": 5e4,
                                                                        "dense3/loss_pair": 5e4}))


# --- the schema reads the losses' kinds and hyper-parameters -------------------------------------

def _typed(model_layers: dict | None = None, **top) -> schema.FFRunConfig:
    model = schema.ModelConfig(**({"layers": model_layers} if model_layers else {}))
    for key, value in top.pop("model", {}).items():
        setattr(model, key, value)
    return schema.FFRunConfig(model=model, protocol=SplitConfig(), **top)


def test_a_loss_hyper_parameter_is_checked_where_it_is_set():
    with pytest.raises(ConfigError, match=r"^model.symba_alpha must be a finite number > 0, got -1.0$"):
        _typed(model={"symba_alpha": -1.0})
    layers = {"d1": {"type": "dense", "units": 4, "loss": "cwg", "cwg_weight": 1.5, "inputs": ["input"]},
              "sm": {"type": "softmax", "inputs": ["d1"], "optimizer": {"class_name": "Adam"}}}
    with pytest.raises(ConfigError, match=r"^model.layers.d1.cwg_weight must be a number in \[0, 1\], got 1.5$"):
        _typed(layers, pairing="same_step")


def test_a_node_key_of_another_loss_is_unknown():
    layers = {"d1": {"type": "dense", "units": 4, "symba_alpha": 2.0, "inputs": ["input"]}}
    with pytest.raises(ConfigError, match=r"model.layers.d1: unknown key\(s\) \['symba_alpha'\] for type dense"):
        schema.check_graph(layers)


# --- goodness functions -------------------------------------------------------------------------

@pytest.mark.parametrize("registry", [losses.GOODNESS, losses.CLASS_GOODNESS], ids=lambda r: r.kind)
def test_every_goodness_function_is_documented_and_reduces_to_one_value_per_row(registry):
    assert registry.names()
    for name, fn in registry.items():
        assert losses.check_goodness(name, fn) is None and fn.__doc__.strip()
    for name in losses.GOODNESS.names():
        assert losses.goodness(tf.ones([3, 4]), name).shape == (3,)
    for name in losses.CLASS_GOODNESS.names():
        assert losses.class_goodness(tf.ones([3, 4]), 2, name).shape == (3, 2)


@pytest.mark.parametrize("component, reason", [(3, "it must be a function"),
                                               (lambda sq, mask: sq, "it has no docstring")])
def test_a_broken_goodness_function_is_refused(component, reason):
    with pytest.raises(RegistryError, match=f"^goodness 'odd' from .*: {reason}"):
        Registry("goodness", contract=losses.check_goodness).add("odd", component)


def test_the_schema_offers_the_registered_goodness_functions():
    with pytest.raises(ConfigError, match=r"^model.goodness must be one of sum, mean, got 'median'$"):
        _typed(model={"goodness": "median"})
    layers = {"c1": {"type": "conv2d", "filters": 4, "class_goodness": "median", "loss": "cwc", "inputs": ["input"]}}
    with pytest.raises(ConfigError, match=r"c1.class_goodness must be one of mean_square, mean_activity, got 'median'"):
        schema.check_graph(layers)


# --- node types and readouts --------------------------------------------------------------------

ADAM = {"class_name": "Adam", "learning_rate": 1e-3}
#: every built-in node type in one of two small graphs on 8 x 8 x 1 images and 4 classes: a
#: supervised conv net with shortcuts, and a competitive one read out by class goodness
SUPERVISED = {
    "ov": {"type": "overlay", "mode": "channels", "inputs": ["input"]},
    "c1": {"type": "conv2d", "filters": 4, "inputs": ["ov"]},
    "n1": {"type": "prenorm", "kind": "rms", "inputs": ["c1"]},
    "c2": {"type": "conv2d", "filters": 4, "groups": 2, "inputs": ["n1"]},
    "sum": {"type": "add", "inputs": ["n1", "c2"]},
    "cat": {"type": "concat", "inputs": ["n1", "sum"]},
    "p1": {"type": "pool", "size": 2, "inputs": ["cat"]},
    "fl": {"type": "flatten", "inputs": ["p1"]},
    "d1": {"type": "dense", "units": 8, "inputs": ["fl"]},
    "sm": {"type": "softmax", "inputs": ["d1"], "optimizer": ADAM},
    "gd": {"type": "goodness", "inputs": ["d1"]},
}
COMPETITIVE = {
    "c1": {"type": "conv2d", "filters": 4, "loss": "cwc", "inputs": ["input"]},
    "cls": {"type": "classes", "inputs": ["c1"]},
}


def _network(layers: dict, supervised: bool):
    from ffrun.experiment.build import build_network
    keras.utils.set_random_seed(0)
    return build_network(schema.ModelConfig(layers=layers), 4, supervised, image_shape=(8, 8, 1))


@pytest.mark.parametrize("name", nodes.NODE_TYPES.in_order())
def test_every_node_type_has_its_pieces_and_its_line_in_the_docs(name):
    ntype = nodes.NODE_TYPES.get(name)
    assert nodes.check_node_type(name, ntype) is None
    assert ntype.doc and f"| `{name}` |" in (REPO / "docs" / "config.md").read_text()
    assert name in {spec["type"] for spec in (*SUPERVISED.values(), *COMPETITIVE.values())}, \
        "add the new built-in type to a graph above, so that its builder, shapes and FLOPs are exercised"


def test_every_layer_of_a_built_graph_has_the_flops_and_role_of_its_type():
    net = _network(SUPERVISED, supervised=True)
    flop = {name: layer.forward_flop for name, layer in net.layers.items()}
    assert flop["c1"] == 2 * 8 * 8 * 3 * 3 * 5 * 4          # 1 channel + 4 label planes, 3 x 3 kernel, same padding
    assert flop["c2"] == 2 * 8 * 8 * 3 * 3 * (4 // 2) * 4    # 2 groups
    assert flop["d1"] == 2 * (4 * 4 * 8) * 8 and flop["sm"] == 2 * 8 * 4
    assert all(flop[n] == 0 for n in ("ov", "n1", "sum", "cat", "p1", "fl", "gd"))
    assert net.roles.ff == ("c1", "c2", "d1") and net.roles.softmax == ("sm",) and net.roles.goodness == ("gd",)
    competitive = _network(COMPETITIVE, supervised=False)
    assert competitive.roles.classes == ("cls",) and competitive.roles.ff == ("c1",)


def test_conv_layers_count_their_flops_in_an_epoch_and_a_layer_without_a_rule_is_refused():
    from ffrun.core.flops import ff_epoch_flop
    from ffrun.core.layers import Task
    from ffrun.core.trainer import FFData, TaskEntry
    net = _network(COMPETITIVE, supervised=False)
    data = FFData.from_numpy(np.zeros((6, 8, 8, 1), np.float32), np.arange(6) % 4)
    counted, _ = ff_epoch_flop(net.layers, [TaskEntry(Task.TRAIN_POS, data)])
    assert counted == 6 * 2 * net.layers["c1"].forward_flop == 6 * 2 * (2 * 8 * 8 * 9 * 1 * 4)
    hand_made = {"d": FFDense(4, name="d")}
    with pytest.raises(ValueError, match="layer d \\(FFDense\\) has no FLOP count"):
        ff_epoch_flop(hand_made, [TaskEntry(Task.TRAIN_POS, FFData.from_numpy(np.zeros((2, 3)), np.zeros(2)))])


@pytest.fixture
def node_types(monkeypatch) -> Registry:
    """A copy of the node types for a test to register into (the real registry stays as it is)."""
    copy = Registry("node type", contract=nodes.check_node_type)
    for name in nodes.NODE_TYPES.in_order():
        copy.add(name, nodes.NODE_TYPES.get(name))
    monkeypatch.setattr(nodes, "NODE_TYPES", copy)
    return copy


def _register_tanh_dense() -> None:
    @nodes.node_type("tanh_dense", required=("units",), optional=("th_pos",), takes=nodes.FLAT, gives=nodes.FLAT,
                     role=nodes.FF, shape=lambda where, x, fed, spec, classes: ((spec["units"],), 0),
                     flop=nodes.matmul_flop, integers={"units": 1}, width="units")
    def build_tanh_dense(name: str, p: dict, ctx) -> FFDense:
        """A dense FF layer of tanh units."""
        return FFDense(p["units"], p.get("th_pos", 0.1), p.get("th_pos", 0.1), name=name, activation="tanh")


def test_a_new_node_type_is_checked_built_and_counted_from_its_registration(node_types):
    _register_tanh_dense()
    graph = {"t1": {"type": "tanh_dense", "units": 8, "inputs": ["input"]},
             "sm": {"type": "softmax", "inputs": ["t1"], "optimizer": ADAM}}
    net = _network(graph, supervised=False)
    assert net.roles.ff == ("t1",) and net.layers["t1"].forward_flop == 2 * 64 * 8
    with pytest.raises(ConfigError, match=r"^model.layers.t1.units must be an integer >= 1, got 0$"):
        schema.check_graph({**graph, "t1": {**graph["t1"], "units": 0}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['filters'\] for type tanh_dense; its keys are "
                                          r"\['units', 'th_pos'\]"):
        schema.check_graph({**graph, "t1": {**graph["t1"], "filters": 3}})
    with pytest.raises(ConfigError, match=r"declares no FF layer \(a dense, conv2d or tanh_dense node\)"):
        schema.check_roles({"sm": graph["sm"]}, supervised=False)


def _build(name: str, p: dict, ctx):
    """A documented builder."""


@pytest.mark.parametrize("pieces, reason", [
    ({"flop": None}, "it has no FLOP rule \\(flop=...: a weightless op declares flop=no_flop\\)"),
    ({"shape": None}, "it has no shape rule"),
    ({"build": lambda n, p, c: None}, "its builder must be a function with a docstring"),
    ({"role": "probe"}, "its role must be one of ff, readout, op, got 'probe'"),
    ({"role": nodes.READOUT}, "a readout \\(and only a readout\\) names its kind"),
    ({"readout": "softmax"}, "a readout \\(and only a readout\\) names its kind"),
    ({"integers": {"filters": 1}}, "its keys must be identifiers, and its integers and choices among its keys"),
    ({"takes": "map"}, "it takes flat, image or None"),
    ({"check": 3}, "its check must be a function"),
])
def test_a_broken_node_type_is_refused_at_registration_in_one_line(pieces, reason):
    complete = {"build": _build, "role": nodes.OP, "takes": None, "gives": "same", "shape": nodes.same_shape,
                "flop": nodes.no_flop, "optional": ("size",)}
    registry = Registry("node type", contract=nodes.check_node_type)
    registry.add("fine", nodes.NodeType(**complete))
    where = "tests.test_registries.(_build|<lambda>)"     # the builder it wraps
    with pytest.raises(RegistryError, match=f"^node type 'block' from {where}: {reason}") as info:
        registry.add("block", nodes.NodeType(**{**complete, **pieces}))
    assert "\n" not in str(info.value) and "block" not in registry


def test_the_decorator_refuses_a_node_type_without_its_required_pieces(node_types):
    with pytest.raises(ConfigError, match="^node type 'block': .*missing .* required .*argument"):
        nodes.node_type("block", role=nodes.OP, takes=None, gives="same")(_build)
    assert "block" not in node_types


def test_a_readout_of_the_generated_mlp_is_any_registered_readout_type():
    parsed = schema.ReadoutConfig.parse({"type": "classes", "inputs": ["dense2.."]}, "model.readouts.cls")
    assert parsed.type == "classes"
    with pytest.raises(ConfigError, match=r"^model.readouts.x.type must be one of softmax, goodness, classes, "
                                          r"got 'linear'$"):
        schema.ReadoutConfig.parse({"type": "linear", "inputs": ["dense2.."]}, "model.readouts.x")
    model = schema.ModelConfig(num_layers=2, units=8, readouts={"cls": {"type": "classes", "inputs": ["dense1.."]}})
    with pytest.raises(ConfigError, match=r"^model.readouts.cls: a classes readout reads layers trained by a class "
                                          r"loss \(cwc, pvn, cwg\): it needs protocol=competitive$"):
        schema.FFRunConfig(model=model, protocol=SplitConfig())
