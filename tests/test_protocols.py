"""Protocol pieces: wrong labels, routing, hybrid negatives, the learning-rate cool-down."""
import numpy as np
import pytest
import tensorflow as tf

from ffrun.experiment import protocols
from ffrun.experiment.build import build_run
from ffrun.errors import ConfigError
from ffrun.core.layers import Task
from ffrun.experiment.schedules import lr_multiplier


def test_wrong_labels_are_uniform_and_never_the_true_label():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 2000).astype(np.int32)
    wrong = protocols.wrong_labels(y, 10, rng)
    assert not np.any(wrong == y)
    counts = np.bincount(wrong[y == 3], minlength=10)
    assert counts[3] == 0 and counts[[0, 1, 2, 4, 5, 6, 7, 8, 9]].min() > 2000 / 9 * 0.8


def test_hard_wrong_labels_follow_the_model_and_skip_the_truth():
    probs = np.tile([0.7, 0.2, 0.1, 0.0], (5000, 1))
    y = np.zeros(5000, np.int32)
    labels = protocols.hard_wrong_labels(probs, y, np.random.default_rng(1))
    assert not np.any(labels == 0) and not np.any(labels == 3)
    assert np.mean(labels == 1) == pytest.approx(2 / 3, abs=0.03)
    # all mass on the true class: still a wrong label
    assert protocols.hard_wrong_labels(np.array([[1.0, 0, 0]]), np.array([0]), np.random.default_rng(0))[0] != 0


@pytest.mark.parametrize("splitting", ["random", "same", "none"])
def test_routing_matrices(splitting):
    mats = protocols.routing_matrices(splitting, [8, 8, 8], 10, seed=0)
    for r in mats:
        assert r.shape == (10, 8)
        if splitting == "none":
            assert r.min() == 1.0
        else:
            assert np.all(r.sum(1) == 4)                       # each class owns half the units
            assert sorted(r[:, 0].astype(int).tolist()) == [0] * 5 + [1] * 5  # 5 classes in A, 5 in B
    if splitting == "same":
        assert all(np.array_equal(mats[0], r) for r in mats)
    if splitting == "random":
        assert not all(np.array_equal(mats[0], r) for r in mats)


def test_unsup_split_none_is_rejected(cfg_factory):
    with pytest.raises(ConfigError, match="supervised only"):
        build_run(cfg_factory(["data=digits", "protocol=split", "splitting=none", "mode=unsup"]))


def test_split_unsup_negatives_use_the_other_half(cfg_factory):
    """The goodness the built layer reports: a positive of class 3 is scored on the half of the
    units class 3 owns, a negative of class 3 on the other half (hand-summed squares)."""
    run = build_run(cfg_factory(["data=digits", "protocol=split", "splitting=same", "mode=unsup", "units=8"]))
    dense = run.network.layers["dense1"]
    owned = dense.routing.numpy()[3]
    assert owned.sum() == 4                          # half of the 8 units
    x = np.zeros((1, 64), np.float32)
    x[0, 0] = 1.0
    dense.transform(tf.constant(x), None)
    kernel = np.zeros((64, 8), np.float32)
    kernel[0] = np.arange(1.0, 9.0)                  # h = [1, 2, ..., 8]: every unit a different activity
    dense.layer.kernel.assign(kernel)
    squares = np.arange(1.0, 9.0) ** 2
    for positive in (True, False):
        dense.set_task(Task.EVAL, positive=positive)
        dense.ff_do_task(tf.constant(x), tf.constant([3]))
    goodness = dense.metric_results()
    assert goodness["goodness_pos"] == pytest.approx(float(squares @ owned))
    assert goodness["goodness_neg"] == pytest.approx(float(squares @ (1 - owned)))


def test_hybrid_images_mix_two_different_images():
    x = np.stack([np.full(64, float(i)) for i in range(6)]).astype(np.float32)
    out = protocols.hybrid_images(tf.constant(x), tf.constant([0, 1], tf.int64), 8, 8, 6).numpy()
    for i, row in enumerate(out):
        values = set(np.unique(row).tolist())
        assert i in values or len(values) == 1
        assert len(values) <= 2 and values != {float(i)}, (i, values)   # mixed with another image
    same = protocols.hybrid_images(tf.constant(x), tf.constant([0, 1], tf.int64), 8, 8, 6).numpy()
    np.testing.assert_array_equal(out, same)                            # stateless in the seed
    in_chunks = protocols.hybrid_images(tf.constant(x), tf.constant([0, 1], tf.int64), 8, 8, 6, chunk=4).numpy()
    np.testing.assert_array_equal(out, in_chunks)                       # chunking changes nothing


def test_hybrid_masks_are_blobs_not_pixel_noise():
    """After 6 blurs the 0.5-threshold mask has large connected regions: far fewer changes between
    horizontal neighbours than the ~50% of raw random bits."""
    x = np.stack([np.full(784, float(i)) for i in range(40)]).astype(np.float32)   # every partner differs

    def change_rate(blur_steps):
        out = protocols.hybrid_images(tf.constant(x), tf.constant([3, 4], tf.int64), 28, 28, blur_steps,
                                      chunk=16).numpy().reshape(-1, 28, 28)
        return np.mean(out[:, :, 1:] != out[:, :, :-1])
    assert change_rate(0) > 0.4
    assert 0.0 < change_rate(6) < 0.2


