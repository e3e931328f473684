"""Bad input and failures through the installed ``ffrun`` script: one line on stderr, no traceback,
the documented exit code, results.json ``failed`` with the reason, and nothing written before lost.

Each row of docs/reliability.md is a case here. They run the real console script (as a user would)
on the 8x8 digits or on small npz files made here, so the suite needs no download.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TINY = ["debug=tiny", "epochs=2", "readout_epochs=0", "units=16"]


def ffrun(args: list[str], cwd: Path, script: str = "ffrun") -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name(script)
    return subprocess.run([str(exe if exe.exists() else shutil.which(script)), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env={**os.environ})


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line a failure must print (and no traceback anywhere on the console)."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"exit {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def write_npz(path: Path, **change) -> Path:
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), y_train=np.arange(60, dtype=np.uint8) % 10,
                  x_test=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_test=np.arange(20, dtype=np.uint8) % 10)
    arrays.update(change)
    np.savez(path, **arrays)
    return path


# --- refused before Hydra makes a folder: exit 2, one line, nothing created -------------------
@pytest.mark.parametrize("args, message", [
    (["model.th_pos=nan"], "ffrun: model.th_pos must be a finite number or a list of them, got nan"),
    (["batch_size=0"], "ffrun: batch_size must be >= 1, got 0"),
    (["model.optimizer.class_name=Optimizer"], "ffrun: model.optimizer.class_name must be one of SGD, Adam"),
    (["splitting=bogus"], "ffrun: splitting=bogus: Invalid value 'bogus', expected one of [random, same, none]"),
    (["-m", "model.th_pos=0.1,nan"], "ffrun: model.th_pos must be a finite number or a list of them, got nan"),
    (["hydra.run.dir=/proc/ffrun-x"], "ffrun: cannot write the output folder /proc/ffrun-x: /proc is not writable"),
])
def test_refused_before_any_folder_is_made(tmp_path, args, message):
    proc = ffrun([*TINY, *args], tmp_path)
    assert proc.returncode == 2
    assert one_line(proc).startswith(message)
    assert not (tmp_path / "outputs").exists() and not Path("/proc/ffrun-x").exists()


# --- failing at run time: the run folder says failed and why ------------------------------
@pytest.mark.parametrize("args, code, reason", [
    # a NaN at run time (the kernel that makes it differs by CPU; the check does not)
    (["model.optimizer.learning_rate=1e38"], 1, r"^(dense|norm|softmax)\w*/\w+ (became nan|became inf|reached .* above max_loss=1e\+06).* in epoch 1"),
    # an exploding loss is a failure, not a completed run at chance accuracy
    (["model.optimizer.learning_rate=1e9"], 1, r"reached .* in epoch 1, above max_loss=1e\+06: training diverged"),
])
def test_divergence_fails_the_run(tmp_path, args, code, reason):
    import re
    run_dir = tmp_path / "run"
    proc = ffrun([*TINY, *args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == code
    line = one_line(proc)
    saved = results(run_dir)
    assert saved["status"] == "failed" and re.search(reason, saved["reason"]), saved["reason"]
    assert line == f"ffrun: {saved['reason']} ({run_dir})"
    assert saved["epochs_planned"] == 2 and saved["mode"] == "unsup"   # what was written before stays
    assert (run_dir / "metrics.csv").read_text().startswith("epoch,stage,")


@pytest.mark.parametrize("change, message", [
    ({"x_train": np.full((60, 8, 8), np.nan, np.float32)}, "x_train holds 3840 non-finite pixel value(s)"),
    ({"y_train": np.full(60, 42, np.int64)}, "y_train holds the label 42"),
    ({"y_test": -np.ones(20, np.int64)}, "y_test holds the label -1"),
    ({"y_train": np.zeros(60, np.float32)}, "y_train has dtype float32; labels must have an integer dtype"),
    ({"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.uint8)}, "x_test holds 0 images"),
    ("text", "is not an npz archive"),
])
def test_malformed_data_file_fails_the_run(tmp_path, change, message):
    path = tmp_path / "data.npz"
    if change == "text":
        path.write_text("x_train,y_train\n1,2\n")
    else:
        write_npz(path, **change)
    run_dir = tmp_path / "run"
    proc = ffrun([*TINY, "data=npz", f"data.path={path}", "data.val_size=10", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert message in line and str(path) in line and "allow_pickle" not in line
    assert results(run_dir)["status"] == "failed" and message in results(run_dir)["reason"]


# --- resume ------------------------------------------------------------------------------
def test_resume_of_a_missing_folder_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "such" / "run"
    proc = ffrun([f"resume={missing}"], tmp_path)
    assert proc.returncode == 2
    assert one_line(proc) == f"ffrun: cannot resume {missing}: it does not exist"
    assert not (tmp_path / "no").exists() and not (tmp_path / "outputs").exists()


def test_resume_of_a_folder_that_is_not_a_run_writes_nothing_into_it(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    proc = ffrun([f"resume={folder}"], tmp_path)
    assert proc.returncode == 2
    assert one_line(proc) == f"ffrun: cannot resume {folder}: it is not an ffrun run folder (no .hydra/config.yaml)"
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


def test_resuming_a_completed_run_keeps_its_history(tmp_path):
    run_dir = tmp_path / "run"
    assert ffrun([*TINY, f"hydra.run.dir={run_dir}"], tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = ffrun([f"resume={run_dir}"], tmp_path)
    assert proc.returncode == 0
    assert "is already complete (2 epochs); nothing was changed" in proc.stdout
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before                          # not a byte changed, no .hydra_resume/ added


# --- a full disk ------------------------------------------------------------------------
@pytest.fixture
def small_filesystem(tmp_path):
    """An 800 KB tmpfs: room for two checkpoints of the tiny net (290 KB each), not a third."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=800k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_ends_with_one_line_and_a_readable_checkpoint(tmp_path, small_filesystem):
    run_dir = small_filesystem / "run"
    proc = ffrun(["debug=tiny", "epochs=30", "readout_epochs=0", "checkpoint.every=1", f"hydra.run.dir={run_dir}"],
                 tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert "No space left on device" in line and "the latest complete checkpoint is ckpt-" in line
    kept = line.split("the latest complete checkpoint is ")[1].split()[0]
    assert not list((run_dir / "checkpoints").glob("*_temp*"))      # no half-written checkpoint left
    # the run folder, copied off the full disk, resumes from the checkpoint it names
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    resumed = ffrun([f"resume={copy}", "epochs=30"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from epoch {kept.removeprefix('ckpt-')}" in resumed.stdout
    assert results(copy)["status"] == "completed"
