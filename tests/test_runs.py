"""Short real runs on the 8x8 digits: they learn and leave every output behind."""
import json

import keras
import pytest

from ffrun.errors import ConfigError
from ffrun.run.outputs import accuracy_lines, read_metrics
from tests.conftest import colored_pixels


# unsup: five classes (chance 20%); sup with wrong-label negatives: ten classes (chance 10%).
@pytest.mark.slow
@pytest.mark.parametrize("overrides, readout, chance", [
    (["mode=unsup", "epochs=10"], "softmax", 0.2),
    (["mode=sup", "protocol=wrong_label", "pairing=same_step", "epochs=20"], "goodness", 0.1),
])
def test_short_run_learns_and_writes_outputs(train_tiny, overrides, readout, chance):
    results, run_dir = train_tiny(overrides)
    assert results["status"] == "completed"
    assert results["best_val_acc"] > 3 * chance, results
    assert results["test_acc"] > 3 * chance, results
    assert results["primary"] == f"{readout}/acc"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["best_epoch"] == results["best_epoch"] and saved["val_set"] == "validation"
    rows = read_metrics(run_dir / "metrics.csv")
    assert len(rows) == results["epochs"]
    for key in ("dense1/loss_pos", "dense1/loss_neg", "dense4/goodness_pos", "dense4/separation", f"{readout}/acc"):
        assert key in rows[0], key
    # FF layers learn to separate positives from negatives
    assert rows[-1]["dense1/separation"] > rows[0]["dense1/separation"]
    assert colored_pixels(run_dir / "curves.png") > 100    # curves are drawn, not only axes


def test_nan_loss_fails_cleanly_and_keeps_metrics(train_tiny, monkeypatch):
    """A NaN that appears in epoch 2 (whichever kernel makes it): the run ends failed, naming the
    layer and the epoch, and metrics.csv keeps epoch 1."""
    from ffrun.core.trainer import TrainMgr
    real = TrainMgr.metric_results
    real_run_epoch = TrainMgr.run_epoch
    epoch_now = [0]

    def nan_in_epoch_2(self, prefix=""):
        out = real(self, prefix)
        if epoch_now[0] == 2 and "dense3/loss_pos" in out:
            out["dense3/loss_pos"] = float("nan")
        return out

    def run_epoch(self, epoch, *args, **kwargs):
        epoch_now[0] = epoch
        return real_run_epoch(self, epoch, *args, **kwargs)
    monkeypatch.setattr(TrainMgr, "metric_results", nan_in_epoch_2)
    monkeypatch.setattr(TrainMgr, "run_epoch", run_epoch)
    results, run_dir = train_tiny(["epochs=3"])
    assert results["status"] == "failed"
    assert results["reason"] == "dense3/loss_pos became nan in epoch 2"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "failed" and saved["reason"] == results["reason"]
    assert [int(r["epoch"]) for r in read_metrics(run_dir / "metrics.csv")] == [1]


@pytest.mark.slow
def test_track_test_records_the_best_test_epoch_beside_the_validation_choice(train_tiny):
    results, run_dir = train_tiny(["track_test=true", "epochs=3", "readout_epochs=1"])
    rows = read_metrics(run_dir / "metrics.csv")
    assert all("test/softmax/acc" in r and "softmax/acc" in r for r in rows)
    readout = results["readouts"]["softmax/acc"]
    # per stage, the best of each column and its epoch, straight from metrics.csv
    for key, by_stage in (("softmax/acc", readout["best_by_stage"]), ("test/softmax/acc", readout["test_best_by_stage"])):
        assert [b["stage"] for b in by_stage] == [0, 1]
        for b in by_stage:
            in_stage = [r for r in rows if r["stage"] == b["stage"]]
            assert b["best"] == pytest.approx(max(r[key] for r in in_stage), abs=1e-6)
    # the epoch is still chosen on validation; the test figure at that epoch is the tracked one
    chosen = next(r for r in rows if r["epoch"] == results["best_epoch"])
    assert results["test_acc"] == pytest.approx(chosen["test/softmax/acc"], abs=1e-5)
    # curves.png draws the tracked test curve dashed beside its readout's evaluation curve
    assert accuracy_lines(rows) == [("softmax/acc", "softmax", "-"), ("test/softmax/acc", "softmax (test)", "--")]
    assert accuracy_lines([{k: v for k, v in r.items() if not k.startswith("test/")} for r in rows]) \
        == [("softmax/acc", "softmax", "-")]


