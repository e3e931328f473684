"""Stages that train only the last layers keep the frozen layers' outputs: the curve (every
metrics.csv column, epoch by epoch) is the one of a run that recomputes them, the kept outputs
are used, and a pass whose inputs change between epochs, or that does not fit the budget,
recomputes them as before."""
import logging

import numpy as np
import pytest

from ffrun.core.trainer import TrainMgr
from ffrun.errors import ConfigError
from ffrun.experiment.build import build_run
from ffrun.experiment.schema import typed
from ffrun.run import loop, outputs

#: CwComp's four conv blocks with a few filters, on the 8x8 digits: one epoch of every block, then
#: three of the softmax alone on the frozen blocks
TINY_CWCOMP = ["experiment=cwcomp_mnist", "data=digits", "data.val_size=300", "batch_size=64", "eval_batch_size=128",
               "model.layers.conv1.filters=10", "model.layers.conv2.filters=20", "model.layers.conv3.filters=20",
               "model.layers.conv4.filters=40", "schedule=[[all,1],[[softmax],3]]",
               "checkpoint.every=0", "tensorboard.enabled=false"]
#: columns that are timings, not results
TIMES = ("seconds", "samples_per_s")


def _run(cfg_factory, tmp_path, overrides, name):
    run_dir = tmp_path / name
    run_dir.mkdir()
    results = loop.train(cfg_factory(overrides), run_dir, outputs.make_console())
    assert results["status"] == "completed"
    return results, outputs.read_metrics(run_dir / "metrics.csv")


def _assert_same_curve(kept, recomputed):
    assert [r["epoch"] for r in kept] == [r["epoch"] for r in recomputed]
    for a, b in zip(kept, recomputed):
        assert set(a) == set(b)
        for key in set(a) - set(TIMES):
            assert np.isclose(a[key], b[key], rtol=1e-5, atol=1e-7), (a["epoch"], key, a[key], b[key])


@pytest.mark.parametrize("extra", [[], ["track_test=true"]], ids=["validation", "track_test"])
def test_a_softmax_stage_on_kept_conv_outputs_has_the_curve_of_recomputing_them(cfg_factory, tmp_path, caplog, extra):
    caplog.set_level(logging.INFO)
    results, kept = _run(cfg_factory, tmp_path, TINY_CWCOMP + extra, "kept")
    log = caplog.text
    caplog.clear()
    results0, recomputed = _run(cfg_factory, tmp_path, TINY_CWCOMP + extra + ["feature_cache_mb=0"], "recomputed")
    # the softmax learns in the readout stage: a cache that fed the wrong rows would change the curve
    assert len({r["softmax/acc"] for r in kept[1:]}) > 1
    _assert_same_curve(kept, recomputed)
    for readout, scores in results["readouts"].items():
        assert scores["test_final"] == pytest.approx(results0["readouts"][readout]["test_final"], abs=1e-6)
    # the kept outputs were used: the softmax reads the flattened last block, 40 channels x 2 x 2
    assert "feature cache: train keeps" in log and "(flat)" in log
    assert "feature cache: val keeps" in log
    assert ("feature cache: test keeps" in log) == bool(extra)
    assert "feature cache" not in caplog.text


def test_an_unsupervised_readout_stage_replays_the_frozen_layers_scores(cfg_factory, tmp_path, caplog):
    """Two evaluation passes (positives, negatives) score the same frozen FF layers every epoch:
    their goodness, loss and separation columns come back from one pass over the data."""
    caplog.set_level(logging.INFO)
    overrides = ["debug=tiny", "epochs=1", "readout_epochs=3", "checkpoint.every=0", "tensorboard.enabled=false"]
    _, kept = _run(cfg_factory, tmp_path, overrides, "kept")
    assert "feature cache: val neg keeps" in caplog.text and "(scores only)" in caplog.text
    _, recomputed = _run(cfg_factory, tmp_path, overrides + ["feature_cache_mb=0"], "recomputed")
    assert any(key.endswith("/separation") for key in kept[-1])
    _assert_same_curve(kept, recomputed)


def _mgr(cfg_factory, overrides):
    run = build_run(cfg_factory(TINY_CWCOMP + overrides))
    spec = typed(cfg_factory(TINY_CWCOMP + overrides))
    mgr = TrainMgr(run.network, None, run.plan.train + run.plan.val, batch_size=spec.batch_size,
                   eval_batch_size=spec.eval_batch_size, augment=run.augment, feature_cache_mb=spec.feature_cache_mb)
    mgr.build()
    return mgr, run


