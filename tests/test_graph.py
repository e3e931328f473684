"""Networks declared node by node (model.layers): wiring, errors, the conv layer types, and the
generated MLP as the same kind of node list (it trains exactly as before)."""
import copy

import keras
import numpy as np
import pytest
import tensorflow as tf

from ffrun.core.layers import FFConv2D, FFFlatten, FFOverlay, FFPool, FFPreNorm, Task
from ffrun.core.losses import goodness
from ffrun.core.trainer import TrainMgr
from ffrun.experiment.build import build_run, per_layer
from ffrun.experiment.graph import generate_mlp
from ffrun.experiment.schema import typed


def test_the_generated_mlp_declared_by_hand_trains_identically(cfg_factory):
    """The default MLP is a generator of nodes: declaring the same nodes gives the same weights."""
    spec = typed(cfg_factory(["debug=tiny", "mode=sup", "protocol=wrong_label", "pairing=same_step",
                              "readout_step=same_step", "+model.readouts.softmax={type: softmax, inputs: [norm2..], "
                              "optimizer: {class_name: Adam, learning_rate: 1e-3}}"]))
    declared = copy.deepcopy(spec)
    m = spec.model
    n = m.num_layers
    declared.model.layers = generate_mlp(m, True, per_layer(m.units, n, "units"), per_layer(m.th_pos, n, "th"),
                                         per_layer(m.th_pos, n, "th"), per_layer(m.loss, n, "loss"))
    assert list(declared.model.layers)[:3] == ["overlay", "dense1", "norm1"]
    weights = []
    for s in (spec, declared):
        keras.utils.set_random_seed(0)
        run = build_run(s)
        TrainMgr(run.network, None, run.plan.train, batch_size=32, seed=0).fit([("all", 2)])
        weights.append([v.numpy() for l in run.network.layers.values() for v in l.trainable_variables])
    assert len(weights[0]) == len(weights[1]) > 0
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("override, message", [
    ("model.layers.conv1.type=conv3d", "model.layers.conv1.type: unknown layer type 'conv3d'"),
    ("model.layers.flat.inputs=[pool9]", "model.layers.flat.inputs: 'pool9' is not a node"),
    ("model.layers.conv1.inputs=[conv2]", "model.layers.conv1.inputs: 'conv2' comes later"),
    ("+model.layers.dense9={type: dense, units: 10, inputs: [pool2]}",
     "model.layers.dense9: a dense layer is fed an image (pool2); put a flatten node before it"),
    ("+model.layers.conv9={type: conv2d, filters: 4, inputs: [flat]}",
     "model.layers.conv9: a conv2d layer is fed a flat vector (flat)"),
    ("+model.layers.d={type: dense, inputs: [flat]}", "model.layers.d.units is required for type dense"),
    ("+model.layers.d={type: dense, units: 3, size: 2, inputs: [flat]}", "model.layers.d: unknown key(s) ['size']"),
    ("+model.layers.conv2.loss=symba", "conv2: model.loss=symba compares each positive with its aligned negative"),
])
def test_a_bad_graph_is_one_line_naming_the_node_before_any_folder(override, message):
    from ffrun.app.overrides import override_problem
    overrides = ["experiment=conv_mnist", "data=digits", override]
    if "symba" in override:
        overrides.append("pairing=separate")
    problem = override_problem(overrides)
    assert problem is not None and problem.startswith(message), problem
    assert "\n" not in problem


def test_a_conv_layer_raises_goodness_on_positives_and_lowers_it_on_negatives():
    keras.utils.set_random_seed(0)
    layer = FFConv2D(8, 3, th_pos=1.0, optimizer=keras.optimizers.Adam(1e-2), name="c")
    x = tf.random.stateless_uniform([16, 6, 6, 2], [0, 1])
    y = tf.zeros([16], tf.int32)
    layer.set_task(Task.TRANSFORM)
    g0 = float(tf.reduce_mean(goodness(tf.reshape(layer.transform(x, y), [16, -1]), "mean")))
    for task, sign in ((Task.TRAIN_POS, 1), (Task.TRAIN_NEG, -1)):
        keras.utils.set_random_seed(0)
        trained = FFConv2D(8, 3, th_pos=1.0, optimizer=keras.optimizers.Adam(1e-2), name=f"c{sign}")
        trained.set_task(task)
        for _ in range(10):
            out = trained.ff_do_task(x, y)
        assert out.shape == (16, 6, 6, 8)
        trained.set_task(Task.TRANSFORM)
        g = float(tf.reduce_mean(goodness(tf.reshape(trained.transform(x, y), [16, -1]), "mean")))
        assert sign * (g - g0) > 0, (task, g0, g)


