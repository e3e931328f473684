"""Channel-wise competitive learning (CwComp): class goodness, the class losses against hand
computations, the grouped convolution, one block's step against a hand-written one, the protocol
without negatives, its config errors, and a small run that learns."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ffrun.core import losses
from ffrun.core.layers import FFConv2D, GroupedConv2D, Task
from ffrun.experiment.build import build_run
from ffrun.run import loop, outputs

TINY_CWCOMP = ["experiment=cwcomp_mnist", "data=digits", "data.val_size=300", "batch_size=64",
               "model.layers.conv1.filters=10", "model.layers.conv2.filters=20", "model.layers.conv3.filters=20",
               "model.layers.conv4.filters=40", "schedule=[[all,2],[[conv4,softmax],1]]",
               "checkpoint.every=0", "tensorboard.enabled=false"]


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softplus(z):
    return np.log1p(np.exp(z))


def test_class_goodness_is_the_mean_square_of_each_contiguous_channel_group_over_positions():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 3, 3, 6)).astype(np.float32)     # 3 classes x 2 channels
    g = losses.class_goodness(tf.constant(h), 3).numpy()
    by_hand = np.stack([np.mean(h[..., 2 * k:2 * k + 2] ** 2, axis=(1, 2, 3)) for k in range(3)], axis=1)
    np.testing.assert_allclose(g, by_hand, rtol=1e-6)
    flat = rng.normal(size=(4, 6)).astype(np.float32)        # a dense layer: its units
    np.testing.assert_allclose(losses.class_goodness(tf.constant(flat), 2).numpy(),
                               np.stack([np.mean(flat[:, :3] ** 2, 1), np.mean(flat[:, 3:] ** 2, 1)], 1), rtol=1e-6)
    with pytest.raises(ValueError, match="divisible by the 4 classes, got 6"):
        losses.class_goodness(tf.constant(flat), 4)


@pytest.mark.parametrize("name", ["cwc", "pvn", "cwg"])
def test_class_losses_value_and_gradient_by_hand(name):
    rng = np.random.default_rng(1)
    g = rng.uniform(0.0, 4.0, size=(5, 4)).astype(np.float64)
    y = np.array([0, 3, 1, 1, 2])
    n, c, theta = 5, 4, 2.0
    onehot = np.eye(c)[y]
    p = _softmax(g)
    ce = -np.mean(np.log(p[np.arange(n), y]))
    d_ce = (p - onehot) / n
    g_true = g[np.arange(n), y]
    g_rest = (g.sum(1) - g_true) / (c - 1)
    pvn = 0.5 * (np.mean(_softplus(theta - g_true)) + np.mean(_softplus(g_rest - theta)))
    # d/dg of 0.5 mean softplus(theta - g_y) and of 0.5 mean softplus(mean_{c != y} g_c - theta)
    d_pvn = (-0.5 * _sigmoid(theta - g_true)[:, None] * onehot
             + 0.5 * _sigmoid(g_rest - theta)[:, None] * (1 - onehot) / (c - 1)) / n
    value, grad = {"cwc": (ce, d_ce), "pvn": (pvn, d_pvn),
                   "cwg": (0.28 * ce + 0.72 * pvn, 0.28 * d_ce + 0.72 * d_pvn)}[name]
    gt = tf.Variable(g)
    loss_fn = losses.make_loss(name)
    assert loss_fn.competitive and loss_fn.train_metrics == ("loss",)
    with tf.GradientTape() as tape:
        loss = loss_fn.classes(gt, tf.constant(y), theta)
    np.testing.assert_allclose(float(loss), value, rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, gt).numpy(), grad, rtol=1e-6, atol=1e-12)


def test_grouped_conv_equals_keras_grouped_conv_in_value_and_kernel_gradient():
    x = tf.random.stateless_normal([3, 6, 6, 4], [0, 2])
    ref = keras.layers.Conv2D(6, 3, padding="same", groups=2)
    mine = GroupedConv2D(6, 3, padding="same", groups=2)
    ref(x), mine(x)
    mine.set_weights(ref.get_weights())
    grads = []
    for layer in (ref, mine):
        with tf.GradientTape() as tape:
            out = layer(x)
            loss = tf.reduce_sum(tf.square(out) * tf.range(6, dtype=tf.float32))
        grads.append((out.numpy(), tape.gradient(loss, layer.kernel).numpy()))
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)


def test_a_cwcomp_block_steps_like_a_hand_written_step():
    """conv -> ReLU -> max pool -> BatchNorm (batch statistics), class goodness, cross-entropy,
    Adam: the layer's TRAIN_POS step against the same arithmetic written out."""
    x = tf.random.stateless_normal([8, 6, 6, 4], [0, 3])
    y = tf.constant([0, 1, 0, 1, 1, 0, 1, 1])
    keras.utils.set_random_seed(0)
    layer = FFConv2D(4, 3, name="c", groups=2, pool=2, batchnorm=True, loss="cwc", num_classes=2,
                     optimizer=keras.optimizers.Adam(1e-2))
    layer.set_task(Task.TRANSFORM)
    layer.transform(x, y)
    kernel, bias, gamma, beta = [tf.Variable(v) for v in layer.layer.get_weights()[:4]]
    opt = keras.optimizers.Adam(1e-2)
    for _ in range(3):
        layer.set_task(Task.TRAIN_POS)
        layer.ff_do_task(x, y)
        with tf.GradientTape() as tape:
            z = tf.concat([tf.nn.conv2d(xg, kg, 1, "SAME") for xg, kg in
                           zip(tf.split(x, 2, -1), tf.split(kernel, 2, -1))], -1) + bias
            h = tf.nn.max_pool2d(tf.nn.relu(z), 2, 2, "VALID")
            mean, var = tf.nn.moments(h, axes=[0, 1, 2])
            h = gamma * (h - mean) / tf.sqrt(var + 1e-4) + beta
            g = tf.stack([tf.reduce_mean(tf.square(h[..., :2]), [1, 2, 3]),
                          tf.reduce_mean(tf.square(h[..., 2:]), [1, 2, 3])], 1)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=g))
        variables = [kernel, bias, gamma, beta]
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    for mine, ref in zip(layer.layer.get_weights()[:4], variables):
        np.testing.assert_allclose(mine, ref.numpy(), rtol=1e-4, atol=1e-5)
    assert float(layer.metrics["loss"].result()) > 0


