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

from ffrun.app.hydra_callbacks import SweepReport
from ffrun.app.summary import Reference, find_runs, main, parse_overrides, varying_params, write_report
from tests.conftest import colored_pixels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(folder: Path, overrides: list[str], results: dict, accs: list[float] | None = None,
             primary: str = "softmax/acc") -> Path:
    """A run folder as loop.train and Hydra leave it."""
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


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every matplotlib figure saved during the test, in order, kept for its axes to be read."""
    import matplotlib.figure
    figures = []
    save = matplotlib.figure.Figure.savefig

    def keep_figure(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep_figure)
    return figures


def test_categorical_parameter_gets_a_category_axis(tmp_path: Path, drawn: list) -> None:
    """A sweep of model.goodness=sum,mean: summary.png plots best accuracy against the two names as
    categories, each run's point above its own name."""
    for job, (goodness, acc) in enumerate([("sum", 0.5), ("mean", 0.6), ("sum", 0.7)]):
        ov = [f"model.goodness={goodness}"]
        make_run(tmp_path / str(job), ov, completed(acc, [acc], ov), [acc])
    write_report(tmp_path, recording_console())

    (fig,) = drawn
    curves, panel = fig.axes
    assert panel.get_xlabel() == "model.goodness"
    assert [t.get_text() for t in panel.get_xticklabels()] == ["sum", "mean"]
    points = sorted(map(tuple, panel.collections[0].get_offsets().tolist()))
    assert points == [(0, 0.5), (0, 0.7), (1, 0.6)]
    assert len(curves.get_lines()) == 3                 # and one accuracy curve per run


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