def test_eval_on_test_scores_every_epoch_on_the_test_set(train_tiny):
    results, _ = train_tiny(["eval_on=test", "data.val_size=0", "epochs=2", "readout_epochs=0"])
    assert results["val_set"] == "test"
    assert results["data"]["val_pos"] == results["data"]["test_pos"]
    # the per-epoch figures ARE test figures (the reference implementation's practice): the final pass agrees with them
    for readout in results["readouts"].values():
        assert readout["final"] == pytest.approx(readout["test_final"], abs=1e-6)


def test_eval_every_skips_evaluation_but_not_the_last_epoch(train_tiny):
    results, run_dir = train_tiny(["mode=sup", "protocol=wrong_label", "epochs=5", "readout_epochs=0",
                                   "eval_every=2"])
    assert results["status"] == "completed" and results["epochs"] == 5
    rows = read_metrics(run_dir / "metrics.csv")
    evaluated = [int(r["epoch"]) for r in rows if "goodness/acc" in r]
    assert evaluated == [2, 4, 5]
    assert all("dense1/loss_pos" in r for r in rows)          # every epoch still trains
    assert results["best_epoch"] in evaluated and results["test_acc"] is not None


def test_eval_every_must_be_positive(train_tiny):
    from ffrun.errors import ConfigError
    with pytest.raises(ConfigError, match="eval_every"):
        train_tiny(["eval_every=0"])


@pytest.mark.slow
def test_readout_in_the_pair_step_learns_and_leaves_the_ff_layers_alone(cfg_factory, tmp_path):
    """readout_step=same_step (Hinton's code: the neutral-label softmax trains in the FF step)
    learns the readout and trains the FF layers exactly as the separate readout pass does."""
    from ffrun.run import loop, outputs
    results = {}
    for step in ("separate", "same_step"):
        cfg = cfg_factory(["experiment=paper_small", "data=digits", "data.val_size=300", "epochs=10",
                           "units=64", "batch_size=32", "checkpoint.every=0", "tensorboard.enabled=false",
                           f"readout_step={step}"])
        (tmp_path / step).mkdir()
        results[step] = loop.train(cfg, tmp_path / step, outputs.make_console())
        assert results[step]["status"] == "completed"
    fused, separate = results["same_step"]["readouts"], results["separate"]["readouts"]
    assert fused["softmax/acc"]["best"] > 3 * 0.1
    # the FF layers see the same steps either way: their losses agree to float32 rounding
    ff_columns = [k for k in read_metrics(tmp_path / "separate" / "metrics.csv")[0] if k.startswith("dense")]
    assert ff_columns
    for a, b in zip(read_metrics(tmp_path / "same_step" / "metrics.csv"),
                    read_metrics(tmp_path / "separate" / "metrics.csv")):
        assert [a[k] for k in ff_columns] == pytest.approx([b[k] for k in ff_columns], rel=1e-4, abs=1e-6)
    assert fused["goodness/acc"]["final"] == separate["goodness/acc"]["final"]


@pytest.mark.slow
def test_backprop_baseline_learns_and_ctrl_c_keeps_its_epochs(train_tiny, monkeypatch):
    results, run_dir = train_tiny(["mode=bp", "epochs=3"], name="full")
    assert results["status"] == "completed" and results["test_acc"] > 3 * 0.1
    assert list((run_dir / "tb").rglob("events.out.tfevents.*"))      # TensorBoard curves

    # Ctrl-C right after epoch 2: Keras' fit calls every callback's on_epoch_end through its
    # CallbackList, so the run's own recording of epoch 2 is done when the interrupt arrives
    every_callback = keras.callbacks.CallbackList.on_epoch_end

    def ctrl_c_after_epoch_2(self, epoch, logs=None):
        every_callback(self, epoch, logs)
        if epoch + 1 == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(keras.callbacks.CallbackList, "on_epoch_end", ctrl_c_after_epoch_2)
    results, run_dir = train_tiny(["mode=bp", "epochs=5"], name="stopped")
    assert results["status"] == "interrupted" and results["epochs"] == 2
    assert len(read_metrics(run_dir / "metrics.csv")) == 2
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "interrupted" and saved["test_acc"] == results["test_acc"]


