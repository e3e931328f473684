"""The helper scripts in benchmarks/ run (tiny sizes; their timings are not asserted)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow      # every test runs a script in a subprocess

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_pass_breakdown_times_every_pass():
    out = _run("pass_breakdown.py", "debug=tiny", "mode=sup", "protocol=wrong_label")
    for label in ("train pos", "train neg", "val all labels"):
        assert label in out, out


def test_optimizer_update_prints_each_kernel():
    out = _run("optimizer_update.py", "64")
    assert "64 x 64" in out and "Adam" in out and "weight decay" in out, out


def test_pass_breakdown_train_only_skips_evaluation():
    out = _run("pass_breakdown.py", "--train-only", "debug=tiny", "mode=sup", "protocol=wrong_label")
    assert "train pos" in out and "val" not in out.split("seconds per pass")[-1], out


def test_peak_memory_reports_a_preset_run_in_its_own_process(tmp_path):
    """On the 8x8 digits with 16 units (the real figures need full MNIST): the run's own peak."""
    import json
    out = _run("peak_memory.py", "--presets", "paper_small", "--epochs", "1", "data=digits", "data.val_size=300",
               "units=16", "--out", str(tmp_path / "mem.json"))
    (row,) = json.loads((tmp_path / "mem.json").read_text())["rows"]
    assert row["preset"] == "paper_small" and row["status"] == "completed" and row["peak_memory_mb"] > 100, row
    assert "paper_small" in out and "ok" in out


def test_peak_memory_exits_1_when_a_preset_is_over_the_limit_or_fails(monkeypatch, capsys):
    module = _load("peak_memory.py")
    peaks = {"a": 1500.0, "b": 2500.0, "c": None}
    monkeypatch.setattr(module, "measure", lambda preset, *args: {
        "preset": preset, "status": "failed" if peaks[preset] is None else "completed", "reason": "boom",
        "peak_memory_mb": peaks[preset], "wall_seconds": 1.0})
    assert module.main(["--presets", "a", "--limit-mb", "2000"]) == 0
    assert module.main(["--presets", "a,b", "--limit-mb", "2000"]) == 1
    assert module.main(["--presets", "c"]) == 1
    out = capsys.readouterr().out
    assert "b " in out and "OVER" in out and "boom" in out


def _load(script: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(script[:-3], BENCH / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_memory_finds_the_4x2000_presets():
    found = _load("peak_memory.py").presets_4x2000()
    assert {"paper_sup", "paper_unsup", "rmwkwok_r2_unsup_random", "bp_mlp"} <= set(found)
    assert "paper_small" not in found and "cwcomp_mnist" not in found
    assert "seed_r2_unsup_random" not in found          # an old name: its preset is measured once


def test_pass_breakdown_compares_two_values_in_one_process():
    out = _run("pass_breakdown.py", "--compare", "model.xla=false,true", "--rounds", "2", "debug=tiny", "mode=sup",
               "protocol=wrong_label", "pairing=same_step")
    assert "model.xla=false" in out and "model.xla=true" in out and "alternated, 2 rounds" in out, out


def test_pass_breakdown_floor_times_the_matmuls_with_and_without_the_real_updates():
    """The floor's update loop runs each layer's own optimizer once per step of the pass (warm-up
    plus every round), so its time is the real update's, not a skipped one."""
    module = _load("pass_breakdown.py")
    out = module.floor(["debug=tiny", "mode=sup", "protocol=wrong_label", "pairing=same_step"], rounds=2)
    assert set(out["seconds"]) == {"matmuls", "matmuls+update", "real pass"}
    assert all(len(ts) == 2 and min(ts) > 0 for ts in out["seconds"].values())
    assert out["updates"] and all(n == 3 * out["steps"] for n in out["updates"].values()), out


def _write_metrics(run_dir: Path, rows: list[dict[str, str]]) -> None:
    import csv
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "goodness/acc", "softmax/acc"])
        writer.writeheader()
        writer.writerows(rows)


