"""Short real runs on the 8x8 digits: they learn and leave every output behind."""
import json

import pytest

from ffrun.reporting import read_metrics


# unsup: five classes (chance 20%); sup with wrong-label negatives: ten classes (chance 10%).
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
    assert (run_dir / "curves.png").stat().st_size > 10_000


def test_nan_loss_fails_cleanly_and_keeps_metrics(train_tiny):
    results, run_dir = train_tiny(["model.th_pos=[0.1,0.1,nan,0.1]"])
    assert results["status"] == "failed"
    assert "dense3" in results["reason"]
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "failed" and "dense3" in saved["reason"]
    assert (run_dir / "metrics.csv").exists()


def test_seed_style_eval_on_test(train_tiny):
    results, _ = train_tiny(["eval_on=test", "data.val_size=0", "epochs=1", "readout_epochs=0"])
    assert results["val_set"] == "test"


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


def test_readout_in_the_pair_step_learns_and_leaves_the_ff_layers_alone(cfg_factory, tmp_path):
    """readout_step=same_step (Hinton's code: the neutral-label softmax trains in the FF step)
    learns the readout and trains the FF layers exactly as the separate readout pass does."""
    from ffrun import reporting, runner
    results = {}
    for step in ("separate", "same_step"):
        cfg = cfg_factory(["experiment=paper_small", "data=digits", "data.val_size=300", "epochs=10",
                           "units=64", "batch_size=32", "checkpoint.every=0", "tensorboard.enabled=false",
                           f"readout_step={step}"])
        (tmp_path / step).mkdir()
        results[step] = runner.train(cfg, tmp_path / step, reporting.make_console())
        assert results[step]["status"] == "completed"
    fused, separate = results["same_step"]["readouts"], results["separate"]["readouts"]
    assert fused["softmax/acc"]["best"] > 3 * 0.1
    assert fused["goodness/acc"]["final"] == pytest.approx(separate["goodness/acc"]["final"], abs=0.01)