def test_a_published_figure_is_placed_against_each_settings_seeds(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """`ffrun-report <runs> --reference 91.7`: is rmwkwok's figure one of our seeds' outcomes? Inside
    the min-max of one setting's test figures, above another's; the distance in sample stds from the
    mean, by hand."""
    root = tmp_path / "ref"
    tests = {("1", "0"): 0.910, ("1", "1"): 0.925, ("1", "2"): 0.920, ("2", "0"): 0.930, ("2", "1"): 0.940}
    for job, ((lr, seed), test) in enumerate(tests.items()):
        ov = [f"lr={lr}", f"seed={seed}"]
        make_run(root / str(job), ov, completed(0.95, [0.9, 0.95], ov) | {"test_acc": test}, [0.9, 0.95])
    console = recording_console()
    write_report(root, console, reference=Reference(0.917))
    out = console.file.getvalue()
    assert "reference 91.70% against the min-max of test at best" in out
    assert "inside (91.00 - 92.50), -0.2 std from the mean" in out and "below (93.00 - 94.00)" in out
    assert main([str(root), "--reference", "91.7"]) == 0
    rows = {r["lr"]: r for r in csv.DictReader(open(root / "seeds.csv"))}
    assert rows["1"]["reference_place"] == "inside" and rows["2"]["reference_place"] == "below"
    assert float(rows["1"]["reference_z"]) == pytest.approx((0.917 - 0.91833333) / 0.00763763, abs=1e-4)
    assert float(rows["2"]["reference_z"]) == pytest.approx((0.917 - 0.935) / 0.00707107, abs=1e-4)
    assert rows["1"]["reference_figure"] == "test"
    # the best-test-epoch figure is absent in these runs (no test columns): no place, not a wrong one
    assert main([str(root), "--reference", "91.7", "--against", "test_best_epoch_ff"]) == 0
    rows = list(csv.DictReader(open(root / "seeds.csv")))
    assert {r["reference_place"] for r in rows} == {""}
    assert main([str(root), "--reference", "150"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == \
        ["ffrun-report: error: --reference must be an accuracy in percent (0-100), got 150"]


def test_seeds_png_draws_each_seed_its_mean_and_the_reference(tmp_path: Path, drawn: list) -> None:
    """seeds.png of `--reference 91.7 --against test_best_epoch_ff`: per setting, every seed's test figure
    (at the validation-chosen epoch, final, best test epoch) as a point, the mean +- sample std as a bar
    beside them, and the reference as a dashed line; summary.png's seed panel joins no seeds by a line."""
    import statistics

    root = tmp_path / "ref"
    tests = {("1", "0"): 0.910, ("1", "1"): 0.925, ("1", "2"): 0.920, ("2", "0"): 0.930, ("2", "1"): 0.940}
    for job, ((lr, seed), test) in enumerate(tests.items()):
        ov = [f"lr={lr}", f"seed={seed}"]
        run = make_run(root / str(job), ov, completed(0.95, [0.9, 0.95], ov) | {"test_acc": test}, [0.9, 0.95])
        stages = [{"stage": 0, "best": test + 0.004, "epoch": 2}]   # the tracked test curve's best
        results = json.loads((run / "results.json").read_text())
        results["readouts"] = {"softmax/acc": {"test_best_by_stage": stages}}
        (run / "results.json").write_text(json.dumps(results))
    write_report(root, recording_console(), reference=Reference(0.917, "test_best_epoch_ff"))

    assert (root / "seeds.png").read_bytes()[:8] == PNG_MAGIC
    summary, seeds = drawn
    (ax,) = seeds.axes
    (seed_panel,) = [panel for panel in summary.axes if panel.get_xlabel() == "seed"]
    assert seed_panel.get_lines() == [] and len(seed_panel.collections[0].get_offsets()) == 5
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert sorted(labels) == ["lr=1\nn = 3", "lr=2\nn = 2"]       # in seeds.csv's order
    # one point series per (setting, figure), in the setting's column
    from matplotlib.collections import PathCollection
    series = {}
    for points in (c for c in ax.collections if isinstance(c, PathCollection)):   # the scatters
        offsets = points.get_offsets().tolist()
        series.setdefault(round(offsets[0][0]), []).append(sorted(y for _, y in offsets))
    setting_1 = sorted(v for (lr, _), v in tests.items() if lr == "1")
    assert series[labels.index("lr=1\nn = 3")] == [pytest.approx(setting_1), pytest.approx([v + 0.004 for v in setting_1]),
                         pytest.approx([v + 0.004 for v in setting_1])]
    bars = [(bar.lines[0].get_ydata()[0], bar.lines[1][1].get_ydata()[0]) for bar in ax.containers]
    assert len(bars) == 6          # 2 settings x 3 figures: (mean, mean + std)
    mean, std = statistics.mean(setting_1), statistics.stdev(setting_1)
    assert (pytest.approx(mean), pytest.approx(mean + std)) in bars
    (reference,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(reference.get_ydata()) == [0.917, 0.917]
    assert "reference 91.70% (against best test epoch, FF stage)" in \
        [t.get_text() for t in ax.get_legend().get_texts()]


def test_seed_table_fits_an_80_column_log(tmp_path: Path) -> None:
    """A report piped into a log is 80 columns wide (rich's default without a terminal): the seed
    table with a reference keeps every column and every figure whole in it, instead of squeezing
    n and seeds to nothing and cutting the figures short."""
    import statistics
    root = tmp_path / "ref"
    tests = [0.9307, 0.9506, 0.9346, 0.9280, 0.9480, 0.9622]
    for seed, test in enumerate(tests):
        ov = [f"seed={seed}"]
        results = completed(test, [0.9, test], ov) | {"test_acc": test, "test_acc_final": test - 0.003}
        results["readouts"] = {"softmax/acc": {"test_best_by_stage": [{"stage": 0, "best": test, "epoch": 2}]}}
        make_run(root / str(seed), ov, results, [0.9, test])
    console = Console(file=io.StringIO(), width=80, color_system=None)
    write_report(root, console, reference=Reference(0.9576, "test_best_epoch_ff"))
    out = console.file.getvalue()
    table = out[out.index("over seeds"):]
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "…" not in table
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert rows[0].split("│")[1].strip() == "6"                        # n
    assert "".join(r.split("│")[2] for r in rows).split() == ["0", "1", "2", "3", "4", "5"]
    mean, std = 100 * statistics.mean(tests), 100 * statistics.stdev(tests)    # whole, not cut short
    assert rows[0].count(f"{mean:.2f}%") == 4 and f"{std:.2f}" in "".join(rows)
    assert "-" not in [cell.strip() for cell in rows[0].split("│")[3:8]]     # every figure present
    assert "inside" in rows[0] and "96.22)," in "".join(rows)


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

    from ffrun.run import outputs
    big = np.ones(200 * 2**20 // 8)        # 200 MB, touched
    del big
    high = outputs.peak_memory_mb()
    if not outputs.reset_peak_memory():
        pytest.skip("this kernel does not let a process reset its peak (/proc/self/clear_refs)")
    assert outputs.peak_memory_mb() < high - 150


# --- malformed run files: a failed (or blank) cell with its reason, never a traceback ---------------

GOOD_OV, BAD_OV = ["units=16"], ["units=32"]


def good_and_bad(root: Path, patch: dict | None = None, raw: bytes | None = None) -> Path:
    """A folder with one intact run ("good", best 0.9) and one ("bad", best 0.8) whose results.json
    gets ``patch`` merged in, or is replaced by ``raw`` bytes. Returns the bad run's folder."""
    make_run(root / "good", GOOD_OV, completed(0.9, [0.8, 0.9], GOOD_OV), [0.8, 0.9])
    bad = make_run(root / "bad", BAD_OV, completed(0.8, [0.7, 0.8], BAD_OV) | (patch or {}), [0.7, 0.8])
    if raw is not None:
        (bad / "results.json").write_bytes(raw)
    return bad


def report_rows(root: Path) -> tuple[dict[str, dict], dict[str, dict], str]:
    """write_report on ``root``: its rows by run, summary.csv's rows by run, and the printed table."""
    console = recording_console()
    rows = write_report(root, console)
    assert (root / "summary.png").read_bytes()[:8] == PNG_MAGIC
    with open(root / "summary.csv", newline="") as f:
        written = {r["run"]: r for r in csv.DictReader(f)}
    by_run = {r["run"]: r for r in rows}
    assert set(by_run) == set(written) == {"good", "bad"}
    good = by_run["good"]
    assert (good["rank"], good["status"], good["reason"]) == (1, "completed", None)
    assert good["best_val_acc"] == pytest.approx(0.9) and good["best_epoch"] == 2 and good["epochs"] == 2
    assert good["override.units"] == "16" and written["good"]["overrides"] == "units=16"
    return by_run, written, console.file.getvalue()


@pytest.mark.parametrize("patch, raw, problem", [
    ({"overrides": 5}, None, "'overrides' must be a list of strings, got int"),
    ({"overrides": "units=32"}, None, "'overrides' must be a list of strings, got str"),
    ({"overrides": ["units=32", {"x": 1}, 7]}, None,
     "'overrides' must be a list of strings, got a list holding dict, int"),
    ({"reason": 123}, None, "'reason' must be a string, got int"),
    ({"status": ["x"]}, None, "'status' must be a string, got list"),
    ({"status": True}, None, "'status' must be a string, got bool"),
    ({"primary": 7}, None, "'primary' must be a string, got int"),
    ({"primary": ["softmax/acc"]}, None, "'primary' must be a string, got list"),   # unhashable: row.get()
    (None, b"[1, 2]", "not a JSON object, got list"),
    (None, b"null", "not a JSON object, got null"),
    (None, b"[" * 100_000, "unreadable results.json"),         # RecursionError inside json
    (None, b"\xff\xfe{\x00}", "unreadable results.json"),       # not UTF-8
], ids=["overrides-int", "overrides-str", "overrides-list-of-dicts", "reason-int", "status-list",
        "status-bool", "primary-int", "primary-list", "top-list", "top-null", "deeply-nested", "binary"])
def test_malformed_results_json_is_a_failed_row(tmp_path: Path, patch: dict | None, raw: bytes | None,
                                                problem: str) -> None:
    good_and_bad(tmp_path, patch, raw)
    by_run, written, text = report_rows(tmp_path)

    bad = by_run["bad"]
    assert bad["status"] == "failed" and bad["rank"] == 2
    assert problem in bad["reason"] and problem in written["bad"]["reason"]
    assert f"{tmp_path.name}: 2 runs, 1 failed" in text
    if raw is None:   # what can still be shown is: the accuracy, and the overrides from .hydra
        assert bad["best_val_acc"] == pytest.approx(0.8) and bad["override.units"] == "32"


def test_malformed_results_keep_the_runs_own_reason(tmp_path: Path) -> None:
    good_and_bad(tmp_path, {"status": "failed", "reason": "NaN loss", "overrides": {"units": 32}})
    by_run, _, _ = report_rows(tmp_path)
    assert by_run["bad"]["reason"] == "results.json: 'overrides' must be a list of strings, got dict; NaN loss"


@pytest.mark.parametrize("patch, field", [
    ({"best_epoch": "abc"}, "best_epoch"),
    ({"best_epoch": 1.5}, "best_epoch"),
    ({"epochs": {}}, "epochs"),
    ({"epochs": -3}, "epochs"),
    ({"val_set": None}, "val_set"),
    ({"val_set": 5}, "val_set"),
    ({"test_acc": "high"}, "test_acc"),
    ({"mean_epoch_seconds": [0.5]}, "mean_epoch_seconds"),
    ({"wall_seconds": 10 ** 400}, "wall_seconds"),        # a JSON integer float() cannot hold
    ({"peak_memory_mb": float("nan")}, "peak_memory_mb"),  # json.dumps writes NaN, json.loads reads it
    ({"best_val_acc": True}, "best_val_acc"),              # float(True) would be a 100% nobody measured
    ({"readouts": "odd", "data": [1, 2]}, None),           # fields the report does not read
    ({"readouts": {"softmax/acc": 5, "x": None}, "test_set": {}}, None),
], ids=["best_epoch-str", "best_epoch-float", "epochs-dict", "epochs-negative", "val_set-null", "val_set-int",
        "test_acc-str", "seconds-list", "wall_seconds-huge-int", "nan", "best_val_acc-bool", "readouts-str",
        "readouts-odd"])
def test_wrong_typed_shown_fields_are_blank_and_the_row_stays(tmp_path: Path, patch: dict,
                                                              field: str | None) -> None:
    """Fields that are only shown (numbers, the validation set's name) cost their cell, not the run."""
    good_and_bad(tmp_path, patch)
    by_run, written, _ = report_rows(tmp_path)

    bad = by_run["bad"]
    assert (bad["status"], bad["reason"], bad["override.units"]) == ("completed", None, "32")
    if field is not None:
        assert bad[field] is None and written["bad"][field] == ""
    if field != "best_val_acc":
        assert bad["rank"] == 2 and bad["best_val_acc"] == pytest.approx(0.8)


def test_results_overrides_not_a_list_without_hydra_folder(tmp_path: Path) -> None:
    """A copied run has no .hydra: its overrides come from results.json, where an int instead of a
    list is a damaged record, not something to iterate."""
    import shutil
    bad = good_and_bad(tmp_path, {"overrides": 5})
    shutil.rmtree(bad / ".hydra")
    by_run, written, _ = report_rows(tmp_path)
    bad_row = by_run["bad"]
    assert bad_row["status"] == "failed" and "'overrides' must be a list of strings, got int" in bad_row["reason"]
    assert bad_row["override.units"] is None and written["bad"]["overrides"] == ""


def test_reason_with_brackets_is_shown_as_written(tmp_path: Path) -> None:
    """rich reads "[/]" as a closing tag and raises; "[bold]" would silently vanish."""
    reason = "loss [/] is nan at [bold] step\\"
    good_and_bad(tmp_path, {"status": "failed", "reason": reason})
    by_run, written, text = report_rows(tmp_path)
    assert by_run["bad"]["reason"] == written["bad"]["reason"] == reason
    assert reason in text


def write_metrics(path: Path, lines: list[list]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(lines)


HEADER = ["epoch", "stage", "seconds", "samples_per_s", "dense1/loss_pos", "softmax/acc"]


@pytest.mark.parametrize("content, curve", [
    ([HEADER, [1, 0, 0.5, 1e3, 0.1, "abc"], [2, 0, 0.5, 1e3, 0.1, 0.8], ["x", 0, 0.5, 1e3, 0.1, 0.9],
      [3, 0, 0.5, 1e3, 0.1, "inf"]], ([2.0], [0.8])),
    ([HEADER, [1, 0, 0.5], [2, 0, 0.5, 1e3, 0.1, 0.8, "extra", "more"], []], ([2.0], [0.8])),
    ([["epoch", "stage"], [1, 0]], ([], [])),
    ([], ([], [])),
    (b"\xff\xfe\x00\x01garbage\n\x80,\x81\n", ([], [])),
    (b"epoch,softmax/acc\n1,0.7\n2,0.\x008\n", ([1.0], [0.7])),
], ids=["non-numeric", "ragged", "no-acc-column", "empty", "binary", "nul-after-a-row"])
def test_damaged_metrics_csv_gives_what_it_can(tmp_path: Path, content: list | bytes, curve: tuple) -> None:
    from ffrun.app.summary import load_run
    bad = good_and_bad(tmp_path)
    if isinstance(content, bytes):
        (bad / "metrics.csv").write_bytes(content)
    else:
        write_metrics(bad / "metrics.csv", content)
    by_run, _, _ = report_rows(tmp_path)

    assert by_run["bad"]["status"] == "completed"
    assert load_run(bad, tmp_path)["curve"] == curve


@pytest.mark.parametrize("overrides_yaml", [
    "- units: 32\n- seed: 1\n",      # a list of mappings
    "units=32\n",                    # a scalar
    "7\n",
    "",                              # empty: null
    "- units=32\n- [1, 2]\n",        # a list holding a list
    "- units=[1\n  - : :\n",         # not YAML
    "\udcff",                        # not UTF-8 (written with surrogateescape below)
], ids=["list-of-dicts", "scalar-str", "scalar-int", "empty", "nested-list", "broken", "binary"])
def test_malformed_overrides_yaml_falls_back_to_results_json(tmp_path: Path, overrides_yaml: str) -> None:
    bad = good_and_bad(tmp_path)
    (bad / ".hydra" / "overrides.yaml").write_bytes(overrides_yaml.encode("utf-8", "surrogateescape"))
    by_run, written, _ = report_rows(tmp_path)

    assert by_run["bad"]["status"] == "completed"
    assert by_run["bad"]["override.units"] == "32" and written["bad"]["overrides"] == "units=32"


@pytest.mark.parametrize("config_yaml", [
    "- seed: 1\n", "seed: {a: 1}\n", "seed: [1, 2]\n", "seed: true\n", "seed: [\n", "42\n", "\udcff",
], ids=["list", "seed-dict", "seed-list", "seed-bool", "broken", "scalar", "binary"])
def test_malformed_config_yaml_has_no_seed(tmp_path: Path, config_yaml: str) -> None:
    from ffrun.app.summary import load_run
    bad = good_and_bad(tmp_path)
    (bad / ".hydra" / "config.yaml").write_bytes(config_yaml.encode("utf-8", "surrogateescape"))
    by_run, _, _ = report_rows(tmp_path)

    assert by_run["bad"]["status"] == "completed"
    assert load_run(bad, tmp_path)["seed"] is None


@pytest.mark.slow
def test_cli_on_malformed_runs_writes_everything_and_no_traceback(tmp_path: Path) -> None:
    """The installed console script, as a user runs it: a seed sweep beside runs with every kind of
    damage. Exit code 0 as for any folder holding failed runs (the table says which failed)."""
    import os
    import shutil
    import subprocess
    import sys
    script = Path(sys.executable).with_name("ffrun-report")
    script = str(script) if script.exists() else shutil.which("ffrun-report")
    if script is None:
        pytest.skip("the ffrun-report console script is not installed")
    root = tmp_path / "sweep"
    for job, (seed, best) in enumerate([(0, 0.9), (1, 0.92)]):
        ov = ["units=16", f"seed={seed}"]
        make_run(root / str(job), ov, completed(best, [best - 0.1, best], ov), [best - 0.1, best])
    damaged = {"overrides-int": {"overrides": 5}, "reason-int": {"status": "failed", "reason": 123},
               "status-list": {"status": ["x"]}, "primary-int": {"primary": 7},
               "best-epoch-abc": {"best_epoch": "abc", "epochs": {}, "val_set": None},
               "markup": {"status": "failed", "reason": "x=[/tmp] failed"}}
    for job, (name, patch) in enumerate(damaged.items(), 2):
        ov = ["units=32", f"seed={job}"]
        make_run(root / name, ov, completed(0.8, [0.7, 0.8], ov) | patch, [0.7, 0.8])
    (root / "markup" / ".hydra" / "overrides.yaml").write_text("- units: 32\n")
    (root / "markup" / ".hydra" / "config.yaml").write_text("- seed\n")
    (root / "markup" / "metrics.csv").write_bytes(b"epoch,softmax/acc\n1\n\xff,0.5,9\n")

    proc = subprocess.run([script, str(root)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})

    assert "Traceback" not in proc.stderr and proc.stderr == ""
    assert proc.returncode == 0
    assert "sweep: 8 runs, 5 failed" in proc.stdout and "x=[/tmp] failed" in proc.stdout
    assert "'reason' must be a string, got int" in proc.stdout
    for name in ("summary.csv", "summary.png", "seeds.csv"):
        assert (root / name).exists()
    rows = {r["run"]: r for r in csv.DictReader(open(root / "summary.csv"))}
    assert {n for n, r in rows.items() if r["status"] == "failed"} == \
        {"overrides-int", "reason-int", "status-list", "primary-int", "markup"}
    assert rows["1"]["rank"] == "1" and rows["best-epoch-abc"]["status"] == "completed"
