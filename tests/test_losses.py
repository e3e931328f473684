"""The FF objective against hand-computed values."""
import math

import numpy as np
import pytest
import tensorflow as tf

from ffrun.core import losses


def test_goodness_sum_and_mean():
    h = tf.constant([[1.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
    np.testing.assert_allclose(losses.goodness(h, "sum"), [5.0, 25.0])
    np.testing.assert_allclose(losses.goodness(h, "mean"), [5.0 / 3, 25.0 / 3])


def test_goodness_with_mask_counts_selected_units_only():
    h = tf.constant([[1.0, 2.0, 3.0, 4.0]])
    mask = tf.constant([[1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(losses.goodness(h, "sum", mask), [5.0])
    np.testing.assert_allclose(losses.goodness(h, "mean", mask), [2.5])


def test_positive_and_negative_losses_are_bce_on_g_minus_theta():
    g = tf.constant([0.1, 2.1])
    th = 0.1
    sp = lambda z: math.log1p(math.exp(z))
    # positive: -log sigmoid(G - th) = softplus(-(G - th))
    assert float(losses.positive_loss(g, th)) == pytest.approx((sp(0.0) + sp(-2.0)) / 2, rel=1e-6)
    # negative: -log(1 - sigmoid(G - th)) = softplus(G - th)
    assert float(losses.negative_loss(g, th)) == pytest.approx((sp(0.0) + sp(2.0)) / 2, rel=1e-6)
    assert float(losses.positive_loss(tf.constant([0.1]), th)) == pytest.approx(math.log(2), rel=1e-6)


def test_peer_normalization_loss():
    running = tf.constant([1.0, 3.0])   # mean 2: squared deviations 1 and 1
    assert float(losses.peer_normalization_loss(running)) == pytest.approx(1.0)


def test_separation_matches_pairwise_count():
    rng = np.random.default_rng(0)
    pos = rng.lognormal(1.0, 1.0, 400).astype(np.float32)
    neg = rng.lognormal(0.0, 1.0, 300).astype(np.float32)
    exact = (pos[:, None] > neg[None, :]).mean()
    m = losses.GoodnessSeparation()
    m.update_state(tf.constant(pos[:250]), positive=True)
    m.update_state(tf.constant(neg), positive=False)
    m.update_state(tf.constant(pos[250:]), positive=True)
    assert float(m.result()) == pytest.approx(exact, abs=2e-3)
    assert m.has_data()
    m.reset_state()
    assert not m.has_data()


def test_separation_extremes():
    m = losses.GoodnessSeparation()
    m.update_state(tf.constant([10.0, 20.0]), positive=True)
    m.update_state(tf.constant([0.1, 1.0]), positive=False)
    assert float(m.result()) == pytest.approx(1.0)
    m.reset_state()
    m.update_state(tf.constant([0.1]), positive=True)
    m.update_state(tf.constant([10.0]), positive=False)
    assert float(m.result()) == pytest.approx(0.0)


# --- the loss registry (model.loss): each value and gradient against a hand computation ---------
def _sp(x):
    return np.log1p(np.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _value_and_grads(loss_fn, *gs):
    gs = [tf.Variable(g, dtype=tf.float32) for g in gs]
    with tf.GradientTape() as tape:
        value = loss_fn(*gs)
    return float(value), [g.numpy() for g in tape.gradient(value, gs)]


G_POS = np.array([0.5, 2.0, 3.5], np.float32)
G_NEG = np.array([1.0, 0.2, 4.0], np.float32)


def test_threshold_loss_by_hand():
    loss, th = losses.make_loss("threshold"), 2.0
    v, (d,) = _value_and_grads(lambda g: loss.positive(g, th), G_POS)
    assert v == pytest.approx(_sp(th - G_POS).mean(), rel=1e-6)
    assert d == pytest.approx(-_sigmoid(th - G_POS) / 3, rel=1e-5)       # pushes positives up
    v, (d,) = _value_and_grads(lambda g: loss.negative(g, th), G_NEG)
    assert v == pytest.approx(_sp(G_NEG - th).mean(), rel=1e-6)
    assert d == pytest.approx(_sigmoid(G_NEG - th) / 3, rel=1e-5)        # pushes negatives down
    v, (dp, dn) = _value_and_grads(lambda p, n: loss.pair(p, n, th, th)[0], G_POS, G_NEG)
    assert v == pytest.approx(0.5 * (_sp(th - G_POS).mean() + _sp(G_NEG - th).mean()), rel=1e-6)
    assert dp == pytest.approx(-0.5 * _sigmoid(th - G_POS) / 3, rel=1e-5)
    assert set(loss.pair(tf.constant(G_POS), tf.constant(G_NEG), th, th)[1]) == {"loss_pos", "loss_neg"}


def test_flipped_loss_by_hand_points_the_other_way():
    loss, th = losses.make_loss("flipped"), 2.0
    v, (d,) = _value_and_grads(lambda g: loss.positive(g, th), G_POS)
    assert v == pytest.approx(_sp(G_POS - th).mean(), rel=1e-6)
    assert np.all(d > 0) and d == pytest.approx(_sigmoid(G_POS - th) / 3, rel=1e-5)   # positives pushed DOWN
    v, (d,) = _value_and_grads(lambda g: loss.negative(g, th), G_NEG)
    assert v == pytest.approx(_sp(th - G_NEG).mean(), rel=1e-6)
    assert np.all(d < 0)
    assert not loss.positive_high


@pytest.mark.parametrize("alpha", [4.0, 1.0])
def test_symba_loss_by_hand(alpha):
    loss = losses.make_loss("symba", alpha=alpha)
    v, (dp, dn) = _value_and_grads(lambda p, n: loss.pair(p, n, 0.0, 0.0)[0], G_POS, G_NEG)
    gap = G_POS - G_NEG
    assert v == pytest.approx(_sp(-alpha * gap).mean(), rel=1e-6)
    assert dp == pytest.approx(-alpha * _sigmoid(-alpha * gap) / 3, rel=1e-5)
    assert dn == pytest.approx(-dp, rel=1e-6)         # symmetric: the pair's two gradients balance
    assert loss.needs_pairs and set(loss.pair(tf.constant(G_POS), tf.constant(G_NEG), 0, 0)[1]) == {"loss_pair"}
    with pytest.raises(NotImplementedError, match="aligned pairs"):
        loss.positive(tf.constant(G_POS), 0.0)


def test_a_symba_layer_steps_on_pairs_and_reports_its_pair_loss():
    """An FFDense with symba on [positives; negatives]: one step widens the goodness gap, and the
    layer reports loss_pair (no per-polarity losses)."""
    import keras
    from ffrun.core.layers import FFDense, Task
    keras.utils.set_random_seed(0)
    # mean goodness keeps the gap of order one, where softplus(-4 gap) still has a gradient
    layer = FFDense(16, optimizer=keras.optimizers.SGD(0.05), loss=losses.make_loss("symba"), name="d",
                    goodness="mean")
    x = tf.random.stateless_uniform([64, 8], [1, 2])
    xs = tf.concat([x[:32] * 1.2, x[32:]], 0)          # positives a little brighter than negatives
    y = tf.zeros([64], tf.int32)
    layer.set_task(Task.TRANSFORM)

    def gap():
        g = losses.goodness(layer.transform(xs, y), "mean")
        return float(tf.reduce_mean(g[:32]) - tf.reduce_mean(g[32:]))
    before = gap()
    layer.set_task(Task.TRAIN_PAIR)
    for _ in range(5):
        layer.ff_do_task(xs, y)
    assert gap() > before
    assert set(layer.metric_results()) == {"loss_pair"}


def test_with_the_flipped_loss_a_low_goodness_wins():
    """The goodness readout picks the label with the smallest goodness, and separation counts a
    positive with lower goodness than a negative as separated."""
    import keras
    from ffrun.core.layers import FFDense, FFGoodness, Task
    rows = tf.constant([[3.0], [1.0], [2.0], [0.5], [4.0], [9.0]])     # 2 images x 3 labels
    assert FFGoodness(3, lowest=True).predict_all_labels(rows).numpy().tolist() == [1, 0]
    assert FFGoodness(3).predict_all_labels(rows).numpy().tolist() == [0, 2]
    keras.utils.set_random_seed(0)
    layer = FFDense(4, loss="flipped", activation="linear", kernel_initializer="identity", name="f")
    y = tf.zeros([2], tf.int32)
    layer.set_task(Task.EVAL, positive=True)
    layer.ff_do_task(tf.constant([[0.1, 0, 0, 0], [0, 0.2, 0, 0]]), y)     # positives: low goodness
    layer.set_task(Task.EVAL, positive=False)
    layer.ff_do_task(tf.constant([[3.0, 0, 0, 0], [0, 2.0, 0, 0]]), y)     # negatives: high goodness
    assert layer.metric_results()["separation"] == pytest.approx(1.0)
