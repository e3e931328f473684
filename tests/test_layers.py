"""Layer semantics: pre-norm, overlay and its duplicated order, goodness argmax, local training."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ffrun.core.layers import FFDense, FFGoodness, FFOverlay, FFPreNorm, FFSoftmax, Task


def test_prenorm_l2_and_rms():
    x = tf.constant([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(FFPreNorm("l2").ff_do_task(x, None), [[0.6, 0.8], [0.0, 0.0]], atol=1e-6)
    rms = float(np.sqrt((9 + 16) / 2))
    np.testing.assert_allclose(FFPreNorm("rms").ff_do_task(x, None)[0], [3 / rms, 4 / rms], atol=1e-6)
    with pytest.raises(ValueError):
        FFPreNorm("bogus")


def test_overlay_add_is_plus_one_at_pixel_y():
    x = tf.zeros([2, 6])
    out = FFOverlay(3, mode="add").ff_do_task(x + 0.5, tf.constant([2, 0]))
    np.testing.assert_allclose(out, [[0.5, 0.5, 1.5, 0.5, 0.5, 0.5], [1.5, 0.5, 0.5, 0.5, 0.5, 0.5]])


def test_overlay_replace_and_neutral_label():
    x = tf.fill([2, 5], 0.7)
    out = FFOverlay(3, mode="replace").ff_do_task(x, tf.constant([1, -1]))
    np.testing.assert_allclose(out[0], [0, 1, 0, 0.7, 0.7], atol=1e-6)
    np.testing.assert_allclose(out[1], [1 / 3, 1 / 3, 1 / 3, 0.7, 0.7], atol=1e-6)


def test_eval_duped_is_sample_major():
    ov = FFOverlay(3, mode="replace")
    ov.set_task(Task.EVAL_ALL_LABELS)
    x = tf.constant([[0, 0, 0, 10.0], [0, 0, 0, 20.0]])
    out = ov.ff_do_task(x, tf.constant([0, 0])).numpy()
    assert out.shape == (6, 4)
    # rows i*C .. i*C+C-1 are sample i with labels 0..C-1
    np.testing.assert_allclose(out[:, 3], [10, 10, 10, 20, 20, 20])
    np.testing.assert_allclose(out[:, :3], np.tile(np.eye(3), (2, 1)))


def test_goodness_readout_predicts_label_with_largest_goodness():
    gd = FFGoodness(3)
    gd.set_task(Task.EVAL_ALL_LABELS)
    # sample 0: goodness per label 1, 9, 4 -> label 1; sample 1: 16, 0, 1 -> label 0
    x = tf.constant([[1.0], [3.0], [2.0], [4.0], [0.0], [1.0]])
    gd.ff_do_task(x, tf.constant([1, 2]))
    assert gd.metric_results()["acc"] == pytest.approx(0.5)
    np.testing.assert_array_equal(gd.predict_all_labels(x), [1, 0])


def _dense(units=8, **kw):
    layer = FFDense(units, 0.5, 0.5, keras.optimizers.SGD(0.1), name=f"d{units}", **kw)
    layer.ff_do_task(tf.zeros([1, 4]), tf.constant([0]))
    layer.build_optimizer()
    return layer


def test_train_pos_raises_and_train_neg_lowers_goodness():
    keras.utils.set_random_seed(0)
    x = tf.random.uniform([16, 4])
    y = tf.zeros([16], tf.int32)
    for task, sign in ((Task.TRAIN_POS, 1), (Task.TRAIN_NEG, -1)):
        layer = _dense()
        g0 = float(tf.reduce_mean(tf.reduce_sum(tf.square(layer.transform(x, y)), -1)))
        layer.set_task(task)
        for _ in range(5):
            layer.ff_do_task(x, y)
        g1 = float(tf.reduce_mean(tf.reduce_sum(tf.square(layer.transform(x, y)), -1)))
        assert sign * (g1 - g0) > 0, (task, g0, g1)
        key = "loss_pos" if task == Task.TRAIN_POS else "loss_neg"
        assert key in layer.metric_results()


def test_training_a_layer_never_touches_the_layer_before_it():
    keras.utils.set_random_seed(0)
    first, second = _dense(4), FFDense(3, 0.5, 0.5, keras.optimizers.SGD(0.1), name="second")
    x = tf.random.uniform([8, 4])
    y = tf.zeros([8], tf.int32)
    second.ff_do_task(first.transform(x, y), y)
    second.build_optimizer()
    before = [w.numpy().copy() for w in first.layer.weights]
    second_before = [w.numpy().copy() for w in second.layer.weights]
    first.set_task(Task.TRANSFORM)
    second.set_task(Task.TRAIN_POS)
    second.ff_do_task(first.ff_do_task(x, y), y)
    for b, w in zip(before, first.layer.weights):
        np.testing.assert_array_equal(b, w.numpy())
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(second_before, second.layer.weights))


def _identity_layer(routing, neg_routing):
    """A 4-unit routed FFDense whose output is its input (identity kernel, zero bias)."""
    layer = FFDense(4, 0, 0, keras.optimizers.SGD(0.0), name="routed", routing=routing, neg_routing=neg_routing)
    layer.transform(tf.zeros([1, 4]), None)
    layer.layer.kernel.assign(np.eye(4, dtype=np.float32))
    return layer


def test_routing_masks_goodness_and_complement_for_negatives():
    """The goodness a routed layer reports: a positive of class 0 scores units 0-1 (1 + 4), a
    negative of class 0 the complement, units 2-3 (9 + 16)."""
    routing = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], np.float32)
    layer = _identity_layer(routing, "complement")
    h = tf.constant([[1.0, 2.0, 3.0, 4.0]])
    y = tf.constant([0])
    for positive in (True, False):
        layer.set_task(Task.EVAL, positive=positive)
        np.testing.assert_allclose(layer.ff_do_task(h, y), h)
    assert layer.metric_results()["goodness_pos"] == pytest.approx(1 + 4)
    assert layer.metric_results()["goodness_neg"] == pytest.approx(9 + 16)
    # neg_routing="same": negatives are scored on their label's own units, like positives
    same = _identity_layer(routing, "same")
    same.set_task(Task.EVAL, positive=False)
    same.ff_do_task(h, tf.constant([1]))
    assert same.metric_results()["goodness_neg"] == pytest.approx(9 + 16)
    same.ff_do_task(h, y)
    assert same.metric_results()["goodness_neg"] == pytest.approx(((9 + 16) + (1 + 4)) / 2)


def test_train_pair_updates_both_losses():
    layer = _dense()
    layer.set_task(Task.TRAIN_PAIR)
    layer.ff_do_task(tf.random.uniform([8, 4]), tf.zeros([8], tf.int32))
    assert {"loss_pos", "loss_neg"} <= set(layer.metric_results())


def test_softmax_learns_and_only_counts_positive_eval_data():
    keras.utils.set_random_seed(0)
    x = tf.constant(np.repeat(np.eye(3, dtype=np.float32), 10, axis=0))
    y = tf.constant(np.repeat(np.arange(3), 10).astype(np.int32))
    sm = FFSoftmax(3, keras.optimizers.Adam(0.1))
    sm.ff_do_task(x[:1], y[:1])
    sm.build_optimizer()
    sm.set_task(Task.TRAIN_POS)
    for _ in range(30):
        sm.ff_do_task(x, y)
    sm.set_task(Task.EVAL, positive=False)
    sm.ff_do_task(x, y)
    assert "acc" not in sm.metric_results()
    sm.set_task(Task.EVAL, positive=True)
    sm.ff_do_task(x, y)
    assert sm.metric_results()["acc"] == pytest.approx(1.0)


def test_relu_full_grad_passes_the_gradient_of_off_units():
    from ffrun.core.layers import relu_full_grad
    x = tf.constant([-2.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = relu_full_grad(x)
        total = tf.reduce_sum(3.0 * y)
    np.testing.assert_allclose(y, [0.0, 3.0])
    np.testing.assert_allclose(tape.gradient(total, x), [3.0, 3.0])


@pytest.mark.parametrize("activation, kernel_grad", [
    # dL/dz is 1 for both units with the full gradient, so dL/dW = x^T [1, 1]
    ("relu_full_grad", [[1.0, 1.0], [2.0, 2.0]]),
    # plain ReLU: the unit that is off (z = -3) gets no gradient
    ("relu", [[1.0, 0.0], [2.0, 0.0]]),
])
def test_dense_activation_forward_is_relu_and_full_grad_reaches_off_units(activation, kernel_grad):
    """x = [1, 2], W = [[1, -1], [1, -1]], b = 0: z = [3, -3], h = relu(z) = [3, 0]; L = sum(h)."""
    layer = FFDense(2, name=f"act_{activation}", activation=activation)
    x = tf.constant([[1.0, 2.0]])
    layer.transform(x, None)
    layer.layer.kernel.assign([[1.0, -1.0], [1.0, -1.0]])
    with tf.GradientTape() as tape:
        h = layer.transform(x, None)
        loss = tf.reduce_sum(h)
    grad_kernel, grad_bias = tape.gradient(loss, [layer.layer.kernel, layer.layer.bias])
    np.testing.assert_allclose(h, [[3.0, 0.0]])
    np.testing.assert_allclose(grad_kernel, kernel_grad)
    np.testing.assert_allclose(grad_bias, kernel_grad[0])      # dL/db = dL/dz


@pytest.mark.parametrize("neg_routing", ["same", "complement"])
@pytest.mark.parametrize("task", [Task.TRAIN_POS, Task.TRAIN_NEG])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_half_split_gradient_matches_the_full_tape_step(task, neg_routing, reduction):
    # A/B routing: classes 0, 2 own the first half of the units, 1, 3 the second.
    routing = np.zeros((4, 6), np.float32)
    routing[[0, 2], :3] = 1.0
    routing[[1, 3], 3:] = 1.0
    x = tf.random.stateless_normal([32, 5], seed=[1, 2])
    y = tf.constant(np.arange(32) % 4, tf.int32)
    after = []
    for split in (True, False):
        keras.utils.set_random_seed(0)
        layer = FFDense(6, 1.0, 1.0, keras.optimizers.Adam(0.05), name="routed", routing=routing,
                        neg_routing=neg_routing, goodness=reduction, l2=0.01, split_gradient=split)
        assert (layer.owns_first_half is not None) == split
        before = layer.transform(x, y).numpy()
        layer.build_optimizer()
        initial = layer.layer.kernel.numpy().copy()
        layer.set_task(task)
        out = layer.ff_do_task(x, y)
        np.testing.assert_allclose(out.numpy(), before, rtol=1e-6)   # passes on the unmasked output
        for _ in range(2):
            layer.ff_do_task(x, y)
        assert not np.allclose(layer.layer.kernel.numpy(), initial)
        after.append([w.numpy() for w in layer.layer.weights])
    for fast, full in zip(*after):
        np.testing.assert_allclose(fast, full, rtol=1e-5, atol=1e-6)


def test_half_split_is_only_used_for_exact_half_routing():
    keras.utils.set_random_seed(0)
    uneven = np.array([[1, 1, 1, 0], [0, 0, 0, 1]], np.float32)
    assert FFDense(4, name="a", routing=uneven).owns_first_half is None
    assert FFDense(4, name="b", routing=np.ones((2, 4), np.float32)).owns_first_half is None
    halves = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]], np.float32)
    np.testing.assert_array_equal(FFDense(4, name="c", routing=halves).owns_first_half.numpy(),
                                  [True, False, True])


def test_peer_running_mean_starts_at_peer_init():
    layer = FFDense(5, name="peer", peer_norm=0.03, peer_init=0.5)
    np.testing.assert_array_equal(layer.running_mean.numpy(), np.full(5, 0.5, np.float32))


def _reference_pair_step(kernel, bias, x, y, *, th, routing, peer, running, l2, lr, true_relu):
    """Hinton's paired step written out by hand: BCE on pos and neg goodness, peer normalization
    on the positives' mean activity, coupled weight decay, one plain SGD step."""
    n = x.shape[0] // 2
    w, b = tf.Variable(kernel), tf.Variable(bias)
    with tf.GradientTape() as tape:
        z = x @ w + b
        h = tf.nn.relu(z) if true_relu else tf.stop_gradient(tf.nn.relu(z) - z) + z
        sq = tf.square(h)
        if routing is not None:
            mask = tf.gather(routing, y)
            sq = sq * tf.concat([mask[:n], 1.0 - mask[n:]], 0)
        g = tf.reduce_sum(sq, 1)
        loss = 0.5 * (tf.reduce_mean(tf.nn.softplus(th - g[:n])) + tf.reduce_mean(tf.nn.softplus(g[n:] - th)))
        new_running = 0.9 * running + 0.1 * tf.reduce_mean(h[:n], 0)
        loss += peer * tf.reduce_mean(tf.square(tf.reduce_mean(new_running) - new_running))
    gw, gb = tape.gradient(loss, [w, b])
    return (w - lr * (gw + l2 * w)).numpy(), (b - lr * (gb + l2 * b)).numpy(), new_running.numpy()


