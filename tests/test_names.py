"""Names that say what they are: presets named after whose result they reproduce (the old names
still compose, for one release), each readout's test accuracy at its own best epoch, and the
config reference generated from the schema."""
from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from ffrun.app import summary
from ffrun.app.overrides import RENAMED_PRESETS, renamed_preset_notes
from ffrun.experiment.config_doc import render
from ffrun.run.outputs import read_metrics
from ffrun.run.results import figure_on_test_at
from tests import test_report as report_runs

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "conf" / "experiment"
OLD_NAMES = sorted(p.stem for p in PRESETS.glob("*.yaml") if p.stem.startswith(tuple(RENAMED_PRESETS)))


def _new_name(old: str) -> str:
    prefix = next(o for o in RENAMED_PRESETS if old.startswith(o))
    return RENAMED_PRESETS[prefix] + old[len(prefix):]


def test_every_renamed_preset_keeps_its_old_name_and_no_other():
    renamed = sorted(p.stem for p in PRESETS.glob("*.yaml") if p.stem.startswith(tuple(RENAMED_PRESETS.values())))
    assert len(renamed) == 11
    assert [_new_name(old) for old in OLD_NAMES] == renamed


@pytest.mark.parametrize("old", OLD_NAMES)
def test_an_old_preset_name_composes_to_its_new_preset(old: str, cfg_factory):
    alias = yaml.safe_load((PRESETS / f"{old}.yaml").read_text())
    assert alias["defaults"] == [_new_name(old), "_self_"]      # nothing of its own
    assert OmegaConf.to_yaml(cfg_factory([f"experiment={old}"])) == \
        OmegaConf.to_yaml(cfg_factory([f"experiment={_new_name(old)}"]))


def test_an_old_preset_name_gets_one_line_naming_the_new_one():
    assert renamed_preset_notes(["experiment=seed_r1_sup_basic", "units=3"]) == \
        ["experiment=seed_r1_sup_basic is an old name, kept for one release: use experiment=rmwkwok_r1_sup_basic"]
    notes = renamed_preset_notes(["-m", "experiment=seed_r2_sup_none,paper_sup,seed_r2_sup_random"])
    assert [n.split(": use ")[1] for n in notes] == ["experiment=rmwkwok_r2_sup_none",
                                                     "experiment=rmwkwok_r2_sup_random"]
    assert renamed_preset_notes(["experiment=rmwkwok_r1_sup_basic", "seed=3", "protocol.route_seed=1"]) == []