def test_linear_cooldown():
    mult = lr_multiplier("linear_cooldown", [10])
    assert [mult(e) for e in (1, 6)] == [1.0, 1.0]
    assert mult(7) == pytest.approx(2 * (1 + 10 - 6) / 10) and mult(10) == pytest.approx(0.4)
    assert lr_multiplier("constant", [10]) is None


def test_linear_cooldown_restarts_for_a_readout_only_stage():
    # After 10 FF epochs the readout trains alone for 8: its rate must not run past zero into
    # negative values (the single-stage formula gives -0.4 at epoch 13); it decays afresh.
    mult = lr_multiplier("linear_cooldown", [10, 8])
    assert mult(10) == pytest.approx(0.4)
    assert [mult(e) for e in range(11, 19)] == pytest.approx([1.0] * 6 + [0.75, 0.5])


@pytest.mark.parametrize("epochs", range(1, 12))
def test_linear_cooldown_never_raises_the_rate(epochs):
    # odd stage lengths: the port's formula would start the second half above the base rate
    mult = lr_multiplier("linear_cooldown", [epochs])
    rates = [mult(e) for e in range(1, epochs + 1)]
    assert all(0 < r <= 1.0 for r in rates)
    assert all(b <= a for a, b in zip(rates, rates[1:]))
    if epochs >= 5:   # shorter stages end before the formula drops below 1
        assert rates[-1] < 1.0


def test_five_digits_protocol_sets(cfg_factory):
    run = build_run(cfg_factory(["data=digits", "data.val_size=300"]))
    pos = run.plan.train[0].data
    neg = run.plan.train[1].data
    assert set(np.unique(pos.y.numpy())) == {0, 1, 2, 3, 4}
    assert set(np.unique(neg.y.numpy())) == {5, 6, 7, 8, 9}
    assert set(np.unique(neg.y_ff.numpy())) == {0, 1, 2, 3, 4} and not neg.positive


def test_readout_step_same_step_trains_the_readout_in_the_pair_step(cfg_factory):
    base = ["experiment=paper_small", "data=digits", "data.val_size=300", "units=8", "readout_step=separate"]
    separate = build_run(cfg_factory(base)).plan.train
    assert [e.task for e in separate] == [Task.TRAIN_PAIR, Task.TRAIN_POS]
    fused = build_run(cfg_factory([*base, "readout_step=same_step"])).plan.train
    assert [e.task for e in fused] == [Task.TRAIN_PAIR_READOUT]
    assert "softmax" in fused[0].layers and "dense1" in fused[0].layers
    with pytest.raises(ConfigError, match="pairing=same_step"):
        build_run(cfg_factory([*base, "pairing=separate", "readout_step=same_step"]))


def test_per_epoch_sets_let_go_of_the_last_epoch_before_drawing():
    # Two 50k-image hybrid sets alive at once were an unsup run's memory peak.
    import gc
    import weakref

    from ffrun.experiment.protocols import PerEpoch

    class Images:  # stands in for a drawn FFData
        pass

    alive_when_drawing = []
    last = []

    def make(epoch):
        gc.collect()
        alive_when_drawing.append(bool(last) and last[-1]() is not None)
        obj = Images()
        last.append(weakref.ref(obj))
        return obj

    per_epoch = PerEpoch(make)
    first = per_epoch(1)
    assert per_epoch(1) is first        # passes of one epoch share the draw
    del first
    per_epoch(2)
    assert alive_when_drawing == [False, False]


def test_per_batch_hard_labels_follow_the_current_softmax(cfg_factory):
    """negatives=hard_batch: every batch's wrong labels come from the softmax as it is at that
    step (Hinton's code), never the true label."""
    from ffrun.core.trainer import TrainMgr
    run = build_run(cfg_factory(["experiment=paper_small", "data=digits", "data.val_size=300", "units=16",
                                 "protocol.negatives=hard_batch"]))
    (entry,) = [e for e in run.plan.train if e.task in (Task.TRAIN_PAIR, Task.TRAIN_PAIR_READOUT)]
    assert entry.hard_from == "softmax"
    mgr = TrainMgr(run.network.layers, run.network.seq, run.plan.train, batch_size=32)
    mgr.build()
    pos, _ = entry.resolve(1)
    X, y = pos.X[:400], pos.y[:400]
    kernel = run.network.layers["softmax"].layer.kernel
    weights = np.zeros(kernel.shape, np.float32)
    weights[:, 3] = 100.0                        # the softmax now says "3" for every image
    kernel.assign(weights)
    labels = mgr.hard_labels(X, y, "softmax", tf.constant([0, 1], tf.int64)).numpy()
    y = y.numpy()
    assert np.all(labels != y)
    assert np.all(labels[y != 3] == 3)           # the most probable wrong label, at this step
    assert len(set(labels[y == 3])) > 3          # with the truth masked, the rest are equally likely
    again = mgr.hard_labels(X, tf.constant(y), "softmax", tf.constant([0, 1], tf.int64)).numpy()
    assert np.array_equal(labels, again)         # keyed by the seed: a resumed run redraws the same


def test_per_batch_hard_negatives_need_the_pair_step(cfg_factory):
    with pytest.raises(ConfigError, match="pairing=same_step"):
        build_run(cfg_factory(["experiment=paper_small", "data=digits", "data.val_size=300", "units=8",
                               "protocol.negatives=hard_batch", "pairing=separate", "readout_step=separate"]))
