"""Checkpoints: an interrupted and resumed run equals an uninterrupted one; bad checkpoints fail loudly."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffrun.run import loop, outputs
from ffrun.errors import CheckpointError
from ffrun.run.outputs import read_metrics
from tests.conftest import compose_config

TIMING = ("seconds", "samples_per_s")
BASE = ["debug=tiny", "epochs=5", "readout_epochs=2", "checkpoint.every=2"]


def _metrics_without_timing(run_dir: Path):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(run_dir / "metrics.csv")]


def _train(run_dir: Path, overrides, resume=False):
    run_dir.mkdir(exist_ok=True)
    cfg = compose_config([*BASE, *overrides])
    return loop.train(cfg, run_dir, outputs.make_console(), resume=resume)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["mode=sup", "protocol=wrong_label", "pairing=same_step"],
                                   ["mode=sup", "protocol=wrong_label", "pairing=same_step", "protocol.negatives=hard_batch",
                                    "+model.readouts.softmax={type: softmax, inputs: [norm2..], optimizer: {class_name: Adam, learning_rate: 1e-3}}"],
                                   # BatchNorm's running statistics and the augmentation's draws
                                   ["experiment=cwcomp_mnist", "data=digits", "data.val_size=300", "batch_size=64",
                                    "model.layers.conv1.filters=10", "model.layers.conv2.filters=10",
                                    "model.layers.conv3.filters=10", "model.layers.conv4.filters=20",
                                    "schedule=[[all,2],[[conv4,softmax],2]]", "data.augment.shift=1"]])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, extra):
    full = _train(tmp_path / "full", extra)
    part = _train(tmp_path / "part", [*extra, "stop_after_epoch=3"])
    assert part["status"] == "interrupted" and "ffrun resume=" in part["reason"]
    assert len(read_metrics(tmp_path / "part" / "metrics.csv")) == 3
    resumed = _train(tmp_path / "part", extra, resume=True)
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 3
    # exact equality: shuffles and negatives depend only on (seed, epoch), optimizer state is restored
    assert _metrics_without_timing(tmp_path / "part") == _metrics_without_timing(tmp_path / "full")
    for key in ("best_val_acc", "best_epoch", "test_acc", "test_acc_final"):
        assert resumed[key] == full[key], key


CWCOMP_SMALL = ["experiment=cwcomp_mnist", "data=digits", "data.val_size=300", "batch_size=64",
                "model.layers.conv1.filters=10", "model.layers.conv2.filters=10", "model.layers.conv3.filters=10",
                "model.layers.conv4.filters=20", "schedule=[[all,2],[[conv4,softmax],3]]"]


@pytest.mark.slow
@pytest.mark.parametrize("stop_in, extra", [(3, []), (4, []), (4, CWCOMP_SMALL)],
                         ids=["last-epoch-on-disk", "last-epoch-in-memory", "cwcomp-kept-features"])
def test_a_signal_inside_an_epoch_saves_the_last_finished_one_and_resume_equals_uninterrupted(
        tmp_path, monkeypatch, stop_in, extra):
    """SIGTERM at the second graph call of epoch ``stop_in``'s first pass: the run stops there, its
    checkpoint is the end of the epoch before (checkpoint.every=2: epoch 2 is on disk, epoch 3 only
    in memory, and epoch 4 has trained a batch or more), and a resume re-runs the unfinished epoch
    exactly. The cwcomp case stops a readout stage that trains on kept frozen outputs."""
    from ffrun.core.trainer import TrainMgr
    full = _train(tmp_path / "full", extra)
    check, sent = TrainMgr._check_stop, []

    def signal_inside(self, label, done, batches):
        if self.current_epoch == stop_in and done == 1 and not sent:
            sent.append(label)
            signal.raise_signal(signal.SIGTERM)
        return check(self, label, done, batches)

    monkeypatch.setattr(TrainMgr, "_check_stop", signal_inside)
    part = _train(tmp_path / "part", [*extra, "checkpoint.in_memory_after_s=0"])
    assert sent and part["status"] == "interrupted"
    assert f"SIGTERM inside epoch {stop_in} (its {sent[0]} pass at batch 1 of " in part["reason"]
    assert "which runs again on resume" in part["reason"] and "ffrun resume=" in part["reason"]
    assert [r["epoch"] for r in read_metrics(tmp_path / "part" / "metrics.csv")] == list(range(1, stop_in))
    index = (tmp_path / "part" / "checkpoints" / "checkpoint").read_text()
    assert f'model_checkpoint_path: "ckpt-{stop_in - 1}"' in index
    monkeypatch.undo()
    resumed = _train(tmp_path / "part", extra, resume=True)
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == stop_in - 1
    assert _metrics_without_timing(tmp_path / "part") == _metrics_without_timing(tmp_path / "full")
    for key in ("best_val_acc", "best_epoch", "test_acc", "test_acc_final"):
        assert resumed[key] == full[key], key


@pytest.mark.slow
def test_a_pass_computes_the_same_whatever_batches_each_graph_call_holds(tmp_path, monkeypatch):
    """One batch per call against calls that grow to the whole pass: the same curve."""
    from ffrun.core import trainer
    monkeypatch.setattr(trainer, "CALL_SECONDS", 0.0)
    _train(tmp_path / "one", ["epochs=3"])
    monkeypatch.setattr(trainer, "CALL_SECONDS", 1e9)
    _train(tmp_path / "all", ["epochs=3"])
    assert _metrics_without_timing(tmp_path / "one") == _metrics_without_timing(tmp_path / "all")


@pytest.mark.slow
def test_resume_drops_epochs_after_the_checkpoint(tmp_path):
    _train(tmp_path / "run", ["stop_after_epoch=3", "checkpoint.every=2"])
    # a crash after epoch 3's row but before its checkpoint: pretend the last checkpoint is epoch 2
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n')
    resumed = _train(tmp_path / "run", [], resume=True)
    assert resumed["resumed_from_epoch"] == 2
    assert [r["epoch"] for r in read_metrics(tmp_path / "run" / "metrics.csv")] == list(range(1, 8))


@pytest.mark.slow
def test_corrupt_checkpoint_fails_loudly(tmp_path):
    _train(tmp_path / "run", ["stop_after_epoch=2"])
    for f in (tmp_path / "run" / "checkpoints").glob("ckpt-2.data*"):
        f.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or does not match"):
        _train(tmp_path / "run", [], resume=True)


@pytest.mark.slow
def test_mismatched_architecture_fails_loudly(tmp_path):
    _train(tmp_path / "run", ["stop_after_epoch=2"])
    with pytest.raises(CheckpointError, match="does not match"):
        _train(tmp_path / "run", ["units=32"], resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _train(tmp_path / "fresh", [], resume=True)


@pytest.mark.slow
def test_sigint_checkpoints_and_resume_finishes(tmp_path):
    """A real Ctrl-C to the installed script, then ``ffrun resume=<run>``."""
    ffrun = str(Path(sys.executable).parent / "ffrun")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([ffrun, "debug=tiny", "epochs=400", "readout_epochs=0", "checkpoint.every=0",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run_dir / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted"
    assert f"ffrun resume={run_dir}" in out
    done = len(read_metrics(run_dir / "metrics.csv"))
    assert 3 <= done < 400
    assert list((run_dir / "checkpoints").glob(f"ckpt-{done}.index"))
    proc = subprocess.run([ffrun, f"resume={run_dir}", "stop_after_epoch=" + str(done + 2)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]     # a planned stop is no error
    assert len(read_metrics(run_dir / "metrics.csv")) == done + 2
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / ".hydra_resume").exists()


@pytest.mark.slow
def test_a_finished_run_extends_to_more_epochs_exactly(tmp_path):
    """`ffrun resume=<run> epochs=N` continues a completed run as if it had been planned for N."""
    from omegaconf import OmegaConf

    from ffrun.run.resume import config_for_resume
    from ffrun.errors import ConfigError
    plan = ["readout_epochs=0"]
    full = _train(tmp_path / "full", [*plan, "epochs=5"])
    short = _train(tmp_path / "short", [*plan, "epochs=3"])
    assert short["status"] == "completed" and short["epochs"] == 3
    (tmp_path / "short" / ".hydra").mkdir()
    OmegaConf.save(compose_config([*BASE, *plan, "epochs=3"]), tmp_path / "short" / ".hydra" / "config.yaml")
    now = compose_config([*BASE, "epochs=5"])
    cfg = config_for_resume(tmp_path / "short", now, ["resume=x", "epochs=5"])
    assert cfg.epochs == 5 and cfg.readout_epochs == 0
    extended = loop.train(cfg, tmp_path / "short", outputs.make_console(), resume=True)
    assert extended["status"] == "completed" and extended["resumed_from_epoch"] == 3
    assert _metrics_without_timing(tmp_path / "short") == _metrics_without_timing(tmp_path / "full")
    assert extended["test_acc"] == full["test_acc"]
    # the folder now says it was planned for 5 (the first plan is kept beside it), so a later plain
    # resume finishes the extended plan; a planned cool-down cannot be stretched
    assert config_for_resume(tmp_path / "short", now, ["resume=x"]).epochs == 5
    assert OmegaConf.load(tmp_path / "short" / ".hydra" / "config.planned.yaml").epochs == 3
    OmegaConf.save(compose_config([*BASE, *plan, "epochs=3", "lr_schedule=linear_cooldown"]),
                   tmp_path / "short" / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="lr_schedule=constant"):
        config_for_resume(tmp_path / "short", now, ["resume=x", "epochs=5"])


@pytest.mark.slow
def test_a_finished_run_gets_a_readout_only_stage_exactly(tmp_path):
    """`ffrun resume=<run> readout_epochs=N` trains the readout alone after a finished FF run, with a
    cool-down of its own, as if the stage had been planned from the start."""
    from omegaconf import OmegaConf

    from ffrun.run.resume import config_for_resume
    from ffrun.errors import ConfigError
    plan = ["epochs=6", "lr_schedule=linear_cooldown"]   # both stages decay
    full = _train(tmp_path / "full", [*plan, "readout_epochs=6"])
    _train(tmp_path / "ff_only", [*plan, "readout_epochs=0"])
    (tmp_path / "ff_only" / ".hydra").mkdir()
    OmegaConf.save(compose_config([*BASE, *plan, "readout_epochs=0"]), tmp_path / "ff_only" / ".hydra" / "config.yaml")
    cfg = config_for_resume(tmp_path / "ff_only", compose_config([*BASE, "readout_epochs=6"]),
                            ["resume=x", "readout_epochs=6"])
    extended = loop.train(cfg, tmp_path / "ff_only", outputs.make_console(), resume=True)
    assert extended["status"] == "completed" and extended["epochs"] == 12
    assert _metrics_without_timing(tmp_path / "ff_only") == _metrics_without_timing(tmp_path / "full")
    assert extended["test_acc"] == full["test_acc"]
    # a planned readout stage with a cool-down cannot be stretched, nor shrunk; sup has none
    with pytest.raises(ConfigError, match="can only grow"):
        config_for_resume(tmp_path / "ff_only", compose_config([*BASE, "readout_epochs=3"]), ["resume=x", "readout_epochs=3"])
    OmegaConf.save(compose_config([*BASE, *plan, "mode=sup", "protocol=wrong_label"]),
                   tmp_path / "ff_only" / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="no readout-only stage"):
        config_for_resume(tmp_path / "ff_only", compose_config([*BASE, "readout_epochs=4"]), ["resume=x", "readout_epochs=4"])


def test_resume_says_which_overrides_it_ignores(tmp_path, caplog):
    from omegaconf import OmegaConf

    from ffrun.run.resume import config_for_resume
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(compose_config(BASE), tmp_path / ".hydra" / "config.yaml")
    with caplog.at_level("WARNING", logger="ffrun"):
        cfg = config_for_resume(tmp_path, compose_config([*BASE, "units=8"]), ["resume=x", "units=8", "progress=false"])
    assert cfg.units == compose_config(BASE).units
    assert "ignored: units=8" in caplog.text and "progress" not in caplog.text
