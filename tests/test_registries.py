"""Every registry of components (losses, goodness functions, node types, readouts): each registered
component has every piece its kind needs, a broken one is refused at registration in one line, and
the checks that read the registries (the schema, the divergence check) see what is registered."""
from __future__ import annotations

import inspect
import math

import keras
import pytest
import tensorflow as tf

from ffrun.core import losses
from ffrun.core.layers import FFDense
from ffrun.core.trainer import EpochResult, TrainingDiverged, TrainMgr
from ffrun.errors import ConfigError, RegistryError
from ffrun.experiment import schema
from ffrun.registry import Registry

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
    return schema.FFRunConfig(model=model, protocol=schema.SplitProtocol(), **top)


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