def test_augmented_training_images_are_not_kept_but_the_validation_outputs_are(cfg_factory):
    mgr, run = _mgr(cfg_factory, ["data.augment.shift=1"])
    mgr.fit(run.schedule)
    # three readout-only epochs: the validation pass reads kept outputs, the training pass (new
    # shifts every epoch) never does
    assert mgr.cached_passes == {"val": 3}


def test_outputs_over_the_budget_are_recomputed_and_a_one_epoch_stage_keeps_nothing(cfg_factory, caplog):
    caplog.set_level(logging.INFO)
    # the flattened last block is 160 floats per image: 0.2 MB for the 300 validation images,
    # more for the training images
    mgr, run = _mgr(cfg_factory, ["feature_cache_mb=0.5"])
    mgr.fit(run.schedule)
    assert mgr.cached_passes == {"val": 3}
    assert "feature cache: train would keep" in caplog.text and "0.5 MB of feature_cache_mb are left" in caplog.text
    mgr, run = _mgr(cfg_factory, ["schedule=[[all,1],[[softmax],1]]"])
    mgr.fit(run.schedule)
    assert not mgr.cached_passes


def test_a_stage_that_trains_every_layer_keeps_nothing(cfg_factory):
    mgr, run = _mgr(cfg_factory, ["schedule=[[all,2]]"])
    mgr.fit(run.schedule)
    assert not mgr.cached_passes


def test_a_negative_budget_is_refused(cfg_factory):
    with pytest.raises(ConfigError, match="feature_cache_mb must be >= 0"):
        typed(cfg_factory(["feature_cache_mb=-1"]))


def test_evaluation_batches_are_bounded_by_their_outputs_size_and_score_the_same(cfg_factory):
    """eval_batch_size=1000 rows of cwcomp_mnist's maps held over 1 GB at once: a batch holds at
    most eval_batch_mb of node outputs, and the scores do not depend on it."""
    run = build_run(cfg_factory(TINY_CWCOMP + ["eval_batch_size=1000"]))
    scores = {}
    for mb in (1000.0, 0.05):
        mgr = TrainMgr(run.network, None, run.plan.val, batch_size=64, eval_batch_size=1000, eval_batch_mb=mb)
        mgr.build()
        scores[mb] = mgr.evaluate(run.plan.val), mgr.eval_rows
    # per digit the input and the tiny net's outputs are 8x8 + 10x8x8 + 20x4x4 + 20x4x4 + 40x2x2 (conv4
    # and flat) + 10 + 10 floats, 6736 bytes: 7 rows fit in 0.05 MB
    assert scores[1000.0][1] == 1000 and scores[0.05][1] == int(0.05 * 2 ** 20) // 6736 == 7
    assert scores[0.05][0].keys() == scores[1000.0][0].keys()
    for key, value in scores[1000.0][0].items():
        assert scores[0.05][0][key] == pytest.approx(value, rel=1e-5), key


def test_tensorboard_histograms_in_chunks_sample_the_same_values(cfg_factory, tmp_path, monkeypatch):
    """The histograms' forward pass runs a few images at a time (512 at once held every map of
    every block together): the sampled activations and the goodness are those of one pass."""
    from ffrun.run import callbacks
    run = build_run(cfg_factory(TINY_CWCOMP))
    data = run.plan.train[0].resolve(1)
    monkeypatch.setattr(callbacks.TensorBoard, "MAX_VALUES", 500)
    drawn = {}
    for chunk in (1000, 7):
        seen = drawn[chunk] = {}
        monkeypatch.setattr(callbacks.tf.summary, "histogram", lambda name, data, **kw: seen.__setitem__(name, data.numpy()))
        monkeypatch.setattr(callbacks.TensorBoard, "CHUNK", chunk)
        callbacks.TensorBoard(tmp_path / f"tb{chunk}", run.network, lambda epoch: data, 1).histograms(data, 1, n=60)
    # conv1's map of 60 images is 60 x 8 x 8 x 10 = 38,400 values: every 77th, 499 of them
    assert drawn[1000]["conv1/activations"].shape == (499,)
    assert drawn[1000]["conv2/goodness"].shape == (60,)
    assert drawn[7].keys() == drawn[1000].keys()
    for name, values in drawn[1000].items():
        np.testing.assert_allclose(drawn[7][name], values, rtol=1e-5, atol=1e-6, err_msg=name)