@pytest.mark.parametrize("overrides, message", [
    (["experiment=mlp_threshold", "model.loss=cwc"], "model.loss=cwc trains each class's group of units on the label"),
    (TINY_CWCOMP + ["model.layers.conv2.loss=threshold"],
     "model.layers.conv2.loss=threshold needs negatives, and protocol competitive makes none"),
    (TINY_CWCOMP + ["+model.layers.overlay={type: overlay, mode: channels, inputs: [input]}"],
     "model.layers.overlay: protocol competitive never shows the label in the input"),
    (TINY_CWCOMP + ["model.layers.conv3.filters=25"], "model.layers.conv3.filters=25 must be divisible by the 10 classes"),
    (TINY_CWCOMP + ["model.layers.classes.inputs=[input]"], "model.layers.classes.inputs: 'input' is not a layer with a class loss"),
    (TINY_CWCOMP + ["model.layers.conv2.groups=20"], "model.layers.conv2: The number of input channels must be evenly divisible"),
    (TINY_CWCOMP + ["model.layers.conv2.groups=3"], "model.layers.conv2.groups=3 must divide filters=20"),
    (TINY_CWCOMP + ["model.layers.conv2.groups=4"], "model.layers.conv2.groups=4 does not line up with the 10 class groups"),
    (["protocol=competitive", "mode=sup", "model.loss=cwc"], "protocol competitive never shows the label in the input: use mode=unsup"),
    (TINY_CWCOMP + ["pairing=same_step"], "protocol competitive has no negatives to pair"),
    (TINY_CWCOMP + ["data.augment.shift=-1"], "data.augment.shift must be >= 0"),
    (TINY_CWCOMP + ["data.augment.shift=9"], "data.augment: shift must be an integer in [0, 8) pixels, got 9"),
])
def test_a_bad_competitive_config_is_one_line_before_any_folder(overrides, message, tmp_path):
    from ffrun.app.overrides import override_problem
    from ffrun.errors import ConfigError
    problem = override_problem(overrides)
    if problem is None:   # a shape only the data knows (the image size): the build refuses it at the start
        from tests.conftest import compose_config
        with pytest.raises(ConfigError) as info:
            build_run(compose_config(overrides))
        problem = str(info.value)
    assert problem.startswith(message), problem
    assert "\n" not in problem