@pytest.mark.parametrize("routed", [False, True])
@pytest.mark.parametrize("activation", ["relu", "relu_full_grad"])
def test_pair_step_matches_the_loss_written_out_by_hand(routed, activation):
    routing = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]], np.float32) if routed else None
    x = tf.random.stateless_normal([16, 5], seed=[3, 4])
    y = tf.constant(np.arange(16) % 2, tf.int32)
    keras.utils.set_random_seed(0)
    layer = FFDense(6, 2.0, 2.0, keras.optimizers.SGD(0.1), name="pair", routing=routing,
                    neg_routing="complement", activation=activation, peer_norm=0.5, peer_init=0.5, l2=0.01)
    layer.transform(x, y)
    layer.build_optimizer()
    kernel, bias = layer.layer.kernel.numpy(), layer.layer.bias.numpy() + 0.1
    layer.layer.bias.assign(bias)   # non-zero, so the bias gradient and decay are checked too
    want = _reference_pair_step(kernel, bias, x, y, th=2.0, routing=routing, peer=0.5,
                                running=np.full(6, 0.5, np.float32), l2=0.01, lr=0.1,
                                true_relu=activation == "relu")
    layer.set_task(Task.TRAIN_PAIR)
    layer.ff_do_task(x, y)
    got = (layer.layer.kernel.numpy(), layer.layer.bias.numpy(), layer.running_mean.numpy())
    assert not np.allclose(got[0], kernel)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_peer_norm_of_five_units_lambda_is_the_step_of_hintons_released_code():
    """Hinton's Matlab code (ffcode, `lambdamean`) adds lambda * (mean_k mu_k - mu_j) to each
    positive row's gradient on unit j's input, ungated by the ReLU. ffrun's term (the loeweX port's)
    is peer_norm * mean_j (mean_k mu_k - mu_j)^2 with mu = 0.9 mu_old + 0.1 * batch mean, whose
    gradient per row is peer_norm * 0.2 / (units * N) * (mu_j - mean mu): so the port's 0.03 is
    5 * units times weaker than Hinton's 0.03, and peer_norm = 5 * units * lambda is Hinton's.
    The reference below is Hinton's update written out in numpy (delay 0, no weight cost)."""
    units, n, lam, lr = 8, 16, 0.03, 0.05
    x = 2.0 * tf.random.stateless_normal([2 * n, 5], seed=[9, 1]).numpy()
    keras.utils.set_random_seed(0)
    layer = FFDense(units, float(units), float(units), keras.optimizers.SGD(lr), name="hinton",
                    activation="relu_full_grad", peer_norm=5 * units * lam, peer_init=0.5)
    y = tf.zeros([2 * n], tf.int32)
    layer.transform(tf.constant(x), y)
    layer.build_optimizer()
    w, b = layer.layer.kernel.numpy().astype(np.float64), np.full(units, 0.1)
    layer.layer.bias.assign(b)
    running = np.linspace(0.0, 1.5, units)         # units far from their layer's mean activity
    layer.running_mean.assign(running)

    def logistic(v):
        return 1.0 / (1.0 + np.exp(-v))

    def hinton_step(lambdamean):
        xp, xn = x[:n].astype(np.float64), x[n:].astype(np.float64)
        states = np.maximum(0.0, xp @ w + b)
        posprobs = logistic((states ** 2).sum(1) - units)
        meanstates = 0.9 * running + 0.1 * states.mean(0)
        d_pos = (1 - posprobs)[:, None] * states + lambdamean * (meanstates.mean() - meanstates)
        neg_states = np.maximum(0.0, xn @ w + b)
        d_neg = -logistic((neg_states ** 2).sum(1) - units)[:, None] * neg_states
        return (w + lr * (xp.T @ d_pos + xn.T @ d_neg) / n, b + lr * (d_pos.sum(0) + d_neg.sum(0)) / n,
                meanstates, posprobs)

    want_w, want_b, want_running, posprobs = hinton_step(lam)
    assert 0.05 < posprobs.mean() < 0.95           # the goodness term is not saturated: both terms count

    layer.set_task(Task.TRAIN_PAIR)
    layer.ff_do_task(tf.constant(x), y)
    np.testing.assert_allclose(layer.layer.kernel.numpy(), want_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.layer.bias.numpy(), want_b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.running_mean.numpy(), want_running, rtol=1e-5)
    # the port's strength (lambda / (5 units)) is a different step: the peer term is what is pinned
    _, port_b, _, _ = hinton_step(lam / (5 * units))
    assert np.abs(port_b - want_b).max() > 10 * (1e-6 + 1e-4 * np.abs(want_b).max())


