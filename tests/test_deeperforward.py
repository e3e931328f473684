"""DeeperForward's pieces as graph options (Sun et al., ICLR 2025): the mean-activity class
goodness and its cwc loss, the per-class GroupNorm and per-image layer norm, conv dropout, the
weightless add/concat shortcuts, the class readout over a validation-chosen range of layers, the
cosine schedule with a floor, the checks of each new key, and the Tiny preset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from ffrun.core import losses
from ffrun.core.layers import FFClassGoodness, FFConv2D, FFMerge, FFPreNorm, Task
from ffrun.errors import ConfigError
from ffrun.experiment.schedules import lr_multiplier
from ffrun.experiment.schema import graph_sizes
from tests.conftest import compose_config
from tests.test_reliability_inputs import problem

TINY = ["experiment=deeperforward_tiny_mnist", "data=digits", "data.val_size=300"]


# --- goodness and loss ------------------------------------------------------------------------------
def _numpy_mean_activity(h: np.ndarray, classes: int) -> np.ndarray:
    per = h.shape[-1] // classes
    return np.stack([h[..., k * per:(k + 1) * per].mean(axis=tuple(range(1, h.ndim))) for k in range(classes)], 1)


def test_mean_activity_goodness_and_its_cwc_loss_match_numpy_in_value_and_gradient():
    rng = np.random.default_rng(0)
    h = np.maximum(rng.normal(size=(4, 3, 3, 6)), 0).astype(np.float32)   # ReLU maps: 3 classes x 2 channels
    y = np.array([0, 2, 1, 2])
    g_np = _numpy_mean_activity(h, 3)
    p = np.exp(g_np - g_np.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss_np = -np.mean(np.log(p[np.arange(4), y]))
    # dL/dh: (softmax - onehot) / N for the unit's class group, spread evenly over its H*W*F/C values
    dg = (p - np.eye(3)[y]) / 4
    grad_np = np.repeat(dg, 2, axis=1)[:, None, None, :] / (3 * 3 * 2) * np.ones_like(h)

    ht = tf.constant(h)
    with tf.GradientTape() as tape:
        tape.watch(ht)
        g = losses.class_goodness(ht, 3, "mean_activity")
        loss = losses.make_loss("cwc").classes(g, tf.constant(y), 0.0)
    np.testing.assert_allclose(g.numpy(), g_np, rtol=1e-6)
    np.testing.assert_allclose(loss.numpy(), loss_np, rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, ht).numpy(), grad_np, rtol=1e-5, atol=1e-8)
    # not the squared form: the two kinds differ on the same map
    assert not np.allclose(losses.class_goodness(ht, 3, "mean_square").numpy(), g_np)
    with pytest.raises(ValueError, match="class_goodness must be one of mean_square, mean_activity, got 'mean'"):
        losses.class_goodness(ht, 3, "mean")


# --- normalizations -------------------------------------------------------------------------------
def test_class_groupnorm_standardizes_each_class_group_over_its_channels_and_positions():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(2, 4, 4, 6)).astype(np.float32)       # 3 class groups of 2 channels
    out = FFPreNorm("class_groupnorm", num_classes=3).transform(tf.constant(x), None).numpy()
    by_hand = np.empty_like(x)
    for n in range(2):
        for k in range(3):
            group = x[n, :, :, 2 * k:2 * k + 2]
            by_hand[n, :, :, 2 * k:2 * k + 2] = (group - group.mean()) / np.sqrt(group.var() + 1e-5)
    np.testing.assert_allclose(out, by_hand, rtol=1e-4, atol=1e-5)
    flat = rng.normal(size=(3, 4)).astype(np.float32)                      # a dense layer: its units
    out = FFPreNorm("class_groupnorm", num_classes=2).transform(tf.constant(flat), None).numpy()
    halves = [flat[:, :2], flat[:, 2:]]
    by_hand = np.concatenate([(h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-5) for h in halves], 1)
    np.testing.assert_allclose(out, by_hand, rtol=1e-4, atol=1e-5)


def test_layernorm_standardizes_each_image_over_all_its_pixels():
    rng = np.random.default_rng(2)
    x = rng.normal(0.5, 2.0, size=(3, 5, 5, 2)).astype(np.float32)
    out = FFPreNorm("layernorm").transform(tf.constant(x), None).numpy()
    mean, var = x.mean(axis=(1, 2, 3), keepdims=True), x.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


# --- conv block options ---------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_conv_dropout_acts_in_training_steps_only(fused):
    x = tf.constant(np.random.default_rng(3).normal(size=(8, 6, 6, 2)).astype(np.float32))
    block = FFConv2D(20, dropout=0.5, loss="cwc", num_classes=10, fused=fused, name=f"drop_{fused}")
    block.forward(x[:2])
    inference = block.forward(x).numpy()
    np.testing.assert_array_equal(block.forward(x).numpy(), inference)      # no noise outside training
    training = block.forward(x, training=True).numpy()
    on = inference > 0
    kept = np.isclose(training[on], inference[on] / 0.5, rtol=1e-5)
    dropped = training[on] == 0
    assert np.all(kept | dropped)                                          # kept units are scaled by 1/(1-p)
    assert 0.4 < dropped.mean() < 0.6, dropped.mean()


def test_conv_without_bias_has_only_its_kernel():
    block = FFConv2D(10, use_bias=False, loss="cwc", num_classes=10)
    block.forward(tf.zeros([1, 4, 4, 1]))
    assert [v.path.rsplit("/", 1)[-1] for v in block.trainable_variables] == ["kernel"]


# --- shortcuts ------------------------------------------------------------------------------------
def test_add_and_concat_join_maps_without_weights():
    a, b = tf.ones([2, 3, 3, 4]), 2 * tf.ones([2, 3, 3, 4])
    np.testing.assert_array_equal(FFMerge("add").transform([a, b], None).numpy(), 3 * np.ones([2, 3, 3, 4]))
    joined = FFMerge("concat").transform([a, b[..., :1]], None).numpy()
    assert joined.shape == (2, 3, 3, 5) and joined[..., 4].min() == 2
    assert FFMerge("add").trainable_variables == []


def test_merge_shapes_are_propagated_and_mismatches_named():
    nodes = {"c1": {"type": "conv2d", "filters": 10, "inputs": ["input"]},
             "c2": {"type": "conv2d", "filters": 10, "inputs": ["c1"]},
             "c3": {"type": "conv2d", "filters": 20, "strides": 2, "inputs": ["c2"]},
             "sum": {"type": "add", "inputs": ["c1", "c2"]},
             "down": {"type": "pool", "kind": "avg", "inputs": ["sum"]},
             "cat": {"type": "concat", "inputs": ["c3", "down"]}}
    shapes, weights = graph_sizes(nodes, (8, 8, 1), 10)
    assert shapes["sum"] == (8, 8, 10) and shapes["cat"] == (4, 4, 30) and weights["cat"] == 0
    with pytest.raises(ConfigError, match=r"model.layers.bad.inputs: add needs inputs of one shape, got c1 8x8x10, c3 4x4x20"):
        graph_sizes({**nodes, "bad": {"type": "add", "inputs": ["c1", "c3"]}}, (8, 8, 1), 10)
    with pytest.raises(ConfigError, match="model.layers.bad.inputs: concat joins maps of one height and width"):
        graph_sizes({**nodes, "bad": {"type": "concat", "inputs": ["c1", "c3"]}}, (8, 8, 1), 10)


# --- the range readout ----------------------------------------------------------------------------
def _votes(label_of_input: list[np.ndarray], strength: list[float], classes: int = 3) -> list[tf.Tensor]:
    """One (N, classes) input per layer: each image's goodness is `strength` on the class that layer votes."""
    return [tf.constant(np.eye(classes, dtype=np.float32)[lab] * s) for lab, s in zip(label_of_input, strength)]


