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
