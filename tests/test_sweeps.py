"""Sweeps through the installed ``ffrun`` console script, one subprocess per test, on the 8x8 digits.

These check what in-process tests cannot: the launcher plugins start real jobs from the installed
script, every job leaves its results.json, and the SweepReport callback registered in
conf/config.yaml writes summary.csv into the sweep folder once all jobs are back.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

pytestmark = pytest.mark.slow      # every test runs the installed script

TINY = ["debug=tiny", "epochs=1", "readout_epochs=1"]
# Generous: the machine's cores may be busy with other training; a hung launcher still ends the test
SUBPROCESS_TIMEOUT_S = 600


def ffrun_script() -> str:
    # The venv's own script first: PATH may hold another ffrun (or none when pytest is run by path)
    candidate = Path(sys.executable).with_name("ffrun")
    script = str(candidate) if candidate.exists() else shutil.which("ffrun")
    if script is None:
        pytest.skip("the ffrun console script is not installed")
    return script


def run_sweep(tmp_path: Path, overrides: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [ffrun_script(), "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,   # anything written relative to the cwd stays in the test's folder
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    return proc, sweep_dir


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def results_of(sweep_dir: Path, job: int) -> dict:
    path = sweep_dir / str(job) / "results.json"
    assert path.exists(), f"job {job} wrote no results.json"
    return json.loads(path.read_text())


def assert_two_completed_jobs_and_summary(proc: subprocess.CompletedProcess, sweep_dir: Path) -> None:
    assert proc.returncode == 0, explain(proc)
    for job in (0, 1):
        assert results_of(sweep_dir, job)["status"] == "completed", explain(proc)
    summary = sweep_dir / "summary.csv"
    assert summary.exists(), ("no summary.csv: is ffrun.app.hydra_callbacks.SweepReport registered under "
                              "hydra.callbacks in conf/config.yaml?\n" + explain(proc))
    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["override.units"] for r in rows) == ["16", "32"]
    assert {r["status"] for r in rows} == {"completed"}
    assert (sweep_dir / "summary.png").exists()


def test_joblib_sweep(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc, sweep_dir = run_sweep(tmp_path, ["units=16,32", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert_two_completed_jobs_and_summary(proc, sweep_dir)


def test_submitit_local_sweep(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # timeout_min: the default (60) would let a hung tiny job block the suite for an hour;
    # one CPU and no GPU per job, since local jobs only share this machine's cores
    proc, sweep_dir = run_sweep(tmp_path, [
        "units=16,32", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=0"])
    assert_two_completed_jobs_and_summary(proc, sweep_dir)
    assert (sweep_dir / ".submitit").is_dir()   # the jobs really went through submitit


def test_basic_sweep_with_a_failing_job(tmp_path: Path) -> None:
    """A job that diverges (NaN at run time) ends only itself: it records the failure and the sweep
    goes on (the basic launcher: job 0 still completes); at the end the sweep says in one line how
    many jobs failed and exits 1."""
    proc, sweep_dir = run_sweep(tmp_path, ["units=16", "model.optimizer.learning_rate=1e-3,1e38"])

    assert proc.returncode == 1, explain(proc)
    lines = proc.stderr.strip().splitlines()     # the failed job's one line, then the sweep's
    assert len(lines) == 2 and "Traceback" not in proc.stderr, explain(proc)
    assert lines[1] == f"ffrun: 1 of 2 sweep jobs failed (runs 1); see {sweep_dir / 'summary.csv'}"
    assert results_of(sweep_dir, 0)["status"] == "completed"
    failed = results_of(sweep_dir, 1)
    assert failed["status"] == "failed"
    assert "epoch 1" in failed["reason"] and failed["reason"].startswith(("dense", "norm", "softmax"))

    # The report reads real run folders as the runner and Hydra leave them
    from ffrun.app.summary import write_report
    rows = write_report(sweep_dir, Console(file=io.StringIO(), width=200))
    assert [(r["run"], r["status"]) for r in rows] == [("0", "completed"), ("1", "failed")]
    assert rows[-1]["override.model.optimizer.learning_rate"] == "1e+38"   # as Hydra records it
    assert rows[0]["best_val_acc"] is not None and rows[0]["primary"] == "softmax/acc"


def test_a_sweep_with_a_bad_value_stops_before_its_first_job(tmp_path: Path) -> None:
    """Every value of every sweep is checked before Hydra starts: no job runs, no folder is made."""
    proc, sweep_dir = run_sweep(tmp_path, ["model.goodness=sum,bogus"])
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().splitlines() == [
        "ffrun: model.goodness must be one of sum, mean, got 'bogus'"]
    assert not sweep_dir.exists()
