"""ffrun-eval reproduces a saved run's figures from its checkpoint."""
import json

import numpy as np
import pytest

from ffrun.app import evaluate
from ffrun.run import loop, outputs
from tests.conftest import colored_pixels, compose_config


@pytest.mark.slow
@pytest.mark.parametrize("overrides, readout", [
    (["epochs=4"], "softmax"),
    (["mode=sup", "protocol=wrong_label", "pairing=same_step", "epochs=3"], "goodness"),
])
def test_eval_matches_the_run_and_writes_confusion(tmp_path, overrides, readout):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_config(["debug=tiny", "readout_epochs=0", *overrides])
    # a saved run has its composed config in .hydra/, as Hydra writes it
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(__import__("omegaconf").OmegaConf.to_yaml(cfg))
    results = loop.train(cfg, run_dir, outputs.make_console())
    key = f"{readout}/acc"

    final = evaluate.evaluate_run(run_dir, outputs.make_console())
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["checkpoint_epoch"] == results["epochs"]
    assert saved["readouts"][readout]["val_acc"] == pytest.approx(results["readouts"][key]["final"], abs=1e-6)
    assert saved["readouts"][readout]["test_acc"] == pytest.approx(results["readouts"][key]["test_final"], abs=1e-6)
    m = np.array(final["readouts"][readout]["confusion"])
    assert np.trace(m) / m.sum() == pytest.approx(saved["readouts"][readout]["test_acc"], abs=1e-6)
    assert colored_pixels(run_dir / "confusion.png") > 1_000       # the matrices are drawn

    best = evaluate.evaluate_run(run_dir, outputs.make_console(), best=True)
    assert best["readouts"][readout]["test_acc"] == pytest.approx(results["readouts"][key]["test_at_best"], abs=1e-6)


def test_eval_cli_errors(tmp_path, capsys):
    assert evaluate.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    # a run folder whose training never saved a checkpoint
    from omegaconf import OmegaConf
    (tmp_path / "empty" / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(["debug=tiny"]), tmp_path / "empty" / ".hydra" / "config.yaml")
    assert evaluate.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0]
