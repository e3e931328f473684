"""The installed ``ffrun`` console script, run from a directory outside the repo."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


FFRUN = shutil.which("ffrun") or str(Path(sys.executable).parent / "ffrun")


def _run(args, cwd, env_extra=None, timeout=240):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([FFRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_script_runs_from_any_directory(tmp_path):
    proc = _run(["debug=tiny", "mode=sup", "protocol=wrong_label", "epochs=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list((tmp_path / "outputs").glob("*/*/results.json"))
    assert len(runs) == 1
    run_dir = runs[0].parent
    assert json.loads(runs[0].read_text())["status"] == "completed"
    for name in ("metrics.csv", "curves.png", "ffrun.log", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name
    assert str(run_dir) in proc.stdout + proc.stderr          # it says where its outputs went
    assert "oneDNN" not in proc.stderr                         # TF start-up noise is silenced
    # one graph per pass is the design, not "excessive retracing"
    assert "retracing" not in proc.stdout + proc.stderr + (run_dir / "ffrun.log").read_text()
    # the test passes after the last epoch, minutes long on a deep net, each say they started
    assert "testing the final weights" in (run_dir / "ffrun.log").read_text()


@pytest.mark.slow
def test_unknown_override_fails_with_one_line(tmp_path):
    proc = _run(["debug=tiny", "unitz=5"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ffrun: unknown config key 'unitz'; did you mean units? (to add a new key on purpose: +unitz=5)"]
    assert not (tmp_path / "outputs").exists()


def test_bad_overrides_name_the_fix_in_one_line():
    from ffrun.app.overrides import override_problem
    # a nested key inside a group an experiment selects
    assert "did you mean protocol.blur_steps?" in override_problem(
        ["experiment=paper_unsup", "protocol.blur_step=3"])
    # a misspelt preset names the nearest one
    assert override_problem(["experiment=paper_supp"]).startswith(
        "no config 'paper_supp' in group 'experiment'; did you mean experiment=paper_sup?")
    # a sweep is checked job by job: its values are fine, the misspelt key is not
    assert "'unitz'" in override_problem(["-m", "units=100,500", "unitz=3"])
    assert override_problem(["-m", "units=100,500", "splitting=random,same"]) is None
    # every config choice of a sweep is checked, not only the first job's
    assert "'paper_supp'" in override_problem(["-m", "experiment=paper_small,paper_supp"])
    assert override_problem(["units=[1,2"]).startswith("cannot parse the override 'units=[1,2'")
    assert override_problem(["debug=tiny", "+model.note=x", "hydra.run.dir=/tmp/x"]) is None
    for problem in (override_problem(["unitz=5"]), override_problem(["mode=nope"])):
        assert "\n" not in problem


@pytest.mark.slow
def test_missing_data_file_fails_with_one_line(tmp_path):
    proc = _run(["epochs=1", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                env_extra={"FFRUN_DATA_DIR": str(tmp_path / "no_such_dir")})
    assert proc.returncode == 2
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and "no_such_dir/mnist.npz" in errors[0] and "FFRUN_DATA_DIR" in errors[0]
    assert "ERROR" not in proc.stdout                  # said once, on stderr
    assert not (tmp_path / "run").exists()             # a missing data folder is refused before Hydra makes one


@pytest.mark.slow
def test_ill_typed_override_fails_with_one_line(tmp_path):
    proc = _run(["debug=tiny", "units=abc", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["ffrun: units must be an integer or a list of them, got 'abc'"]
    assert not (tmp_path / "run").exists()             # refused before Hydra made the folder


@pytest.mark.slow
def test_unwritable_output_folder_fails_with_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = _run(["debug=tiny", f"hydra.run.dir={blocker / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ffrun: cannot write the output folder {blocker / 'run'}: {blocker} is not a folder"]
    assert blocker.read_text() == "not a folder"       # nothing already there is touched


@pytest.mark.slow
def test_wheel_ships_every_config(tmp_path):
    """``pip install .`` (not editable) must carry conf/ as the package ffrun.conf."""
    import zipfile
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(repo), "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("ffrun-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (repo / "conf").rglob("*.yaml"):
        assert f"ffrun/conf/{yaml.relative_to(repo / 'conf').as_posix()}" in names, yaml
    assert "ffrun/conf/__init__.py" in names and "ffrun/app/cli.py" in names