@pytest.mark.slow
def test_the_script_names_the_new_preset_and_still_runs_the_old_one():
    """`ffrun experiment=<old name> --cfg job` prints the composed config (no run, no folder) after
    one stderr line naming the new preset."""
    ffrun = Path(sys.executable).with_name("ffrun")
    done = subprocess.run([str(ffrun), "experiment=seed_r1_unsup_u2000", "--cfg", "job"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ffrun: experiment=seed_r1_unsup_u2000 is an old name, kept for one release: " \
           "use experiment=rmwkwok_r1_unsup_u2000" in done.stderr.splitlines()
    cfg = yaml.safe_load(done.stdout)
    assert (cfg["units"], cfg["batch_size"], cfg["epochs"]) == (2000, 512, 200)


def test_the_best_test_epoch_figures_under_their_names_and_their_old_ones(tmp_path: Path):
    """seeds.csv names the best-test-epoch figures test_best_epoch_*, and `--against` still takes
    their old names seed_style_ff / seed_style_all for one release."""
    for seed, best in enumerate([0.95, 0.97]):
        ov = [f"seed={seed}"]
        results = report_runs.completed(0.9, [0.9, 0.85], ov)
        results["readouts"] = {"softmax/acc": {"test_best_by_stage": [{"stage": 0, "best": best, "epoch": 1},
                                                                      {"stage": 1, "best": best + 0.01, "epoch": 2}]}}
        report_runs.make_run(tmp_path / str(seed), ov, results, [0.9, 0.85])
    for against, figure in (("seed_style_ff", "test_best_epoch_ff"), ("seed_style_all", "test_best_epoch_all"),
                            ("test_best_epoch_ff", "test_best_epoch_ff")):
        assert summary.main([str(tmp_path), "--reference", "96", "--against", against]) == 0
        (row,) = csv.DictReader(open(tmp_path / "seeds.csv"))
        assert row["reference_figure"] == figure and row["reference_place"] == "inside"
    assert float(row["test_best_epoch_ff_mean"]) == pytest.approx(0.96)
    assert float(row["test_best_epoch_all_mean"]) == pytest.approx(0.97)


def test_a_readouts_test_figure_at_an_epoch_comes_from_the_column_of_that_set():
    rows = [{"epoch": 1.0, "a/acc": 0.5, "test/a/acc": 0.4}, {"epoch": 2.0, "a/acc": 0.6}]
    assert figure_on_test_at(rows, "a/acc", 1, "validation") == 0.4
    assert figure_on_test_at(rows, "a/acc", 2, "validation") is None   # not tracked at that epoch
    assert figure_on_test_at(rows, "a/acc", 2, "test") == 0.6          # eval_on=test: its own column
    assert figure_on_test_at(rows, "a/acc", None, "validation") is None


def test_each_readouts_test_at_best_is_at_its_own_best_epoch(train_tiny):
    """Two readouts that peak at different epochs: each one's test_at_best is its own tracked test
    figure at its own best_epoch, not the figure at the primary readout's best epoch."""
    softmax = "{type: softmax, inputs: [norm2..], optimizer: {class_name: Adam, learning_rate: 1e-3}}"
    results, run_dir = train_tiny(["mode=sup", "track_test=true", "epochs=6", f"+model.readouts.softmax={softmax}"])
    rows = {int(r["epoch"]): r for r in read_metrics(run_dir / "metrics.csv")}
    readouts = results["readouts"]
    assert results["primary"] == "goodness/acc"
    # what makes the check tell: on this seed the readouts peak apart
    assert readouts["goodness/acc"]["best_epoch"] != readouts["softmax/acc"]["best_epoch"]
    for key, readout in readouts.items():
        assert readout["test_at_best"] == pytest.approx(rows[readout["best_epoch"]][f"test/{key}"], abs=1e-5)
    assert results["test_acc"] == readouts["goodness/acc"]["test_at_best"]


def test_a_best_epoch_that_is_the_last_is_tested_once(train_tiny, caplog):
    """When validation picks the last epoch, its weights are the final ones: one test pass (minutes on
    a deep net), whose figure is both test_final and test_at_best."""
    with caplog.at_level(logging.INFO, logger="ffrun"):
        results, run_dir = train_tiny(["mode=sup", "track_test=true", "epochs=1"])
    primary = results["primary"]
    readout = results["readouts"][primary]
    assert readout["best_epoch"] == 1
    assert readout["test_at_best"] == readout["test_final"] == results["test_acc"]
    assert readout["test_at_best"] == pytest.approx(read_metrics(run_dir / "metrics.csv")[-1][f"test/{primary}"], abs=1e-5)
    messages = [record.getMessage() for record in caplog.records]
    assert "testing the final weights on the test set" in messages
    assert not [m for m in messages if "(the best on validation)" in m]


def test_the_config_reference_is_up_to_date():
    assert (REPO / "docs" / "config.md").read_text() == render(), \
        "docs/config.md is out of date: python -m ffrun.experiment.config_doc --out docs/config.md"


def test_the_config_reference_has_every_key_with_its_choices_and_range(cfg_factory):
    keys: list[str] = []

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            keys.append(prefix + key)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and prefix + key != "model.readouts":
                walk(child, f"{prefix}{key}.")
    walk(cfg_factory([]), "")
    text = render()
    # a key is a row of a table; a group of keys (data, model.overlay, ...) heads its own table
    assert [k for k in keys if f"| `{k}` |" not in text and f"## `{k}`" not in text and k != "protocol"] == []
    for name in ("split", "wrong_label", "hybrid", "competitive"):
        assert f"## `protocol={name}`" in text
    # the choices, the ranges and the defaults, as the schema and conf/ have them
    assert "| `splitting` | choice | `random` | random \\| same \\| none |" in text
    assert "| `batch_size` | int | `512` | must be >= 1 |" in text
    assert "| `mode.dropout` | float | `0.0` | must be in [0, 1) |" in text
    assert "| `model.units` | any | `${units}` | must be >= 1;" in text
    assert "| `protocol.blur_steps` | int | `6` | must be >= 0 |" in text
