"""The helper scripts in benchmarks/ run (tiny sizes; their timings are not asserted)."""
import subprocess
import sys
from pathlib import Path

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


def test_peak_memory_reports_each_preset_and_fails_above_the_limit(tmp_path):
    """Run on the 8x8 digits with 16 units (the real figures need full MNIST): one row per preset
    with the run's own peak, and exit status 1 once a peak is above --limit-mb."""
    import json
    args = ["--presets", "paper_small,bp_mlp", "--epochs", "1", "data=digits", "data.val_size=300", "units=16"]
    out = _run("peak_memory.py", *args, "--out", str(tmp_path / "mem.json"))
    rows = json.loads((tmp_path / "mem.json").read_text())["rows"]
    assert [r["preset"] for r in rows] == ["paper_small", "bp_mlp"]
    assert all(r["status"] == "completed" and r["peak_memory_mb"] > 100 for r in rows), rows
    assert "paper_small" in out and "ok" in out
    over = ["--presets", "paper_small", *args[2:]]
    proc = subprocess.run([sys.executable, str(BENCH / "peak_memory.py"), *over, "--limit-mb", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "OVER" in proc.stdout


def test_peak_memory_finds_the_4x2000_presets():
    import importlib.util
    spec = importlib.util.spec_from_file_location("peak_memory", BENCH / "peak_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = module.presets_4x2000()
    assert {"paper_sup", "paper_unsup", "seed_r2_unsup_random", "bp_mlp"} <= set(found)
    assert "paper_small" not in found and "cwcomp_mnist" not in found


def test_pass_breakdown_compares_two_values_in_one_process():
    out = _run("pass_breakdown.py", "--compare", "model.xla=false,true", "--rounds", "2", "debug=tiny", "mode=sup",
               "protocol=wrong_label", "pairing=same_step")
    assert "model.xla=false" in out and "model.xla=true" in out and "alternated, 2 rounds" in out, out