@pytest.mark.slow
def test_backprop_baseline_follows_the_lr_schedule_and_dropout(train_tiny, cfg_factory):
    from ffrun.experiment import backprop
    from ffrun.experiment.schema import typed
    results, run_dir = train_tiny(["mode=bp", "epochs=8", "lr_schedule=linear_cooldown",
                                   "mode.dropout=0.2", "mode.optimizer.learning_rate=0.002"], name="sched")
    assert results["status"] == "completed"
    lrs = [row["bp/lr"] for row in read_metrics(run_dir / "metrics.csv")]
    # constant for the first half, then 2 (1 + E - e) / E of the base rate, as the FF runs
    assert lrs == pytest.approx([0.002] * 6 + [0.0015, 0.001])
    assert colored_pixels(run_dir / "curves.png") > 0
    spec = typed(cfg_factory(["mode=bp", "mode.dropout=0.2", "num_layers=2", "units=8"]))
    model = backprop.build_mlp(spec, 64, 10)
    assert [l.name for l in model.layers if isinstance(l, keras.layers.Dropout)] == ["dropout1", "dropout2"]
    with pytest.raises(ConfigError, match="mode.dropout"):
        typed(cfg_factory(["mode=bp", "mode.dropout=1.0"]))


def test_log_lines_say_how_long_the_rest_takes(train_tiny, caplog):
    """A background run (progress=false) is watched through its log: every epoch line but the last
    gives the remaining time."""
    with caplog.at_level("INFO", logger="ffrun"):
        train_tiny(["epochs=3", "readout_epochs=0"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(" eta " in line for line in lines[:2]) and " eta " not in lines[2]


@pytest.mark.parametrize("eta_seconds, shown", [(7260, "eta 2h01m"), (312.4, "eta 5m12s"), (0.2, "eta 0m00s")])
def test_epoch_lines_give_the_time_left_in_hours_or_minutes(eta_seconds, shown):
    from ffrun.core.trainer import EpochResult
    from ffrun.run.callbacks import epoch_line
    line = epoch_line(EpochResult(1, 0, 2.0, 0), 3, acc_keys=[], ff_names=[], eta_seconds=eta_seconds)
    assert line == f"epoch 1/3  2.0s  {shown}"
    # the last epoch has nothing left to wait for
    assert epoch_line(EpochResult(3, 0, 2.0, 0), 3, acc_keys=[], ff_names=[], eta_seconds=eta_seconds) == "epoch 3/3  2.0s"


def test_curves_of_a_class_loss_run_draw_each_layers_training_and_evaluation_loss(tmp_path, monkeypatch):
    """A competitive run (cwc loss) logs <layer>/loss and <layer>/val_loss and no pos/neg goodness:
    its loss panel draws both per layer instead of staying empty."""
    import matplotlib.figure
    from ffrun.run.outputs import plot_curves

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    rows = [{"epoch": e, "conv1/loss": 2.0 / e, "conv1/val_loss": 2.1 / e, "conv2/loss": 1.0 / e,
             "conv2/val_loss": 1.2 / e, "classes/acc": 0.9 + e / 100} for e in (1, 2, 3)]
    plot_curves(rows, tmp_path / "curves.png")
    ax_loss = drawn[0].axes[1]
    assert sorted(line.get_label() for line in ax_loss.get_lines()) == [
        "conv1 evaluation", "conv1 training", "conv2 evaluation", "conv2 training"]
    assert list(ax_loss.get_lines()[1].get_ydata()) == pytest.approx([2.1, 1.05, 0.7])
    assert ax_loss.get_title().startswith("class loss per layer")
