"""Run folders and processes through the installed ``ffrun``: a folder that holds a run is never
written by a new run, one process at a time owns a run folder, a resume either goes ahead or leaves
the folder byte-identical, and signals, a full disk, the help pages and the exit codes behave as
docs/reliability.md says. Each case checks the exit code, the one stderr line, that no traceback
shows, and that nothing of an earlier run changed (the hashes of all its files).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffrun.app.overrides import RENAMED_PRESETS
from ffrun.run.outputs import read_metrics

from tests.test_reliability import TINY, ffrun, one_line, results, small_filesystem  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: a run that stops where it is told, resumable: checkpoints ckpt-1 and ckpt-2, planned for 3 epochs
STOPPED = ["debug=tiny", "epochs=3", "readout_epochs=0", "units=16", "checkpoint.every=1", "stop_after_epoch=2"]


def hashes(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the hash of its bytes: a changed, added or removed file shows."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr and "KeyboardInterrupt" not in proc.stderr


def script(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe if exe.exists() else shutil.which(name))


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    """A completed 2-epoch run, made once; tests copy it before they touch it."""
    folder = tmp_path_factory.mktemp("done")
    proc = ffrun([*TINY, f"hydra.run.dir={folder / 'run'}"], folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder / "run"


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run stopped by ``stop_after_epoch=2`` of 3, made once, and the process that made it."""
    folder = tmp_path_factory.mktemp("stopped")
    proc = ffrun([*STOPPED, f"hydra.run.dir={folder / 'run'}"], folder)
    return folder / "run", proc


def copy_of(run: Path, tmp_path: Path, name: str = "run") -> Path:
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