def test_the_competitive_plan_is_one_labelled_pass_per_split(cfg_factory):
    run = build_run(cfg_factory(TINY_CWCOMP))
    plan, net = run.plan, run.network
    assert [(e.task, e.layers) for e in plan.train] == [(Task.TRAIN_POS, None)]
    assert [e.task for e in plan.val] == [Task.EVAL] and [e.task for e in plan.test] == [Task.EVAL]
    pos = plan.train[0].resolve(1)
    assert np.array_equal(pos.y.numpy(), pos.y_ff.numpy())   # every image is a positive of its label
    assert net.roles.ff == ("conv1", "conv2", "conv3", "conv4") and net.roles.classes == ("classes",)
    assert net.roles.readouts == ("classes", "softmax")
    out = net.transform(pos.X[:3], pos.y[:3], pos.y_ff[:3])
    assert out["conv2"].shape == (3, 4, 4, 20) and out["conv4"].shape == (3, 2, 2, 40)
    assert out["classes"].shape == (3, 10)


def test_cwcomp_learns_digits_without_negatives(cfg_factory, tmp_path):
    """The groups learn to claim their class: in three epochs on 8x8 digits the class-goodness
    readout and the softmax on the last block gain 40 points over the untrained network."""
    cfg = cfg_factory(TINY_CWCOMP)
    untrained = build_run(cfg)
    from ffrun.core.trainer import TrainMgr
    mgr = TrainMgr(untrained.network, None, untrained.plan.train + untrained.plan.val, batch_size=64)
    mgr.build()
    before = mgr.evaluate(untrained.plan.val)
    (tmp_path / "run").mkdir()
    results = loop.train(cfg, tmp_path / "run", outputs.make_console())
    assert results["status"] == "completed"
    rows = outputs.read_metrics(tmp_path / "run" / "metrics.csv")
    assert rows[-1]["conv4/loss"] < rows[0]["conv4/loss"]
    for readout in ("classes/acc", "softmax/acc"):
        assert results["readouts"][readout]["best"] > before[readout] + 0.4, (readout, before, results["readouts"])


def test_tensorboard_histograms_of_conv_maps_are_sampled_and_goodness_is_per_image(cfg_factory, tmp_path, monkeypatch):
    """A histogram of every activation of a conv map once took a run's memory from 2 to 10 GB."""
    from ffrun.run import callbacks
    seen = {}
    monkeypatch.setattr(callbacks.tf.summary, "histogram", lambda name, data, **kw: seen.__setitem__(name, data.shape))
    monkeypatch.setattr(callbacks.TensorBoard, "MAX_VALUES", 1000)
    run = build_run(cfg_factory(TINY_CWCOMP))
    data = run.plan.train[0].resolve(1)
    board = callbacks.TensorBoard(tmp_path / "tb", run.network, lambda epoch: data, 1)
    board.histograms(data, 1, n=64)
    # conv2's map of 64 images is 64 x 4 x 4 x 20 = 20,480 values: sampled down to at most 1000
    assert 500 < seen["conv2/activations"][0] <= 1000
    assert seen["conv1/activations"][0] <= 1000
    assert seen["conv2/goodness"] == (64,)        # one goodness per image, not per position