def test_pair_readout_step_trains_ff_on_pos_neg_and_the_readout_on_the_last_third():
    x = tf.random.stateless_normal([24, 5], seed=[5, 6])
    y = tf.constant(np.arange(24) % 3, tf.int32)
    neutral = tf.random.stateless_normal([12, 5], seed=[7, 8]) * 100.0   # must not reach the FF step
    weights, outputs = [], []
    for task, batch, labels in ((Task.TRAIN_PAIR, x, y),
                                (Task.TRAIN_PAIR_READOUT, tf.concat([x, neutral], 0), tf.concat([y, y[:12]], 0))):
        keras.utils.set_random_seed(0)
        layer = FFDense(4, 1.0, 1.0, keras.optimizers.SGD(0.05), name="ff", peer_norm=0.03)
        layer.transform(x, y)
        layer.build_optimizer()
        layer.set_task(task)
        out = layer.ff_do_task(batch, labels)
        assert out.shape[0] == batch.shape[0]            # every row passes on to the next layer
        weights.append([w.numpy() for w in layer.layer.weights] + [layer.running_mean.numpy()])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # the softmax readout steps on the neutral third only: as TRAIN_POS on those rows
    for task, batch in ((Task.TRAIN_POS, neutral), (Task.TRAIN_PAIR_READOUT, tf.concat([x, neutral], 0))):
        keras.utils.set_random_seed(0)
        sm = FFSoftmax(3, keras.optimizers.SGD(0.1), name="sm")
        sm.ff_do_task(neutral[:1], y[:1])
        sm.build_optimizer()
        sm.set_task(task)
        sm.ff_do_task(batch, y[:12] if task == Task.TRAIN_POS else tf.concat([y, y[:12]], 0))
        outputs.append(sm.layer.kernel.numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6)


