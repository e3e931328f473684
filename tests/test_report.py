"""ffrun-report and the SweepReport callback on hand-made run folders (no training)."""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from ffrun.callbacks import SweepReport
from ffrun.report import find_runs, main, parse_overrides, varying_params, write_report
from tests.conftest import colored_pixels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(folder: Path, overrides: list[str], results: dict, accs: list[float] | None = None,
             primary: str = "softmax/acc") -> Path:
    """A run folder as runner.train and Hydra leave it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "results.json").write_text(json.dumps(results))
    if accs is not None:
        with open(folder / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "stage", "seconds", "samples_per_s", "dense1/loss_pos", primary])
            for epoch, acc in enumerate(accs, 1):
                w.writerow([epoch, 0, 0.5, 1000.0, 0.1, acc])
    return folder


def completed(best: float, accs: list[float], overrides: list[str]) -> dict:
    return {"status": "completed", "reason": None, "primary": "softmax/acc", "val_set": "validation",
            "best_val_acc": best, "best_epoch": accs.index(best) + 1, "final_val_acc": accs[-1],
            "test_acc": best - 0.01, "epochs": len(accs), "wall_seconds": 3.0, "mean_epoch_seconds": 0.5,
            "samples_per_s": 1000.0, "peak_memory_mb": 700.0, "overrides": overrides}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Four jobs of `units=8,16,32,64`; job 0 failed, so ranking must move it from first to last."""
    root = tmp_path / "sweep"
    make_run(root / "0", ["debug=tiny", "units=8"], {"status": "failed", "reason": "units must be positive"})
    for job, (units, accs) in enumerate([(16, [0.5, 0.7, 0.6]), (32, [0.6, 0.9, 0.8]), (64, [0.4, 0.8, 0.85])], 1):
        ov = ["debug=tiny", f"units={units}"]
        make_run(root / str(job), ov, completed(max(accs), accs, ov), accs)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def recording_console() -> Console:
    return Console(file=io.StringIO(), width=200, color_system=None)