def test_the_range_is_chosen_from_the_counted_passes_and_test_passes_only_read_it():
    y = np.array([0, 1, 2, 0, 1, 2])
    wrong = (y + 1) % 3
    readout = FFClassGoodness(3, select_range=True, num_inputs=3, kinds=("mean_activity",) * 3)
    readout.set_task(Task.EVAL)
    # validation: only the middle layer is right, and the others outvote it in any range that holds them
    readout.reset_metrics()
    readout.ff_do_task(_votes([wrong, y, wrong], [5.0, 1.0, 5.0]), tf.constant(y))
    assert readout.select_range_from_counts() == (1, 1, 1.0)
    # a test pass on which the first layer alone would be best: it is scored at the validation's range
    readout.reset_metrics()
    readout.ff_do_task(_votes([y, wrong, wrong], [5.0, 1.0, 1.0]), tf.constant(y))
    assert readout.metric_results()["acc"] == 0.0 and readout.range == (1, 1)


def test_ties_go_to_the_shortest_range_that_ends_first():
    y = np.array([0, 1, 2])
    readout = FFClassGoodness(3, select_range=True, num_inputs=3, kinds=("mean_activity",) * 3)
    readout.set_task(Task.EVAL)
    readout.ff_do_task(_votes([y, y, y], [1.0, 1.0, 1.0]), tf.constant(y))
    assert readout.select_range_from_counts() == (0, 0, 1.0)


