"""Stages that train only the last layers keep the frozen layers' outputs: the curve (every
metrics.csv column, epoch by epoch) is the one of a run that recomputes them, the kept outputs
are used, and a pass whose inputs change between epochs, or that does not fit the budget,
recomputes them as before. Outputs over the memory budget go to files, read back a batch at a
time: the same curve and weights, files that never outlive the stage, a reader that holds one
batch."""
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from ffrun.core import feature_cache
from ffrun.core.feature_cache import HIDDEN_FOLDER, FeatureFiles
from ffrun.core.trainer import TrainingDiverged, TrainMgr
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
#: the readout stage's frozen outputs in files only
IN_FILES = ["feature_cache_mb=0", "feature_cache_disk_mb=64"]
RECOMPUTE = ["feature_cache_mb=0", "feature_cache_disk_mb=0"]   # cwcomp_mnist keeps files by default
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


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("extra", [[], ["track_test=true"]], ids=["validation", "track_test"])
def test_a_softmax_stage_on_kept_conv_outputs_has_the_curve_of_recomputing_them(cfg_factory, tmp_path, caplog, extra):
    """In memory and in files alike; the files are gone with the stage."""
    caplog.set_level(logging.INFO)
    results, kept = _run(cfg_factory, tmp_path, TINY_CWCOMP + extra, "kept")
    log = caplog.text
    caplog.clear()
    results_f, in_files = _run(cfg_factory, tmp_path, TINY_CWCOMP + extra + ["feature_cache_mb=0",
                                                                             "feature_cache_disk_mb=64"], "in_files")
    log_f = caplog.text
    caplog.clear()
    results0, recomputed = _run(cfg_factory, tmp_path, TINY_CWCOMP + extra + RECOMPUTE, "recomputed")
    # the softmax learns in the readout stage: a cache that fed the wrong rows would change the curve
    assert len({r["softmax/acc"] for r in kept[1:]}) > 1
    _assert_same_curve(kept, recomputed)
    _assert_same_curve(in_files, recomputed)
    for readout, scores in results["readouts"].items():
        assert scores["test_final"] == pytest.approx(results0["readouts"][readout]["test_final"], abs=1e-6)
        assert results_f["readouts"][readout]["test_final"] == pytest.approx(scores["test_final"], abs=1e-6)
    # the kept outputs were used: the softmax reads the flattened last block, 40 channels x 2 x 2
    assert "feature cache: train keeps" in log and "(flat)" in log
    assert "feature cache: val keeps" in log
    assert ("feature cache: test keeps" in log) == bool(extra)
    assert "in files" not in log
    for label in ["train", "val"] + (["test"] if extra else []):
        assert f"feature cache: {label} keeps" in log_f and "(flat) for the stage in files" in log_f
    assert "feature cache" not in caplog.text
    # nothing of the files is left: the run folder holds what a run with the memory cache leaves
    assert _listing(tmp_path / "in_files") == _listing(tmp_path / "kept")
    assert not (tmp_path / "in_files" / HIDDEN_FOLDER).exists()


@pytest.mark.parametrize("where", [[], IN_FILES], ids=["memory", "files"])
def test_an_unsupervised_readout_stage_replays_the_frozen_layers_scores(cfg_factory, tmp_path, caplog, where):
    """Two evaluation passes (positives, negatives) score the same frozen FF layers every epoch:
    their goodness, loss and separation columns come back from one pass over the data."""
    caplog.set_level(logging.INFO)
    overrides = ["debug=tiny", "epochs=1", "readout_epochs=3", "checkpoint.every=0", "tensorboard.enabled=false"]
    _, kept = _run(cfg_factory, tmp_path, overrides + where, "kept")
    assert "feature cache: val neg keeps" in caplog.text and "(scores only)" in caplog.text
    assert ("for the stage in files" in caplog.text) == bool(where)
    _, recomputed = _run(cfg_factory, tmp_path, overrides + RECOMPUTE, "recomputed")
    assert any(key.endswith("/separation") for key in kept[-1])
    _assert_same_curve(kept, recomputed)


def _mgr(cfg_factory, overrides, folder: Path | None = None):
    keras.utils.set_random_seed(0)   # the same initial weights for every manager a test compares
    run = build_run(cfg_factory(TINY_CWCOMP + overrides))
    spec = typed(cfg_factory(TINY_CWCOMP + overrides))
    mgr = TrainMgr(run.network, None, run.plan.train + run.plan.val, batch_size=spec.batch_size,
                   eval_batch_size=spec.eval_batch_size, augment=run.augment, feature_cache_mb=spec.feature_cache_mb,
                   feature_cache_disk_mb=spec.feature_cache_disk_mb, feature_cache_dir=folder)
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
#: bytes of the softmax's input per image, the flattened last block: 40 channels x 2 x 2 float32
FLAT_ROW = 160 * 4