def test_plot_symba_threshold_reads_the_evaluated_epochs_and_draws_both_losses(tmp_path):
    runs = tmp_path / "runs"
    for loss in ("threshold", "symba"):
        for seed in (0, 1, 2):
            _write_metrics(runs / f"mlp_{loss}_e10_s{seed}", [
                {"epoch": "1", "goodness/acc": "", "softmax/acc": ""},          # not an evaluation epoch
                {"epoch": "2", "goodness/acc": f"0.9{seed}", "softmax/acc": "0.95"},
                {"epoch": "4", "goodness/acc": "0.96", "softmax/acc": f"0.9{seed + 6}"}])
    curve = _load("plot_symba_threshold.py").validation_curve(runs / "mlp_symba_e10_s1", "goodness/acc")
    assert curve == {2: 91.0, 4: 96.0}
    out = tmp_path / "curves.png"
    _run("plot_symba_threshold.py", str(runs), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_bn_recalibration_recomputes_every_block_and_leaves_the_run_as_it_was(tmp_path):
    """A tiny CwComp run on the 8x8 digits (two epochs, narrow blocks), then the script on it."""
    import hashlib
    run = tmp_path / "run"
    proc = subprocess.run(
        ["ffrun", "experiment=cwcomp_mnist", "data=digits", "data.val_size=300", "batch_size=64",
         "schedule=[[all,1],[[softmax],1]]", "model.layers.conv1.filters=10", "model.layers.conv2.filters=20",
         "model.layers.conv3.filters=10", "model.layers.conv4.filters=20", "tensorboard.enabled=false",
         "progress=false", f"hydra.run.dir={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def digests() -> dict[str, str]:
        return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(run.rglob("*")) if p.is_file()}
    before = digests()
    out = _run("bn_recalibration.py", str(run))
    assert "checkpoint epoch 2" in out, out
    for block in ("conv1", "conv2", "conv3", "conv4"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{block} old mean/var"))
        assert all(np.isfinite(float(v)) for v in line.split()[3:5] + line.split()[6:8]), line
        assert f"after recalibrating {block} {{" in out and "'test/classes/acc'" in out, out
    assert digests() == before


def test_conv_breakdown_times_each_part_of_each_block(tmp_path):
    """CwComp's four blocks on the 8x8 digits: every part of every block timed, and the JSON agrees."""
    import json
    out = _run("conv_breakdown.py", "--rounds", "1", "--batches", "1", "--variants", "--out", str(tmp_path / "b.json"),
               "experiment=cwcomp_mnist", "data=digits", "data.val_size=300")
    result = json.loads((tmp_path / "b.json").read_text())
    assert [r["block"] for r in result["blocks"]] == ["conv1", "conv2", "conv3", "conv4"]
    for row in result["blocks"]:
        assert all(row["ms_per_batch"][part] > 0 for part in ("forward", "kernel_grad", "elementwise", "update",
                                                               "step_fused", "step_keras", "step_fused_xla")), row
    grouped = {r["block"] for r in result["blocks"] if {"fwd_kgrad_block_diagonal", "fwd_kgrad_split"} <= set(r["ms_per_batch"])}
    assert grouped == {"conv2", "conv4"}                       # the preset's grouped blocks, and only they
    pooled = {r["block"] for r in result["blocks"] if "step_fused_pool_last" in r["ms_per_batch"]}
    assert pooled == {"conv2", "conv4"}                        # the blocks with a max pool, and only they
    assert all("elementwise_xla" in r["ms_per_batch"] for r in result["blocks"])
    assert "conv4" in out and "fused step / Keras-tape step" in out and "block-diagonal" in out, out


def test_adam_epsilon_step_ratio_against_a_hand_computed_step():
    """Keras' step with eps 1e-7 against PyTorch's with 1e-8, written out for one weight:
    v = 4e-12 after t = 10 steps of beta_2 = 0.999."""
    ratio = _load("adam_epsilon.py").step_ratio(np.array([4e-12]), 10, 0.999, 1e-7, 1e-8)
    c = (1 - 0.999 ** 10) ** 0.5
    keras_step = c / (2e-6 + 1e-7)                    # lr * sqrt(1 - beta_2^t) * m / (sqrt(v) + eps), lr * m = 1
    torch_step = 1 / (2e-6 / c + 1e-8)                # lr * m / (sqrt(v_hat) + eps)
    assert ratio[0] == pytest.approx(keras_step / torch_step, rel=1e-12)
    assert _load("adam_epsilon.py").step_ratio(np.array([1.0]), 1000, 0.999, 1e-7, 1e-8)[0] == pytest.approx(1, abs=1e-6)


def test_adam_epsilon_reads_every_layers_second_moments_and_leaves_the_run_as_it_was(tmp_path):
    """A one-epoch DeeperForward Tiny run on the 8x8 digits (narrow layers, AdamW), then the script."""
    import hashlib
    run = tmp_path / "run"
    proc = subprocess.run(
        ["ffrun", "experiment=deeperforward_tiny_mnist", "data=digits", "data.val_size=300", "epochs=1",
         "model.layers.conv1.filters=10", "model.layers.conv2.filters=20", "model.layers.conv3.filters=10",
         "model.layers.conv4.filters=10", "tensorboard.enabled=false", "progress=false", f"hydra.run.dir={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}
    out = _run("adam_epsilon.py", str(run))
    assert "checkpoint epoch 1" in out, out
    import json
    import math
    steps = math.ceil(json.loads((run / "results.json").read_text())["data"]["train_pos"] / 128)   # one epoch
    for layer in ("conv1", "conv2", "conv3", "conv4"):
        fields = next(ln for ln in out.splitlines() if ln.startswith(layer)).split()
        assert fields[1] == "AdamW" and int(fields[2]) == steps and float(fields[3]) == 1e-7, fields
        p1, p10, p50 = float(fields[4]), float(fields[6]), float(fields[8])
        assert 0 < p1 <= p10 <= p50, fields
        assert 0 < float(fields[9]) <= 1, fields        # a larger epsilon never takes a larger step
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()} == before