def test_the_range_is_a_weight_that_the_best_epoch_copy_and_checkpoints_carry(tmp_path):
    from ffrun.core.checkpoints import BestWeights, Checkpointer
    y = np.array([0, 1, 2, 0, 1, 2])
    wrong = (y + 1) % 3
    readout = FFClassGoodness(3, select_range=True, num_inputs=3, kinds=("mean_activity",) * 3, name="classes")
    readout.set_task(Task.EVAL)

    def choose(votes):
        readout.reset_metrics()
        readout.ff_do_task(votes, tf.constant(y))
        readout.select_range_from_counts()
    best = BestWeights({"classes": readout})
    checkpointer = Checkpointer(tmp_path / "ckpt", {"classes": readout}, best)
    choose(_votes([wrong, y, wrong], [5.0, 1.0, 5.0]))          # selects [1, 1]
    best.take()
    checkpointer.save(1)
    choose(_votes([y, wrong, wrong], [5.0, 1.0, 1.0]))          # selects [0, 0]
    assert readout.range == (0, 0)
    assert best.restore() and readout.range == (1, 1)
    choose(_votes([y, wrong, wrong], [5.0, 1.0, 1.0]))
    checkpointer.restore_latest()
    assert readout.range == (1, 1)


def _train(overrides: list[str], run_dir):
    from ffrun.run import loop, outputs
    run_dir.mkdir()
    return loop.train(compose_config([*TINY, *overrides]), run_dir, outputs.make_console())


def test_the_range_is_selected_on_validation_passes_only_and_written_to_results(tmp_path, monkeypatch):
    """With track_test a test pass follows every validation pass: each selection must have counted
    exactly the 300 validation images (the digits' test split has 359)."""
    counted = []
    select = FFClassGoodness.select_range_from_counts

    def spy(self):
        counted.append(float(self.range_seen.numpy()))
        return select(self)
    monkeypatch.setattr(FFClassGoodness, "select_range_from_counts", spy)
    # a smaller net than the preset's, so that the run takes seconds
    results = _train(["epochs=2", "track_test=true", "model.layers.conv2.filters=20", "model.layers.conv3.filters=20",
                      "model.layers.conv4.filters=20", "model.layers.conv1.filters=20"], tmp_path / "run")
    assert results["status"] == "completed"
    assert counted and set(counted) == {300.0}, counted
    chosen = results["readouts"]["classes/acc"]
    order = ["conv1", "conv2", "conv3", "conv4"]
    assert order.index(chosen["range"][0]) <= order.index(chosen["range"][1])
    assert chosen["range_final"][0] in order


# --- schedule --------------------------------------------------------------------------------------
def test_cosine_decays_from_the_base_rate_to_its_floor_per_stage():
    mult = lr_multiplier("cosine", [10, 4], 0.1)
    assert mult(1) == 1.0
    assert mult(6) == pytest.approx(0.55)                                  # half way: the mean of 1 and 0.1
    assert mult(10) == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.9 * math.pi)))
    values = [mult(e) for e in range(1, 11)]
    assert all(a > b for a, b in zip(values, values[1:])) and min(values) > 0.1
    assert mult(11) == 1.0                                                 # a new stage starts afresh