def test_write_report_ranks_runs_and_lists_failed_last(sweep: Path) -> None:
    console = recording_console()
    rows = write_report(sweep, console)

    assert [r["run"] for r in rows] == ["2", "3", "1", "0"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["status"] == "failed" and rows[-1]["reason"] == "units must be positive"
    text = console.file.getvalue()
    lines = [line for line in text.splitlines() if line.startswith("│")]
    assert [line.split("│")[2].strip() for line in lines] == ["2", "3", "1", "0"]
    assert "units must be positive" in lines[-1]
    assert "90.00%" in lines[0]


def test_summary_csv_content(sweep: Path) -> None:
    write_report(sweep, recording_console())

    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["2", "3", "1", "0"]
    assert [r["override.units"] for r in rows] == ["32", "64", "16", "8"]
    assert {r["override.debug"] for r in rows} == {"tiny"}
    assert float(rows[0]["best_val_acc"]) == pytest.approx(0.9)
    assert rows[0]["best_epoch"] == "2" and rows[0]["primary"] == "softmax/acc"
    assert rows[0]["overrides"] == "debug=tiny units=32"
    assert rows[-1]["status"] == "failed"
    assert rows[-1]["reason"] == "units must be positive"
    assert rows[-1]["best_val_acc"] == ""


def test_summary_png_is_written(sweep: Path) -> None:
    write_report(sweep, recording_console())

    png = sweep / "summary.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert colored_pixels(png) > 100          # curves and points are drawn


def test_categorical_parameter_and_several_varying_parameters(tmp_path: Path) -> None:
    for job, (goodness, th) in enumerate([("sum", "0.1"), ("mean", "1.0"), ("sum", "1.0")]):
        ov = [f"model.goodness={goodness}", f"model.th_pos={th}"]
        make_run(tmp_path / str(job), ov, completed(0.5 + job / 10, [0.5 + job / 10], ov), [0.5 + job / 10],
                 primary="goodness/acc")
    rows = write_report(tmp_path, recording_console())

    assert [r["run"] for r in rows] == ["2", "1", "0"]
    assert [(r["override.model.goodness"], r["override.model.th_pos"]) for r in rows] == [
        ("sum", "1.0"), ("mean", "1.0"), ("sum", "0.1")]
    assert (tmp_path / "summary.png").read_bytes()[:8] == PNG_MAGIC


def test_categorical_parameter_gets_a_category_axis() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ffrun.report import _plot_param
    runs = [{"params": {"model.goodness": g}, "best_val_acc": a} for g, a in [("sum", 0.5), ("mean", 0.6), ("sum", 0.7)]]
    assert varying_params(runs) == ["model.goodness"]
    fig, ax = plt.subplots()
    _plot_param(ax, "model.goodness", runs, skipped=0, alone=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sum", "mean"]
    assert ax.collections[0].get_offsets().tolist() == [[0, 0.5], [1, 0.6], [0, 0.7]]
    plt.close(fig)


def test_nested_runs_natural_order_and_fallbacks(tmp_path: Path) -> None:
    """outputs/ holds single runs and sweeps; hidden folders (.submitit) are not runs."""
    ov = ["units=5"]
    make_run(tmp_path / "2026-01-01" / "10-00-00", ov, completed(0.7, [0.7], ov), [0.7])
    for job in (2, 10):
        make_run(tmp_path / "multirun" / "s" / str(job), ov, completed(0.6, [0.6], ov), [0.6])
    (tmp_path / "multirun" / "s" / ".submitit" / "1").mkdir(parents=True)
    (tmp_path / "multirun" / "s" / ".submitit" / "1" / "results.json").write_text("{}")
    # No .hydra folder: the overrides come from results.json
    bare = tmp_path / "copied"
    bare.mkdir()
    (bare / "results.json").write_text(json.dumps(completed(0.65, [0.65], ["units=7"])))
    # A killed run: results.json still says "running"; a torn results.json counts as failed
    make_run(tmp_path / "killed", ov, {"status": "running", "primary": "softmax/acc"}, [0.3])
    make_run(tmp_path / "torn", ov, {})
    (tmp_path / "torn" / "results.json").write_text('{"status": "compl')

    runs = [p.relative_to(tmp_path).as_posix() for p in find_runs(tmp_path)]
    assert runs == ["2026-01-01/10-00-00", "copied", "killed", "multirun/s/2", "multirun/s/10", "torn"]
    rows = write_report(tmp_path, recording_console())
    by_run = {r["run"]: r for r in rows}
    assert by_run["copied"]["override.units"] == "7"
    assert by_run["killed"]["status"] == "unfinished"
    assert by_run["torn"]["status"] == "failed" and "unreadable" in by_run["torn"]["reason"]
    assert [r["run"] for r in rows[:2]] == ["2026-01-01/10-00-00", "copied"]
    assert rows[-1]["run"] == "torn"


def test_parse_overrides_and_varying_params() -> None:
    assert parse_overrides(["units=16", "+model.x=a=b", "~seed", "++epochs=2"]) == \
        {"units": "16", "model.x": "a=b", "seed": "", "epochs": "2"}
    runs = [{"params": {"debug": "tiny", "units": "16"}}, {"params": {"debug": "tiny", "units": "32", "seed": "1"}}]
    assert varying_params(runs) == ["units", "seed"]


def test_cli_writes_report(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep)]) == 0
    assert (sweep / "summary.csv").exists()
    assert "sweep: 4 runs, 1 failed" in capsys.readouterr().out


