"""The fused-kernel optimizers compute what Keras' own Adam and SGD compute."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ffrun.experiment.build import make_optimizer
from ffrun.core.optimizers import FusedAdam, FusedSGD


def _trajectory(opt, steps=5):
    keras.utils.set_random_seed(0)
    w = keras.Variable(np.random.default_rng(0).normal(size=(30, 20)).astype(np.float32))
    opt.build([w])

    @tf.function
    def step(g):
        opt.apply_gradients([(g, w)])

    rng = np.random.default_rng(1)
    for i in range(steps):
        if i == 3:
            opt.learning_rate = float(opt.learning_rate) * 0.5    # schedules assign the lr in between
        step(tf.constant(rng.normal(size=(30, 20)).astype(np.float32)))
    return w.numpy()


@pytest.mark.parametrize("fused, plain", [
    (lambda: FusedAdam(1e-2), lambda: keras.optimizers.Adam(1e-2)),
    (lambda: FusedAdam(1e-2, beta_1=0.8, epsilon=1e-3), lambda: keras.optimizers.Adam(1e-2, beta_1=0.8, epsilon=1e-3)),
    (lambda: FusedSGD(1e-2, momentum=0.9), lambda: keras.optimizers.SGD(1e-2, momentum=0.9)),
    # Keras' decoupled decay (w -= lr * wd * w, outside the momentum: Hinton's code's form)
    (lambda: FusedSGD(1e-2, momentum=0.9, weight_decay=0.5),
     lambda: keras.optimizers.SGD(1e-2, momentum=0.9, weight_decay=0.5)),
    (lambda: FusedAdam(1e-2, weight_decay=0.5), lambda: keras.optimizers.Adam(1e-2, weight_decay=0.5)),
])
def test_fused_matches_keras(fused, plain):
    np.testing.assert_allclose(_trajectory(fused()), _trajectory(plain()), rtol=1e-5, atol=1e-6)


def test_config_builds_fused_unless_told_not_to():
    assert isinstance(make_optimizer({"class_name": "Adam", "learning_rate": 1e-3}, "k"), FusedAdam)
    plain = make_optimizer({"class_name": "SGD", "learning_rate": 1e-3, "fused": False}, "k")
    assert type(plain) is keras.optimizers.SGD
    assert type(make_optimizer({"class_name": "RMSprop"}, "k")) is keras.optimizers.RMSprop
    decoupled = make_optimizer({"class_name": "SGD", "learning_rate": 1e-3, "weight_decay": 1e-2}, "k")
    assert isinstance(decoupled, FusedSGD) and decoupled.weight_decay == pytest.approx(1e-2)


def test_decoupled_weight_decay_shrinks_weights_without_gradient():
    w = keras.Variable(np.ones((2, 2), np.float32))
    opt = FusedSGD(0.1, momentum=0.9, weight_decay=0.5)
    opt.apply_gradients([(tf.zeros((2, 2)), w)])
    np.testing.assert_allclose(w.numpy(), 0.95)    # 1 - lr * wd