# --- a folder that holds a run is never written by a new run ---------------------------------
@pytest.mark.parametrize("how", ["run_dir", "empty_run_dir_in_the_run", "sweep_dir"])
def test_a_new_run_in_a_folder_that_holds_a_run_is_refused(done_run, tmp_path, how):
    if how == "sweep_dir":
        (tmp_path / "sweep").mkdir()
        run = copy_of(done_run, tmp_path / "sweep", "0")
        watched, args, cwd = tmp_path / "sweep", ["-m", *TINY, "epochs=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path
    else:
        run = watched = copy_of(done_run, tmp_path)
        folder = run if how == "run_dir" else ""
        args, cwd = [*TINY, f"hydra.run.dir={folder}"], tmp_path if how == "run_dir" else run
    before = hashes(watched)
    proc = ffrun(args, cwd)
    assert proc.returncode == 2
    line = one_line(proc)
    assert "already holds a run" in line and f"ffrun resume={run}" in line and "choose another folder" in line
    assert hashes(watched) == before


# --- one process at a time ---------------------------------------------------------------------
def test_a_second_resume_while_one_runs_is_refused_and_the_lock_dies_with_its_holder(stopped_run, tmp_path):
    run = copy_of(stopped_run[0], tmp_path)
    holder = subprocess.Popen([script("ffrun"), f"resume={run}", "epochs=400", "checkpoint.every=0"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while (run / ".ffrun.lock").read_text().strip() != str(holder.pid):     # it owns the folder
            assert time.time() < deadline and holder.poll() is None
            time.sleep(0.05)
        holder.send_signal(signal.SIGSTOP)          # frozen, its lock held: nothing changes under us
        before = hashes(run)
        proc = ffrun([f"resume={run}", "epochs=30"], tmp_path)
        assert proc.returncode == 2
        assert one_line(proc) == (f"ffrun: {run} is in use by process {holder.pid}, which holds its lock "
                                  f"{run / '.ffrun.lock'}; wait for that process to end (or stop it) and try again")
        assert hashes(run) == before
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()                               # a crash: the kernel drops its lock
        holder.wait(timeout=60)
    proc = ffrun([f"resume={run}", "epochs=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert results(run)["status"] == "completed" and results(run)["epochs"] == 3


# --- a resume goes ahead or changes nothing ------------------------------------------------------
@pytest.mark.parametrize("epochs, code, message", [
    (1, 2, "it completed 2 epochs and epochs=1 is fewer; nothing was changed"),
    (2, 0, "is already complete (2 epochs); nothing was changed"),
])
def test_resuming_a_completed_run_with_no_more_epochs_changes_nothing(done_run, tmp_path, epochs, code, message):
    run = copy_of(done_run, tmp_path)
    before = hashes(run)
    proc = ffrun([f"resume={run}", f"epochs={epochs}"], tmp_path)
    assert proc.returncode == code
    no_traceback(proc)
    line = one_line(proc) if code else proc.stdout.strip()
    assert message in line and proc.stderr.strip() == ("" if not code else line)
    assert hashes(run) == before


def _diverged(run: Path) -> None:
    """Train ``run`` afresh until it diverges in epoch 1, before any checkpoint."""
    shutil.rmtree(run)
    proc = ffrun([*TINY, "model.optimizer.learning_rate=1e9", f"hydra.run.dir={run}"], run.parent)
    assert proc.returncode == 1 and "diverged" in results(run)["reason"]


@pytest.mark.parametrize("damage, message", [
    (_diverged, "it has no checkpoint yet (the run ended before its first); start it again"),
    (lambda run: shutil.rmtree(run / "checkpoints"), "it has no checkpoint yet"),
    (lambda run: [p.unlink() for p in (run / "checkpoints").glob("ckpt-2.*")],
     "its checkpoint index names ckpt-2, whose files are missing or incomplete"),
    (lambda run: (run / "checkpoints" / "checkpoint").write_text(""),
     "checkpoints/checkpoint is empty or unreadable; delete it to resume from ckpt-2, the newest complete checkpoint"),
    (lambda run: (run / ".hydra" / "config.yaml").write_text("units: [16\n"), ".hydra/config.yaml is unreadable (ParserError"),
    (lambda run: (run / ".hydra" / "config.yaml").write_text(
        (run / ".hydra" / "config.yaml").read_text().replace("\nunits: 16\n", "\nunits: -3\n")),
     ".hydra/config.yaml is not valid: units must be >= 1, got -3"),
    (lambda run: (run / "metrics.csv").unlink(), "its metrics.csv is missing, and resuming would lose the history of epochs 1-2"),
    ("epochs=1", "epochs=1 is fewer than the 2 epochs its checkpoint holds"),
], ids=["diverged", "no_checkpoint", "index_names_a_missing_checkpoint", "empty_index", "corrupt_config",
        "invalid_config", "no_metrics_csv", "epochs_below_the_checkpoint"])
def test_a_resume_that_cannot_go_ahead_writes_nothing(stopped_run, tmp_path, damage, message):
    """A damaged run folder, or (a string) an override that asks for what the run cannot do."""
    run = copy_of(stopped_run[0], tmp_path)
    if callable(damage):
        damage(run)
    before = hashes(run)
    proc = ffrun([f"resume={run}", *([] if callable(damage) else [damage])], tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith(f"ffrun: cannot resume {run}: ") and message in line, line
    assert hashes(run) == before                         # results.json's status and reason included


@pytest.mark.parametrize("extra", [[], ["epochs=4"]], ids=["plain", "extended"])
def test_a_resume_that_fails_on_a_corrupt_checkpoint_leaves_the_folder_as_it_was(stopped_run, tmp_path, extra):
    """Only TensorFlow can tell that a checkpoint's bytes are damaged, after Hydra has written into
    the folder (and an extension into its config): all of that is put back."""
    run = copy_of(stopped_run[0], tmp_path)
    data = next((run / "checkpoints").glob("ckpt-2.data-*"))
    data.write_bytes(bytes(len(data.read_bytes())))          # same size, every byte zero
    before = hashes(run)
    proc = ffrun([f"resume={run}", *extra], tmp_path)
    assert proc.returncode != 0
    assert one_line(proc).startswith("ffrun: ")
    no_traceback(proc)
    assert hashes(run) == before


def test_resume_with_an_empty_value_is_refused(tmp_path):
    proc = ffrun(["resume="], tmp_path)
    assert proc.returncode == 2
    assert one_line(proc) == "ffrun: resume= needs a run folder (ffrun resume=outputs/<date>/<time>)"
    assert list(tmp_path.iterdir()) == []                # no fresh run of the default experiment


# --- checkpoints --------------------------------------------------------------------------------
def test_a_missing_index_resumes_from_the_newest_complete_checkpoint(stopped_run, tmp_path):
    run = copy_of(stopped_run[0], tmp_path)
    (run / "checkpoints" / "checkpoint").unlink()
    next(iter((run / "checkpoints").glob("ckpt-2.data-*"))).unlink()      # ckpt-2 is incomplete
    proc = ffrun([f"resume={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip() == "" and "Traceback" not in proc.stdout
    assert "resuming from ckpt-1, the newest complete checkpoint" in proc.stdout
    saved = results(run)
    assert saved["status"] == "completed" and saved["resumed_from_epoch"] == 1 and saved["epochs"] == 3


#: epochs of several seconds (7 s on a Xeon (AMX): 14,500 steps of 2 images), so that a signal sent when
#: epoch 1's row appears lands inside epoch 2; no checkpoint on disk until the end
LONG_EPOCHS = ["debug=tiny", "data=mnist", "data.train_size=30000", "data.val_size=1000", "data.test_size=1000",
               "batch_size=2", "epochs=400", "readout_epochs=0", "checkpoint.every=0", "tensorboard.enabled=false"]


def start_and_wait_for_epoch_1(args: list[str], run: Path, tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([script("ffrun"), *args, f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 180
    while not ((run / "metrics.csv").exists() and len((run / "metrics.csv").read_text().splitlines()) >= 2):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()[-2000:] if proc.poll() else ""
        time.sleep(0.05)
    time.sleep(0.5)     # past the end-of-epoch work that follows the row: inside epoch 2's passes
    return proc


def test_a_double_ctrl_c_before_any_checkpoint_does_not_offer_a_resume(tmp_path, mnist_dir):
    """Epochs shorter than checkpoint.in_memory_after_s are not kept: the first Ctrl-C waits for
    the epoch's end, the second aborts at once, and nothing is saved."""
    run = tmp_path / "run"
    proc = start_and_wait_for_epoch_1(LONG_EPOCHS, run, tmp_path)
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:
        if "SIGINT received" in line:
            assert "stopping after this epoch" in line
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    line = one_line(done)
    saved = results(run)
    assert saved["status"] == "interrupted" and saved["epochs"] == 1
    assert saved["reason"] == "aborted by a second Ctrl-C; nothing to resume (no checkpoint yet); start the run again"
    assert "resume with" not in out + err and line == f"ffrun: {saved['reason']} ({run})"


def test_a_sigterm_inside_a_kept_epoch_stops_at_once_and_resume_reruns_it(tmp_path, mnist_dir):
    """A scheduler's SIGTERM does not wait for the epoch's end when the last finished epoch is
    kept in memory: that epoch becomes the checkpoint, and the resume runs the unfinished one."""
    run = tmp_path / "run"
    proc = start_and_wait_for_epoch_1([*LONG_EPOCHS, "checkpoint.in_memory_after_s=0"], run, tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    no_traceback(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    saved = results(run)
    assert saved["status"] == "interrupted" and saved["epochs"] == 1
    assert saved["reason"].startswith("SIGTERM inside epoch 2 (its ")
    assert saved["reason"].endswith(f"which runs again on resume; resume with: ffrun resume={run}")
    assert (run / "checkpoints" / "ckpt-1.index").exists()
    proc = subprocess.run([script("ffrun"), f"resume={run}", "stop_after_epoch=2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2]


# --- signals, a full disk, exit codes -----------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_ends_with_one_line(tmp_path, sig, code):
    run = tmp_path / "run"
    proc = subprocess.Popen([script("ffrun"), *TINY, f"hydra.run.dir={run}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / ".hydra" / "config.yaml").exists():     # the folder is made, TensorFlow is loading
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    no_traceback(done)
    name = signal.Signals(sig).name
    assert one_line(done) == (f"ffrun: interrupted by {name}; nothing to resume (no checkpoint yet); start the "
                              f"run again ({run})")
    assert results(run) == {"status": "interrupted",
                            "reason": f"interrupted by {name}; nothing to resume (no checkpoint yet); start the run again"}


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_sweeps_training_ends_the_sweep(tmp_path, sig, code):
    """kill / scancel of a sweep stops it: the job in training stops at its epoch's end with a
    checkpoint, and the next jobs never start."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([script("ffrun"), "-m", "debug=tiny", "epochs=400", "readout_epochs=0", "seed=0,1",
                             "tensorboard.enabled=false", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = sweep / "0" / "metrics.csv"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):   # job 0 has finished an epoch
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    saved = results(sweep / "0")
    assert saved["status"] == "interrupted" and signal.Signals(sig).name in saved["reason"]
    assert "resume with" in saved["reason"]
    assert not (sweep / "1").exists()


def test_a_disk_already_full_is_refused_before_a_run_folder(tmp_path, small_filesystem):
    filler = small_filesystem / "filler"
    with open(filler, "wb", buffering=0) as f:     # fill the disk; an empty file still fits on it
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    proc = ffrun([*TINY, f"hydra.run.dir={small_filesystem / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert one_line(proc) == (f"ffrun: cannot write the output folder {small_filesystem / 'run'}: "
                              f"{small_filesystem} has no room for a run (No space left on device)")
    assert sorted(p.name for p in small_filesystem.iterdir()) == ["filler"]


def test_a_planned_stop_exits_0_and_stays_resumable(stopped_run):
    run, proc = stopped_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip() == ""
    saved = results(run)
    assert saved["status"] == "interrupted" and saved["epochs"] == 2
    assert saved["reason"] == f"stop_after_epoch=2; resume with: ffrun resume={run}"


# --- help and version ---------------------------------------------------------------------------
def test_ffrun_help_is_ffruns_own_page():
    proc = subprocess.run([script("ffrun"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    page = proc.stdout
    assert page.startswith("ffrun: Forward-Forward experiments")
    for words in ("resume=<run folder>", "ffrun-eval <run folder>", "ffrun-report <folder>", "debug=tiny", "epochs="):
        assert words in page, words
    words = set(page.split())
    aliases = set(RENAMED_PRESETS)
    for preset in (REPO / "conf" / "experiment").glob("*.yaml"):     # every preset, and no internal option
        if not any(preset.stem.startswith(old) for old in aliases):   # an old name kept for one release
            assert preset.stem in words, preset.stem
    assert all(f"{old}" in page for old in aliases)
    assert "_schema" not in page and "Powered by Hydra" not in page


def test_ffrun_eval_help_answers_without_tensorflow():
    started = time.monotonic()
    proc = subprocess.run([script("ffrun-eval"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ffrun-eval")
    assert time.monotonic() - started < 8     # importing TensorFlow alone takes 10-14 s here
    probe = ("import sys\nfrom ffrun.app import evaluate\ntry:\n    evaluate.main(['--help'])\n"
             "except SystemExit:\n    pass\nprint('tensorflow' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip().splitlines()[-1] == "False"


def test_ffrun_report_on_a_file_says_what_it_expects(done_run, tmp_path):
    proc = subprocess.run([script("ffrun-report"), str(done_run / "results.json")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert one_line(proc) == (f"ffrun-report: error: {done_run / 'results.json'} is a file, not a folder; "
                              f"give a run folder, a sweep folder or outputs/")


def test_ffrun_version(tmp_path):
    proc = ffrun(["--version"], tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.strip() == f"ffrun {importlib.metadata.version('ffrun')}"
    import ffrun as package
    assert package.__version__ == importlib.metadata.version("ffrun")
