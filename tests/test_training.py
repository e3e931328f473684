"""TrainMgr: one graph per task, reused every epoch; stages; the Python API without YAML."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ffrun import FFData, FFDense, FFPreNorm, FFSoftmax, Task, TrainMgr
from ffrun.core.trainer import TrainingDiverged


def _toy_net():
    keras.utils.set_random_seed(0)
    layers = dict(
        dense1=FFDense(16, 0.5, 0.5, keras.optimizers.Adam(1e-2), name="dense1"),
        norm1=FFPreNorm(name="norm1"),
        dense2=FFDense(16, 0.5, 0.5, keras.optimizers.Adam(1e-2), name="dense2"),
        norm2=FFPreNorm(name="norm2"),
        softmax=FFSoftmax(2, keras.optimizers.Adam(1e-2), name="softmax"),
    )

    def train_seq(X, y, y_ff):
        h1 = layers["norm1"].ff_do_task(layers["dense1"].ff_do_task(X, y_ff), y_ff)
        h2 = layers["norm2"].ff_do_task(layers["dense2"].ff_do_task(h1, y_ff), y_ff)
        layers["softmax"].ff_do_task(tf.concat([h1, h2], 1), y)
    return layers, train_seq


def _toy_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    x = rng.normal(size=(n, 6)).astype(np.float32) + 2.0 * y[:, None]
    pos = FFData.from_numpy(x, y)
    neg = FFData.from_numpy(rng.permutation(x.ravel()).reshape(x.shape), y, positive=False)
    return pos, neg


def test_each_task_is_traced_once_over_many_epochs():
    layers, seq = _toy_net()
    pos, neg = _toy_data()
    # 97 samples with batch 32: a ragged last batch must not retrace either
    val_pos, val_neg = _toy_data(97, seed=1)
    mgr = TrainMgr(layers, seq, [(Task.TRAIN_POS, pos), (Task.TRAIN_NEG, neg),
                                 (Task.EVAL, val_pos), (Task.EVAL, val_neg)], batch_size=32)
    mgr.fit([("all", 5)])
    assert len(mgr.trace_counts) == 4
    assert all(count == 1 for count in mgr.trace_counts.values()), mgr.trace_counts


def _copied_halves(n, seed, d=8):
    """Positives [u, u], negatives [u, v] with u, v ~ N(0, I_d).

    For a unit with weights (a, b) on the two halves, the mean square of its pre-activation is
    |a|^2 + |b|^2 + 2 a.b on positives and |a|^2 + |b|^2 on negatives: at a random initialization
    a.b is about 0 and goodness cannot tell them apart. A layer separates them only by learning to
    weigh both halves alike (a ~ b), i.e. to detect the copy."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    y = (u[:, 0] > 0).astype(np.int32)        # something for the softmax to read; not asserted on
    return (FFData.from_numpy(np.concatenate([u, u], 1), y),
            FFData.from_numpy(np.concatenate([u, v], 1), y, positive=False))


def test_python_api_ff_layers_learn_to_separate_positives_from_negatives():
    """The FF objective itself does the learning: the first layer's goodness separates held-out
    positives from negatives (AUC) from chance at initialization to well above it. Measured on this
    machine: 0.45-0.52 before, 0.756-0.764 after 8 epochs over six initializations."""
    layers, seq = _toy_net()
    pos, neg = _copied_halves(512, seed=0)
    val = list(_copied_halves(1000, seed=1))
    mgr = TrainMgr(layers, seq, [(Task.TRAIN_POS, pos), (Task.TRAIN_NEG, neg),
                                 (Task.EVAL, val[0]), (Task.EVAL, val[1])], batch_size=32)
    before = mgr.evaluate([(Task.EVAL, val[0]), (Task.EVAL, val[1])])
    assert before["dense1/separation"] == pytest.approx(0.5, abs=0.1)
    results = mgr.fit([("all", 8)])
    after = results[-1].metrics
    assert after["dense1/separation"] > 0.7, [r.metrics["dense1/separation"] for r in results]
    # positives now have clearly the larger mean goodness (measured ~2.5x; about equal at the start)
    assert after["dense1/goodness_pos"] > 1.5 * after["dense1/goodness_neg"]
    # every FF layer reports its training losses and evaluation goodness
    for name in ("dense1", "dense2"):
        assert {f"{name}/loss_pos", f"{name}/loss_neg", f"{name}/goodness_pos", f"{name}/separation"} <= set(after)
    assert results[-1].row()["samples_per_s"] > 0


def test_a_stage_trains_only_its_layers():
    layers, seq = _toy_net()
    pos, neg = _toy_data()
    mgr = TrainMgr(layers, seq, [(Task.TRAIN_POS, pos), (Task.TRAIN_NEG, neg)], batch_size=50)
    mgr.build(pos)
    frozen = [w.numpy().copy() for w in layers["dense1"].layer.weights]
    sm = [w.numpy().copy() for w in layers["softmax"].layer.weights]
    results = mgr.fit([(["softmax"], 2)])
    for b, w in zip(frozen, layers["dense1"].layer.weights):
        np.testing.assert_array_equal(b, w.numpy())
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(sm, layers["softmax"].layer.weights))
    # the negative pass has nothing to train in a softmax-only stage: it is skipped
    assert all("dense1/loss_neg" not in r.metrics for r in results)
    with pytest.raises(KeyError):
        mgr.fit([(["nope"], 1)])