# --- checks before a run folder -------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["model.layers.conv1.dropout=1.5"], "model.layers.conv1.dropout must be a rate in [0, 1), got 1.5"),
    (["model.layers.conv1.class_goodness=mean"],
     "model.layers.conv1.class_goodness must be one of mean_square, mean_activity, got 'mean'"),
    (["model.layers.conv1.loss=threshold"], "model.layers.conv1.class_goodness applies to the class losses"),
    (["model.layers.conv1.use_bias=maybe"], "model.layers.conv1.use_bias must be true or false, got 'maybe'"),
    (["+model.layers.conv1.pool_kind=min"], "model.layers.conv1.pool_kind must be one of max, avg, got 'min'"),
    (["model.layers.gn1.kind=batch"], "model.layers.gn1.kind must be one of l2, rms, layernorm, class_groupnorm"),
    (["+model.layers.gn1.scope=map"], "model.layers.gn1.scope applies to kinds l2 and rms"),
    (["model.layers.classes.select_range=1"], "model.layers.classes.select_range must be true or false, got 1"),
    (["eval_on=test"], "model.layers.classes.select_range chooses its range on the per-epoch evaluation split"),
    (["lr_min_factor=2"], "lr_min_factor must be in [0, 1], got 2"),
    (["lr_schedule=constant"], "lr_min_factor is the floor of lr_schedule=cosine"),
    (["+model.layers.sc={type: add, inputs: [conv4]}"], "model.layers.sc.inputs: add joins two or more inputs"),
    (["+model.layers.sc={type: add, inputs: [conv2, conv4]}"],
     "model.layers.sc.inputs: add needs inputs of one shape, got conv2 4x4x200, conv4 2x2x400"),
    (["+model.layers.sc={type: concat, inputs: [conv2, conv4]}"],
     "model.layers.sc.inputs: concat joins maps of one height and width"),
    (["+model.layers.pool1.padding=full"], "model.layers.pool1.padding must be one of valid, same, got 'full'"),
    (["+model.layers.gnx={type: prenorm, kind: class_groupnorm, inputs: [norm0]}"],
     "model.layers.gnx.kind: class_groupnorm splits the 1 channels/units it is fed into 10 class groups"),
])
def test_each_new_key_is_refused_in_one_line_naming_the_node_and_key(args, message):
    found = problem([*TINY, *args])
    assert found is not None and found.startswith(message), found
    assert "\n" not in found


# --- the preset -----------------------------------------------------------------------------------
def test_the_tiny_preset_passes_the_pre_check_and_trains_an_epoch(tmp_path):
    assert problem(TINY) is None
    results = _train(["epochs=1"], tmp_path / "tiny")
    assert results["status"] == "completed" and results["epochs"] == 1
    assert results["readouts"]["classes/acc"]["range"][0] in ("conv1", "conv2", "conv3", "conv4")


def test_the_resnet_preset_joins_its_shortcuts_on_mnist_shapes():
    """ResNet-17's shapes on 28x28 MNIST (no training here: that net is the lead's to time); the
    padded shortcut pool meets the stride-2 conv's map on the odd 7x7 map."""
    from ffrun.experiment.schema import network_nodes, typed
    spec = typed(compose_config(["experiment=deeperforward_resnet17_mnist", "data=digits"]))
    shapes, weights = graph_sizes(network_nodes(spec.model, False), (28, 28, 1), 10)
    assert shapes["add2"] == (28, 28, 100) and shapes["cat4"] == (28, 28, 200) and shapes["down4"] == (14, 14, 200)
    assert shapes["cat12"] == (7, 7, 800) and shapes["down12"] == shapes["c13"] == shapes["add14"] == (4, 4, 800)
    assert sum(weights[f"c{i}"] for i in range(17)) == sum(weights.values())   # shortcuts and norms: no weights
    assert problem(["experiment=deeperforward_resnet17_mnist", "data=digits", "data.val_size=300"]) is None


def test_a_padded_pool_averages_only_the_pixels_inside_the_map():
    from ffrun.core.layers import FFPool
    x = tf.reshape(tf.range(9, dtype=tf.float32), [1, 3, 3, 1])
    out = FFPool("avg", 2, padding="same").transform(x, None).numpy()[0, :, :, 0]
    np.testing.assert_allclose(out, [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8]])