def _weights(mgr: TrainMgr) -> list[np.ndarray]:
    return [np.array(v.numpy()) for name in sorted(mgr.layers) for v in mgr.layers[name].trainable_variables]


def _sizes(run) -> tuple[int, int]:
    return len(run.plan.train[0].resolve(1)), len(run.plan.val[0].resolve(1))


def test_outputs_kept_in_files_train_the_weights_of_memory_and_of_recomputing(cfg_factory, tmp_path):
    folder = tmp_path / HIDDEN_FOLDER
    during = []

    def look(result):
        during.append(sorted(p.stat().st_size for p in folder.iterdir()) if folder.exists() else [])

    in_files, run = _mgr(cfg_factory, IN_FILES, folder)
    start = _weights(in_files)
    in_files.fit(run.schedule, on_epoch_end=look)
    in_memory, run_m = _mgr(cfg_factory, [])
    assert all(np.array_equal(a, b) for a, b in zip(_weights(in_memory), start))   # the same start
    in_memory.fit(run_m.schedule)
    recomputed, run_r = _mgr(cfg_factory, RECOMPUTE)
    recomputed.fit(run_r.schedule)
    assert in_files.cached_passes == in_memory.cached_passes == {"train": 3, "val": 3}
    assert not recomputed.cached_passes
    softmax = sorted(in_files.layers).index("softmax")
    assert not np.allclose(_weights(in_files)[softmax], start[softmax])   # the readout stage trained it
    for a, b, c in zip(_weights(in_files), _weights(in_memory), _weights(recomputed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    # one file per pass during the readout epochs (none in the stage that trains every layer),
    # and no folder after the stage
    n_train, n_val = _sizes(run)
    assert during == [[]] + [sorted([n_train * FLAT_ROW, n_val * FLAT_ROW])] * 3
    assert not folder.exists()


def test_outputs_over_the_memory_budget_go_to_files_the_others_stay_in_memory(cfg_factory, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # 0.5 MB of memory: the validation outputs (300 x 640 bytes) fit, the training outputs do not
    mgr, run = _mgr(cfg_factory, ["feature_cache_mb=0.5", "feature_cache_disk_mb=64"], tmp_path / HIDDEN_FOLDER)
    mgr.fit(run.schedule)
    assert mgr.cached_passes == {"train": 3, "val": 3}
    lines = [line for line in caplog.text.splitlines() if "feature cache:" in line]
    assert len(lines) == 2
    assert "feature cache: train keeps" in lines[0] and lines[0].endswith("for the stage in files")
    assert "feature cache: val keeps" in lines[1] and lines[1].endswith("for the stage")


def test_a_disk_budget_or_free_space_too_small_recomputes_with_one_log_line(cfg_factory, tmp_path, caplog,
                                                                           monkeypatch):
    caplog.set_level(logging.INFO)
    folder = tmp_path / HIDDEN_FOLDER
    # 0.5 MB of files: the validation outputs fit, the training outputs do not
    mgr, run = _mgr(cfg_factory, ["feature_cache_mb=0", "feature_cache_disk_mb=0.5"], folder)
    mgr.fit(run.schedule)
    assert mgr.cached_passes == {"val": 3}
    lines = [line for line in caplog.text.splitlines() if "feature cache: train" in line]
    assert len(lines) == 1 and "0.5 MB of feature_cache_disk_mb are left" in lines[0]
    caplog.clear()
    # a disk with room for the files but not for the reserve kept free beside them
    usage = type("usage", (), {"total": 2 ** 40, "used": 2 ** 40, "free": feature_cache.DISK_RESERVE_BYTES})
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda path: usage)
    mgr, run = _mgr(cfg_factory, IN_FILES, folder)
    mgr.fit(run.schedule)
    assert not mgr.cached_passes
    for label in ("train", "val"):
        lines = [line for line in caplog.text.splitlines() if f"feature cache: {label}" in line]
        assert len(lines) == 1 and "512.0 MB free" in lines[0] and "run every epoch" in lines[0]
    assert not folder.exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_files_are_removed_when_a_stage_fails_or_is_interrupted(cfg_factory, tmp_path, error):
    folder = tmp_path / HIDDEN_FOLDER

    def fail_in_epoch_3(result):
        if result.epoch == 3:
            assert len(list(folder.iterdir())) == 2   # mid-stage: the training and validation files
            raise error("stopped mid-stage")

    mgr, run = _mgr(cfg_factory, IN_FILES, folder)
    with pytest.raises(error, match="stopped mid-stage"):
        mgr.fit(run.schedule, on_epoch_end=fail_in_epoch_3)
    assert not folder.exists()


def test_a_ctrl_c_while_the_files_are_written_leaves_none(cfg_factory, tmp_path, monkeypatch):
    folder = tmp_path / HIDDEN_FOLDER
    append = FeatureFiles.append

    def append_then_ctrl_c(self, batch):
        append(self, batch)
        if self.written > self.rows // 2:
            assert len(list(folder.iterdir())) == 1   # the training outputs, half-written
            raise KeyboardInterrupt

    monkeypatch.setattr(FeatureFiles, "append", append_then_ctrl_c)
    mgr, run = _mgr(cfg_factory, IN_FILES, folder)
    with pytest.raises(KeyboardInterrupt):
        mgr.fit(run.schedule)
    assert not folder.exists()


def test_a_run_that_fails_mid_stage_leaves_no_files_in_its_folder(cfg_factory, tmp_path, monkeypatch):
    check_losses = TrainMgr.check_losses

    def diverge_in_epoch_3(self, result):
        check_losses(self, result)
        if result.epoch == 3:
            raise TrainingDiverged("softmax/loss became nan in epoch 3")

    monkeypatch.setattr(TrainMgr, "check_losses", diverge_in_epoch_3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = loop.train(cfg_factory(TINY_CWCOMP + IN_FILES), run_dir, outputs.make_console())
    assert results["status"] == "failed" and "epoch 3" in results["reason"]
    assert [r["epoch"] for r in outputs.read_metrics(run_dir / "metrics.csv")] == [1, 2]
    assert not (run_dir / HIDDEN_FOLDER).exists()


@pytest.mark.slow
def test_sigterm_mid_stage_stops_the_installed_script_and_removes_the_files(tmp_path):
    run = tmp_path / "run"
    args = [*TINY_CWCOMP, *IN_FILES, "schedule=[[all,1],[[softmax],400]]", f"hydra.run.dir={run}"]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ffrun")), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder, deadline = run / HIDDEN_FOLDER, time.time() + 300
    while not (folder.exists() and any(folder.iterdir())):   # the readout stage writes its files
        assert time.time() < deadline and proc.poll() is None, proc.stderr and proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1
    saved = json.loads((run / "results.json").read_text())
    assert saved["status"] == "interrupted" and "SIGTERM" in saved["reason"]
    assert not folder.exists()


def test_files_left_by_a_killed_run_are_removed_not_read(cfg_factory, tmp_path):
    folder = tmp_path / HIDDEN_FOLDER

    def plant():
        # a killed run's files under the names this run writes, of the right sizes, other values
        folder.mkdir()
        for name, rows in zip(("pass1-0.bin", "pass2-0.bin"), _sizes(run)):
            (folder / name).write_bytes(np.full(rows * FLAT_ROW // 4, 7.0, np.float32).tobytes())
        (folder / "stray.bin").write_bytes(b"x")

    in_memory, run = _mgr(cfg_factory, [])
    in_memory.fit(run.schedule)
    plant()
    in_files, run_f = _mgr(cfg_factory, IN_FILES, folder)
    in_files.fit(run_f.schedule)
    assert in_files.cached_passes == {"train": 3, "val": 3}
    for a, b in zip(_weights(in_files), _weights(in_memory)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not folder.exists()
    # a resume with one epoch of the stage left keeps nothing, and still removes what it finds
    plant()
    resumed, run_r = _mgr(cfg_factory, IN_FILES, folder)
    resumed.fit(run_r.schedule, start_epoch=3)
    assert not resumed.cached_passes and not folder.exists()


def test_a_write_that_fails_puts_the_scores_back_and_recomputes(cfg_factory, tmp_path, caplog, monkeypatch):
    """The disk filling up while the validation outputs are written: that pass recomputes, and
    the frozen layers' validation scores count every image once, as without files."""
    caplog.set_level(logging.INFO)
    append = FeatureFiles.append
    calls = []
    in_files, run = _mgr(cfg_factory, IN_FILES, tmp_path / HIDDEN_FOLDER)
    fail_at = -(-_sizes(run)[0] // in_files.eval_rows) + 2   # the validation pass's second batch

    def append_until_the_disk_is_full(self, batch):
        calls.append(len(calls) + 1)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        append(self, batch)

    monkeypatch.setattr(FeatureFiles, "append", append_until_the_disk_is_full)
    curve = [r.metrics for r in in_files.fit(run.schedule)]
    recomputed, run_r = _mgr(cfg_factory, RECOMPUTE)
    curve0 = [r.metrics for r in recomputed.fit(run_r.schedule)]
    assert in_files.cached_passes == {"train": 3}
    assert "feature cache: val could not write its frozen outputs" in caplog.text
    assert any(key.startswith("conv") for key in curve[-1])   # the frozen blocks' scores are columns
    for row, row0 in zip(curve, curve0):
        assert row.keys() == row0.keys()
        for key, value in row0.items():
            assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert not (tmp_path / HIDDEN_FOLDER).exists()


def _written(folder: Path, rows: int, chunk: int = 100) -> tuple[FeatureFiles, dict[str, np.ndarray]]:
    """Files of two outputs of different shapes and dtypes, written ``chunk`` rows at a time."""
    full = {"maps": np.arange(rows * 12, dtype=np.float32).reshape(rows, 3, 4),
            "codes": (np.arange(rows * 5).reshape(rows, 5) * 7).astype(np.int32)}
    files = FeatureFiles(folder, "p", rows, {name: (a.shape[1:], a.dtype) for name, a in full.items()})
    for start in range(0, rows, chunk):
        files.append({name: a[start:start + chunk] for name, a in full.items()})
    files.finish()
    return files, full


@pytest.mark.parametrize("call", ["preadv", "pread"], ids=["preadv", "without preadv"])
def test_the_reader_returns_rows_in_the_asked_order_through_one_batch_buffer(tmp_path, monkeypatch, call):
    if call == "pread":
        monkeypatch.delattr(feature_cache.os, "preadv")
    files, full = _written(tmp_path / "f", 2500)
    row_bytes = 12 * 4 + 5 * 4
    assert files.nbytes == 2500 * row_bytes == sum(p.stat().st_size for p in files.paths.values())
    reader = files.reader(64)
    assert reader.nbytes == 64 * row_bytes   # one batch, whatever the files' size
    addresses = {name: buf.ctypes.data for name, buf in reader.buffers.items()}
    perm = np.random.default_rng(0).permutation(2500)
    for start in range(0, 2500, 64):   # the last batch has 4 rows
        idx = perm[start:start + 64]
        got = reader.read(idx)
        for name, a in full.items():
            np.testing.assert_array_equal(got[name], a[idx])
            assert got[name].ctypes.data == addresses[name]   # every batch lands in the one buffer
    # runs of consecutive rows longer than one read call fills, and a repeated row
    whole = files.reader(2500)
    for idx in (np.arange(2500), np.r_[1200:2500, 0:1200], np.array([5, 5, 6, 4])):
        got = whole.read(idx)
        for name, a in full.items():
            np.testing.assert_array_equal(got[name], a[idx])
    with pytest.raises(IndexError):
        reader.read(np.array([2500]))
    with pytest.raises(ValueError):
        reader.read(np.arange(65))
    files.close()
    assert not any((tmp_path / "f").iterdir())


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident size from /proc")
def test_reading_every_row_of_the_files_does_not_grow_the_process_by_their_size(tmp_path):
    """64 MB of rows read in a random order, a batch at a time: the process grows by far less than
    the files. A memory map of the same file, read the same way, grows it by their size (the
    pages of a mapped file a process touched count in its resident memory): the measure can tell."""
    rows, width, batch = 16384, 1024, 128
    files = FeatureFiles(tmp_path, "big", rows, {"flat": ((width,), np.float32)})
    for start in range(0, rows, 256):   # 1 MB at a time: writing does not hold the file either
        files.append({"flat": np.full((256, width), start, np.float32) + np.arange(256, dtype=np.float32)[:, None]})
    files.finish()
    assert files.nbytes == 64 * 2 ** 20
    perm = np.random.default_rng(1).permutation(rows)
    reader = files.reader(batch)
    before = _rss()
    total = sum(float(reader.read(perm[s:s + batch])["flat"][:, 0].sum()) for s in range(0, rows, batch))
    grown = _rss() - before
    mapped = np.memmap(files.paths["flat"], np.float32, "r", shape=(rows, width))
    before_map = _rss()
    total_map = sum(float(np.asarray(mapped[perm[s:s + batch]])[:, 0].sum()) for s in range(0, rows, batch))
    grown_map = _rss() - before_map
    del mapped
    files.close()
    assert total == total_map == float(np.arange(rows).sum())
    assert grown < 8 * 2 ** 20, grown
    assert grown_map > 48 * 2 ** 20, grown_map
