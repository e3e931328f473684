"""Every preset composes and builds; bad values fail with one clear message."""
import shlex
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from ffrun.app.overrides import RENAMED_PRESETS
from ffrun.experiment.build import build_run
from ffrun.experiment.graph import expand_inputs
from ffrun.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
# the old names kept as aliases are checked in test_names.py
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith(tuple(RENAMED_PRESETS)))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_preset_header_gives_a_run_command_that_composes(name):
    """A preset's header says how to run it (``# Run: ffrun experiment=<its name> ...``), and that
    command passes the CLI's own check of its overrides as written (a renamed preset or key fails)."""
    from ffrun.app.overrides import override_problem
    header = []
    for line in (CONF / "experiment" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    commands = [shlex.split(line.split("# Run:", 1)[1]) for line in header if line.startswith("# Run:")]
    assert len(commands) == 1, f"{name}.yaml: its header needs one '# Run: ffrun experiment={name}' line"
    (command,) = commands
    assert command[:2] == ["ffrun", f"experiment={name}"], command
    assert override_problem(command[1:]) is None


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_one_epoch_on_digits(cfg_factory, tmp_path, name):
    """Every preset composes and trains for an epoch (narrow layers, the 8x8 digits)."""
    from ffrun.run import loop, outputs
    # one stage of one epoch: presets with their own stage windows (cwcomp_mnist) do not follow `epochs`
    cfg = cfg_factory([f"experiment={name}", "data=digits", "data.val_size=300", "epochs=1",
                       "readout_epochs=0", "units=32", "checkpoint.every=0", "tensorboard.enabled=false",
                       "schedule=[[all,1]]"])
    OmegaConf.resolve(cfg)
    results = loop.train(cfg, tmp_path, outputs.make_console())
    assert results["status"] == "completed" and results["epochs"] == 1
    assert results["best_val_acc"] is not None and results["test_acc"] is not None


def test_short_overrides_reach_the_model(cfg_factory):
    cfg = cfg_factory(["mode=sup", "units=2000", "batch_size=512", "epochs=5"])
    assert cfg.model.units == 2000 and cfg.batch_size == 512 and cfg.mode.name == "sup"
    assert cfg.schedule[0][1] == 5
    assert "goodness" in cfg.model.readouts


def test_rmwkwok_preset_values(cfg_factory):
    cfg = cfg_factory(["experiment=rmwkwok_r1_unsup_u2000"])
    assert (cfg.units, cfg.batch_size, cfg.epochs, cfg.readout_epochs) == (2000, 512, 200, 50)
    assert cfg.eval_on == "test" and cfg.model.th_pos == 0.1
    assert cfg.model.optimizer.learning_rate == pytest.approx(1e-4)
    assert list(cfg.schedule[1][0]) == ["softmax"] and cfg.schedule[1][1] == 50


def test_typo_in_override_is_rejected(cfg_factory):
    with pytest.raises(ConfigCompositionException, match="unitz"):
        cfg_factory(["unitz=5"])


@pytest.mark.parametrize("override, message", [
    ("units=abc", "units must be an integer or a list of them, got 'abc'"),
    ("num_layers=0", "num_layers must be >= 1, got 0"),
    ("model.goodness=median", "model.goodness must be one of sum, mean, got 'median'"),
    ("model.optimizer.class_name=Adamm", "model.optimizer.class_name must be one of SGD, Adam,"),
    ("model.norm=batch", "model.norm=batch: Invalid value 'batch', expected one of [l2, rms, none]"),
    ("eval_every=0", "eval_every must be >= 1, got 0"),
    ("model.readouts.softmax.type=linear",
     "model.readouts.softmax.type must be one of softmax, goodness, classes, got 'linear'"),
    # keys the chosen protocol (five_digits) does not read are checked all the same
    ("splitting=bogus", "splitting=bogus: Invalid value 'bogus', expected one of [random, same, none]"),
    ("pairing=both", "pairing=both: Invalid value 'both'"),
])
def test_bad_values_are_refused_in_one_line_before_a_run(override, message):
    from ffrun.app.overrides import override_problem
    problem = override_problem(["data=digits", override])
    assert problem is not None and problem.startswith(message), problem
    assert "\n" not in problem


def test_a_threshold_list_must_fit_the_layers(cfg_factory):
    cfg = cfg_factory(["data=digits", "model.th_pos=[0.1,0.2]"])
    with pytest.raises(ConfigError, match="model.th_pos has 2 values but the model has 4"):
        build_run(cfg)


def test_readout_wiring_is_declared_in_yaml(cfg_factory):
    cfg = cfg_factory(["data=digits", "model.readouts.softmax.inputs=[norm1,dense4]"])
    net = build_run(cfg).network
    assert [n.inputs for n in net.nodes if n.name == "softmax"] == [("norm1", "dense4")]
    cfg = cfg_factory(["data=digits", "model.readouts.softmax.inputs=[norm9]"])
    with pytest.raises(ConfigError, match="model.layers.softmax.inputs: 'norm9' is not a node"):
        build_run(cfg)


def test_expand_inputs():
    assert expand_inputs(["norm2.."], 4) == ["norm2", "norm3", "norm4"]
    assert expand_inputs(["dense2..", "input"], 1) == ["dense1", "input"]
