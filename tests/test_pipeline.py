"""The reference implementation's data pipeline as options (shuffle buffer, no partial last batch,
one order for the positive and negative passes): each does what tf.data does, is exact on resume, and is off by default."""
import numpy as np
import pytest
import tensorflow as tf

from ffrun.core.trainer import TrainMgr, buffered_shuffle


def _reference_tf_shuffle_property(order: np.ndarray, buffer: int) -> bool:
    """With a buffer of B, item i enters the buffer at step i - B + 1 (or 0), so it can never be
    emitted before that step."""
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return bool(np.all(position >= np.arange(len(order)) - buffer + 1))


@pytest.mark.parametrize("n, buffer", [(1000, 64), (50, 4096), (7, 1), (300, 299)])
def test_buffered_shuffle_is_a_local_permutation(n, buffer):
    order = buffered_shuffle(n, buffer, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(n))
    assert _reference_tf_shuffle_property(order, buffer)
    if buffer == 1:
        assert order.tolist() == list(range(n))          # a buffer of one keeps the order
    if buffer >= n:   # a buffer holding everything is a full shuffle: far from the identity
        assert np.mean(order != np.arange(n)) > 0.8


def test_buffered_shuffle_matches_tf_data_in_distribution():
    """tf.data's own shuffle(B) and ours give the same spread of displacements (not the same
    stream: numpy draws ours). Mean |position - index| over many draws, within 10%."""
    n, buffer, reps = 400, 32, 30
    ours = np.mean([np.abs(np.argsort(buffered_shuffle(n, buffer, np.random.default_rng(r))) - np.arange(n)).mean()
                    for r in range(reps)])
    theirs = np.mean([np.abs(np.argsort(np.fromiter(tf.data.Dataset.range(n).shuffle(buffer, seed=r), np.int64))
                             - np.arange(n)).mean() for r in range(reps)])
    assert ours == pytest.approx(theirs, rel=0.1)


def _mgr(**kw):
    return TrainMgr({}, lambda *a: {}, batch_size=32, seed=5, **kw)


def test_default_order_is_a_full_permutation_per_pass():
    mgr = _mgr()
    a, b = mgr.order(1000, 3, 0), mgr.order(1000, 3, 1)
    assert sorted(a.tolist()) == list(range(1000)) and not np.array_equal(a, b)
    assert np.array_equal(a, _mgr().order(1000, 3, 0))       # a function of (seed, epoch, pass) only


def test_same_order_gives_every_pass_of_an_epoch_one_order():
    mgr = _mgr(same_order=True)
    assert np.array_equal(mgr.order(500, 2, 0), mgr.order(500, 2, 1))
    assert not np.array_equal(mgr.order(500, 2, 0), mgr.order(500, 3, 0))


def test_shuffle_buffer_order_is_local_and_repeatable():
    mgr = _mgr(shuffle_buffer=16)
    order = mgr.order(500, 1, 0)
    assert _reference_tf_shuffle_property(order, 16)
    assert np.array_equal(order, _mgr(shuffle_buffer=16).order(500, 1, 0))


def test_drop_last_trains_on_whole_batches_only(cfg_factory):
    """Each training pass drops its partial last batch: exactly n - n % batch samples per pass."""
    from ffrun.experiment.build import build_run
    run = build_run(cfg_factory(["debug=tiny"]))
    sizes = [len(e.resolve(1)) for e in run.plan.train]          # unsup five_digits: pos and neg passes
    assert any(n % 32 for n in sizes)
    for drop, expected in ((False, sum(sizes)), (True, sum(n - n % 32 for n in sizes))):
        mgr = TrainMgr(run.network, None, run.plan.train, batch_size=32, drop_last=drop)
        assert mgr.run_epoch(1, evaluate=False).train_samples == expected