def test_non_finite_loss_stops_training():
    layers, seq = _toy_net()
    layers["dense1"].th_pos = float("nan")
    pos, neg = _toy_data()
    mgr = TrainMgr(layers, seq, [(Task.TRAIN_POS, pos)], batch_size=50)
    with pytest.raises(TrainingDiverged, match="dense1/loss_pos became nan in epoch 1"):
        mgr.fit([("all", 1)])


def test_nan_goodness_does_not_reach_the_separation_histogram():
    """tf.maximum(nan, x) is NaN on AVX2 CPUs and histogram_fixed_width raises on NaN: the metric
    must leave non-finite goodness out itself, whatever the CPU, and count the rest as before."""
    from ffrun.core.losses import GoodnessSeparation
    m = GoodnessSeparation()
    m.update_state(tf.constant([2.0, float("nan"), 3.0, float("inf")]), positive=True)
    m.update_state(tf.constant([1.0, float("-inf"), float("nan")]), positive=False)
    assert float(tf.reduce_sum(m.pos_hist)) == 2 and float(tf.reduce_sum(m.neg_hist)) == 1
    assert float(m.result()) == 1.0


def test_a_loss_above_max_loss_stops_training():
    """Losses of 1e22 are a diverged run, not a completed one at chance accuracy."""
    layers, seq = _toy_net()
    pos, neg = _toy_data()
    mgr = TrainMgr(layers, seq, [(Task.TRAIN_POS, pos), (Task.TRAIN_NEG, neg)], batch_size=50, max_loss=1e-6)
    with pytest.raises(TrainingDiverged, match=r"dense1/loss_pos reached .* above max_loss=1e-06"):
        mgr.fit([("all", 1)])


def test_same_seed_same_weights():
    def run():
        layers, seq = _toy_net()
        pos, neg = _toy_data()
        TrainMgr(layers, seq, [(Task.TRAIN_POS, pos), (Task.TRAIN_NEG, neg)], batch_size=32, seed=3).fit([("all", 2)])
        return layers["dense2"].layer.kernel.numpy()
    np.testing.assert_array_equal(run(), run())


class _Passes:
    """A progress hook that records (pass label, batches) as TrainMgr announces them."""

    def __init__(self):
        self.passes = []

    def start_pass(self, label, batches):
        self.passes.append((label, batches))

    def advance(self, batches_done):
        pass

    def end_pass(self):
        pass


def test_all_labels_evaluation_batches_count_rows_not_images(cfg_factory):
    # eval_batch_size bounds the rows in memory: 10 labels per image means 1/10 the images per batch
    from ffrun.experiment.build import build_run
    run = build_run(cfg_factory(["data=digits", "mode=sup", "protocol=wrong_label", "units=8", "num_layers=2"]))
    all_labels = [e for e in run.plan.test if e.task == Task.EVAL_ALL_LABELS]
    assert all_labels
    accs = []
    for eval_bs in (40, 1000):
        hook = _Passes()
        mgr = TrainMgr(run.network.layers, run.network.seq, run.plan.train, batch_size=32,
                       eval_batch_size=eval_bs, progress=hook)
        accs.append(mgr.evaluate(all_labels)["goodness/acc"])
        n = len(all_labels[0].data)
        assert hook.passes == [(all_labels[0].label, -(-n // max(1, eval_bs // 10)))]
    assert accs[0] == accs[1]          # batching changes memory, never the result


def test_xla_steps_match_and_are_traced_once_with_a_ragged_last_batch():
    """model.xla: the compiled parts of each dense step are traced once for every epoch (XLA then
    compiles them once per batch shape: full batches and the ragged last one), and five epochs give
    the weights of the plain TensorFlow steps."""
    from ffrun.core.optimizers import FusedSGD
    pos, neg = _toy_data(97)      # batch 32: three full pairs and a ragged pair of 1 + 1 rows
    weights = []
    for xla in (False, True):
        keras.utils.set_random_seed(0)
        layers = dict(dense1=FFDense(16, 2.0, 2.0, FusedSGD(1e-2, momentum=0.9), name="dense1", peer_norm=0.03,
                                     l2=3e-4, activation="relu_full_grad", xla=xla),
                      norm1=FFPreNorm("rms", name="norm1"),
                      dense2=FFDense(16, 2.0, 2.0, FusedSGD(1e-2, momentum=0.9), name="dense2", peer_norm=0.03,
                                     l2=3e-4, activation="relu_full_grad", xla=xla))

        def seq(X, y, y_ff, layers=layers):
            layers["dense2"].ff_do_task(layers["norm1"].ff_do_task(layers["dense1"].ff_do_task(X, y_ff), y_ff), y_ff)
        mgr = TrainMgr(layers, seq, [(Task.TRAIN_PAIR, (pos, neg))], batch_size=32)
        mgr.fit([("all", 5)])
        assert list(mgr.trace_counts.values()) == [1]
        if xla:
            fns = [fn for name in ("dense1", "dense2") for fn in layers[name]._xla_fns.values()]
            assert len(fns) == 4 and all(fn.experimental_get_tracing_count() == 1 for fn in fns)
        weights.append([w.numpy() for name in ("dense1", "dense2") for w in layers[name].layer.weights])
    for plain, fast in zip(*weights):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