def test_runs_that_differ_only_in_seed_are_summarized_over_seeds(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """`ffrun -m seed=0,1,2 units=16,32`: one row per units, mean and sample std over its seeds;
    a failed seed does not count. A run with the default seed (no seed= override; its config says 0)
    and an extra bookkeeping override (checkpoint.every) still belongs to its setting."""
    import statistics
    root = tmp_path / "seeds"
    bests = {("16", "0"): 0.90, ("16", "1"): 0.94, ("16", "2"): 0.92, ("32", "0"): 0.97, ("32", "1"): 0.95}
    for job, ((units, seed), best) in enumerate(bests.items()):
        ov = [f"units={units}"] + (["checkpoint.every=5"] if job == 0 else [f"seed={seed}"])
        results = completed(best, [best - 0.1, best], ov) | {"test_acc_final": best - 0.02}
        run = make_run(root / str(job), ov, results, [best - 0.1, best])
        (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nunits: {units}\n")
    make_run(root / "5", ["units=32", "seed=2"], {"status": "failed", "reason": "NaN loss"})
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "over seeds" in out
    rows = list(csv.DictReader(open(root / "seeds.csv")))
    assert [(r["units"], r["n"], r["seeds"]) for r in rows] == [("32", "2", "0 1"), ("16", "3", "0 1 2")]
    for row in rows:
        best = [b for (u, _), b in bests.items() if u == row["units"]]
        assert float(row["best_val_mean"]) == pytest.approx(statistics.mean(best))
        assert float(row["best_val_std"]) == pytest.approx(statistics.stdev(best))
        assert float(row["test_mean"]) == pytest.approx(statistics.mean(best) - 0.01)
        assert float(row["test_final_mean"]) == pytest.approx(statistics.mean(best) - 0.02)


def test_no_seed_summary_without_repeated_seeds(sweep: Path, tmp_path: Path) -> None:
    write_report(sweep, recording_console())          # seed not swept
    assert not (sweep / "seeds.csv").exists()
    root = tmp_path / "one_each"                         # seed swept, but every setting has one run
    for job, (units, seed) in enumerate([("16", "0"), ("32", "1")]):
        ov = [f"units={units}", f"seed={seed}"]
        make_run(root / str(job), ov, completed(0.9, [0.9], ov), [0.9])
    write_report(root, recording_console())
    assert not (root / "seeds.csv").exists()


def test_cli_nonexistent_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ffrun-report: error:") and "nope" in err
    assert len(err.splitlines()) == 1


def test_cli_folder_without_runs_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty" / "0").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    assert "no runs" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "summary.csv").exists()


def test_compare_runs_from_several_folders(sweep: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    """Runs kept apart (a lone run, a sweep, a job of that sweep given again) in one table."""
    ov = ["experiment=paper_small", "protocol.negatives=hard_batch"]
    lone = make_run(tmp_path / "elsewhere" / "hard", ov, completed(0.95, [0.9, 0.95], ov), [0.9, 0.95])
    out = tmp_path / "cmp"
    assert main([str(lone), str(sweep), str(sweep / "2"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["run"] for r in rows] == ["elsewhere/hard", "sweep/2", "sweep/3", "sweep/1", "sweep/0"]
    assert rows[0]["override.protocol.negatives"] == "hard_batch" and rows[1]["override.units"] == "32"
    assert colored_pixels(out / "summary.png") > 0
    assert not (sweep / "summary.csv").exists() and not (lone / "summary.csv").exists()
    assert "3 folders: 5 runs, 1 failed" in capsys.readouterr().out   # sweep/2 counted once


def test_several_folders_need_out(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep / "1"), str(sweep / "2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ffrun-report: error:") and "--out" in err and len(err.splitlines()) == 1
    assert not (sweep / "1" / "summary.csv").exists()


def test_callback_writes_report_into_sweep_dir(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SystemExit) as exit_info:      # job 0 of the fixture failed
        SweepReport().on_multirun_end(config=config, config_name="config")
    assert exit_info.value.code == 1
    assert "1 of 4 sweep jobs failed (runs 0)" in capsys.readouterr().err
    assert (sweep / "summary.csv").exists() and (sweep / "summary.png").exists()


def test_callback_returns_when_every_job_completed(sweep: Path) -> None:
    import shutil
    shutil.rmtree(sweep / "0")                         # the failed job
    SweepReport().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "summary.csv").exists()


def test_callback_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ffrun"):
        SweepReport().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "x")}}}))
        SweepReport().on_multirun_end(config=OmegaConf.create({}))   # no hydra node at all
    assert len([r for r in caplog.records if "sweep report not written" in r.getMessage()]) == 2


def test_peak_memory_is_per_job_after_a_reset():
    # A sweep runs its jobs in one process: a small job after a big one must not report the big peak.
    import numpy as np

    from ffrun import reporting
    big = np.ones(200 * 2**20 // 8)        # 200 MB, touched
    del big
    high = reporting.peak_memory_mb()
    if not reporting.reset_peak_memory():
        pytest.skip("this kernel does not let a process reset its peak (/proc/self/clear_refs)")
    assert reporting.peak_memory_mb() < high - 150
