"""The fused-kernel optimizers compute what Keras' own Adam and SGD compute."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ffrun.experiment.build import make_optimizer
from ffrun.core.optimizers import FusedAdam, FusedSGD


def _trajectory(opt, steps=5, halve_at=3):
    keras.utils.set_random_seed(0)
    w = keras.Variable(np.random.default_rng(0).normal(size=(30, 20)).astype(np.float32))
    opt.build([w])

    @tf.function
    def step(g):
        opt.apply_gradients([(g, w)])

    rng = np.random.default_rng(1)
    for i in range(steps):
        if i == halve_at:
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


COSINE = {"class_name": "CosineDecay", "config": {"initial_learning_rate": 1e-2, "decay_steps": 4}}


def test_a_schedule_in_the_config_steps_with_the_optimizers_own_steps():
    """A learning_rate mapping is a Keras schedule, evaluated at the optimizer's step count: the
    fused kernel follows it as Keras' Adam does, and after decay_steps the weights stop moving."""
    fused = make_optimizer({"class_name": "Adam", "learning_rate": COSINE}, "k")
    assert isinstance(fused, FusedAdam)
    plain = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, 4))
    np.testing.assert_allclose(_trajectory(fused, 6, None), _trajectory(plain, 6, None), rtol=1e-5, atol=1e-6)
    assert float(fused.learning_rate) == pytest.approx(0.0, abs=1e-9)
    fresh = lambda: make_optimizer({"class_name": "Adam", "learning_rate": COSINE}, "k")
    np.testing.assert_array_equal(_trajectory(fresh(), 4, None), _trajectory(fresh(), 6, None))


def test_each_ff_layer_decays_over_its_own_steps(cfg_factory):
    from ffrun.core.trainer import TrainMgr
    from ffrun.experiment.build import build_run
    from ffrun.experiment.schema import typed
    spec = typed(cfg_factory(["debug=tiny", "model.optimizer.learning_rate={class_name: CosineDecay, config: "
                              "{initial_learning_rate: 0.01, decay_steps: 1000}}"]))
    run = build_run(spec)
    TrainMgr(run.network, None, run.plan.train, batch_size=32, seed=0).fit([("all", 1)])
    schedule = keras.optimizers.schedules.CosineDecay(0.01, 1000)
    for name in run.network.ff_names:
        opt = run.network.layers[name].optimizer
        steps = int(opt.iterations.numpy())
        assert steps > 0
        assert float(opt.learning_rate) == pytest.approx(float(schedule(steps)), rel=1e-6), name


@pytest.mark.parametrize("overrides, message", [
    (["model.optimizer.learning_rate={class_name: CosineDecai, config: {}}"],
     "model.optimizer.learning_rate.class_name must be one of CosineDecay"),
    (["model.optimizer.learning_rate={class_name: CosineDecay}"],
     "model.optimizer.learning_rate.config must be a mapping of the schedule's arguments"),
    (["lr_schedule=linear_cooldown", "model.optimizer.learning_rate={class_name: CosineDecay, config: "
      "{initial_learning_rate: 0.01, decay_steps: 5}}"],
     "model.optimizer.learning_rate is a schedule, and lr_schedule=linear_cooldown would overwrite it"),
])
def test_a_bad_schedule_is_one_line_before_any_folder(overrides, message):
    from ffrun.app.overrides import override_problem
    problem = override_problem(["debug=tiny", *overrides])
    assert problem is not None and problem.startswith(message) and "\n" not in problem, problem