def _xla_pair_case(xla, *, parts, routed, dtype=None):
    """A paper-like FFDense (peer norm, weight decay, full-gradient ReLU, fused SGD momentum) after
    three pair steps; returns its weights and running mean."""
    from ffrun.core.optimizers import FusedSGD
    routing = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], np.float32) if routed else None
    x = tf.random.stateless_normal([12 * parts, 5], seed=[9, 10])
    y = tf.constant(np.arange(12 * parts) % 2, tf.int32)
    keras.utils.set_random_seed(0)
    layer = FFDense(6, 2.0, 2.0, FusedSGD(0.05, momentum=0.9), name="pair", routing=routing, neg_routing="complement",
                    activation="relu_full_grad", peer_norm=0.03, peer_init=0.5, l2=3e-3, dtype=dtype, xla=xla)
    layer.transform(x, y)
    layer.build_optimizer()
    layer.set_task(Task.TRAIN_PAIR if parts == 2 else Task.TRAIN_PAIR_READOUT)
    for _ in range(3):
        layer.ff_do_task(x, y)
    return [w.numpy() for w in layer.layer.weights] + [layer.running_mean.numpy()], layer.metric_results()


@pytest.mark.parametrize("parts,routed,dtype", [(2, False, None), (2, True, None), (3, False, None),
                                                (2, False, "mixed_bfloat16")])
