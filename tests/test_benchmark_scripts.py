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