def test_image_layers_by_hand():
    x = tf.reshape(tf.range(2 * 4 * 4 * 1, dtype=tf.float32), [2, 4, 4, 1])
    y = tf.constant([1, -1])
    pooled = FFPool("max", 2, name="p").transform(x, y)
    assert pooled.numpy()[0, :, :, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    assert FFPool("avg", 2, name="a").transform(x, y).numpy()[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert FFFlatten(name="f").transform(x, y).shape == (2, 16)
    planes = FFOverlay(3, mode="channels", value=2.0, name="o").transform(x, y).numpy()
    assert planes.shape == (2, 4, 4, 4)
    assert planes[0, 3, 2, 1:].tolist() == [0.0, 2.0, 0.0]                   # label 1 everywhere
    assert planes[1, 0, 0, 1:] == pytest.approx([1 / 3] * 3)                  # the neutral label
    # prenorm over each position's channels, or over the whole map
    img = tf.constant([[[[3.0, 4.0]], [[0.0, 1.0]]]])                          # (1, 2, 1, 2)
    per_position = FFPreNorm("l2", scope="channels", eps=0.0, name="n").transform(img, y).numpy()
    assert per_position[0, 0, 0].tolist() == pytest.approx([0.6, 0.8]) and per_position[0, 1, 0].tolist() == [0.0, 1.0]
    whole = FFPreNorm("l2", scope="map", eps=0.0, name="m").transform(img, y).numpy()
    assert np.sum(whole ** 2) == pytest.approx(1.0) and whole[0, 0, 0, 1] == pytest.approx(4 / np.sqrt(26))


def test_the_conv_preset_keeps_the_image_shape_and_wires_its_readouts(cfg_factory):
    run = build_run(cfg_factory(["experiment=conv_mnist", "data=digits", "data.val_size=300"]))
    net = run.network
    out = net.transform(run.plan.train[0].resolve(1)[0].X[:4], tf.zeros([4], tf.int32), tf.zeros([4], tf.int32))
    assert out["input"].shape == (4, 8, 8, 1) and out["overlay"].shape == (4, 8, 8, 11)
    assert out["conv2"].shape == (4, 4, 4, 64) and out["flat"].shape == (4, 2 * 2 * 64)
    assert net.roles.ff == ("conv1", "conv2") and net.roles.goodness == ("goodness",)
    assert net.roles.softmax == ("softmax",)


def test_the_cifar10_conv_preset_trains_a_few_steps_on_fabricated_batches(cfg_factory, tmp_path, monkeypatch):
    """CIFAR-10 is not on these machines: Keras' python batches are fabricated (random 32x32x3
    images) and the preset runs an epoch on them."""
    import pickle
    from ffrun.run import loop, outputs
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{b}", 30) for b in range(1, 6)] + [("test_batch", 20)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": rng.integers(0, 10, n).tolist(),
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, f)
    monkeypatch.setenv("FFRUN_DATA_DIR", str(tmp_path / "data"))
    cfg = cfg_factory(["experiment=conv_cifar10", "data.val_size=50", "epochs=1", "batch_size=25",
                       "model.layers.conv1.filters=8", "model.layers.conv2.filters=8",
                       "checkpoint.every=0", "tensorboard.enabled=false"])
    (tmp_path / "run").mkdir()
    results = loop.train(cfg, tmp_path / "run", outputs.make_console())
    assert results["status"] == "completed" and results["data"]["train_pos"] == 100
    run = build_run(cfg)
    x = run.plan.train[0].resolve(1)[0].X[:2]
    assert run.network.transform(x, tf.zeros([2], tf.int32), tf.zeros([2], tf.int32))["overlay"].shape == (2, 32, 32, 13)


def test_torch_default_init_draws_pytorchs_range_per_group():
    """PyTorch's default conv/linear init is U(+-1/sqrt(fan_in)), fan_in = k*k*(in channels per group)."""
    from ffrun.experiment.build import make_initializer
    layer = FFConv2D(80, 3, groups=10, kernel_initializer=make_initializer("torch_default"))
    layer.transform(tf.zeros([1, 8, 8, 20]), tf.zeros([1], tf.int32))
    kernel = layer.layer.kernel.numpy()
    assert kernel.shape == (3, 3, 2, 80)
    bound = 1 / np.sqrt(3 * 3 * 2)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert abs(kernel.std() - bound / np.sqrt(3)) < 0.1 * bound   # a uniform draw, not a normal one


def test_an_unknown_initializer_is_one_line_naming_the_node(cfg_factory):
    """Initializer names are Keras' (open-ended), so the build checks them, before any training."""
    from ffrun.errors import ConfigError
    spec = typed(cfg_factory(["experiment=conv_mnist", "data=digits", "data.val_size=300",
                              "+model.layers.conv1.init=bogus"]))
    with pytest.raises(ConfigError) as info:
        build_run(spec)
    assert str(info.value).startswith("model.layers.conv1: ") and "bogus" in str(info.value)
    assert "\n" not in str(info.value)