def test_xla_pair_step_matches_the_tensorflow_step(parts, routed, dtype):
    """model.xla compiles the element-wise part and the update of a step with XLA: same weights."""
    (plain, plain_metrics), (fast, fast_metrics) = (_xla_pair_case(xla, parts=parts, routed=routed, dtype=dtype)
                                                    for xla in (False, True))
    tol = 1e-6 if dtype is None else 1e-4
    for a, b in zip(plain, fast):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=tol)
    assert plain_metrics.keys() == fast_metrics.keys()
    for key in plain_metrics:
        assert fast_metrics[key] == pytest.approx(plain_metrics[key], rel=1e-5 if dtype is None else 1e-3)


@pytest.mark.parametrize("task", [Task.TRAIN_POS, Task.TRAIN_NEG])
def test_xla_half_split_step_matches_the_tensorflow_step(task):
    routing = np.zeros((4, 6), np.float32)
    routing[[0, 2], :3] = 1.0
    routing[[1, 3], 3:] = 1.0
    x = tf.random.stateless_normal([32, 5], seed=[1, 2])
    y = tf.constant(np.arange(32) % 4, tf.int32)
    after = []
    for xla in (False, True):
        keras.utils.set_random_seed(0)
        layer = FFDense(6, 1.0, 1.0, keras.optimizers.Adam(0.05), name="routed", routing=routing,
                        neg_routing="complement", l2=0.01, xla=xla)
        layer.transform(x, y)
        layer.build_optimizer()
        layer.set_task(task)
        for _ in range(3):
            layer.ff_do_task(x, y)
        after.append([w.numpy() for w in layer.layer.weights])
    for plain, fast in zip(*after):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
