"""``ffrun-report``: one table, summary.csv and summary.png over every run below a folder.

Point it at a sweep (``outputs/multirun/<stamp>``) or at ``outputs/``: every folder holding a
results.json is a run. Several folders (``ffrun-report runA runB sweepC``) compare runs that live
apart; their summary goes to ``--out``. Runs are ranked by best validation accuracy; failed runs come
last with their reason. Runs that differ only in ``seed`` are also summarized over their seeds (mean and
spread, ``seeds.csv``, drawn in ``seeds.png``). The Hydra callback ``ffrun.app.hydra_callbacks.SweepReport`` calls :func:`write_report` when a sweep ends.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ffrun.run import outputs
from ffrun.errors import FFRunError

# Fixed summary.csv columns; every overridden parameter then gets its own "override.<key>" column
# (prefixed because an override such as epochs=1 would otherwise collide with results' "epochs").
RESULT_COLUMNS = ("rank", "run", "status", "best_val_acc", "best_epoch", "final_val_acc", "test_acc",
                  "primary", "val_set", "epochs", "wall_seconds", "mean_epoch_seconds", "samples_per_s",
                  "peak_memory_mb", "reason", "overrides")
PARAM_PREFIX = "override."
MAX_PARAM_PANELS = 3   # a report over all of outputs/ can vary dozens of keys; the plot stays readable
MAX_LEGEND_RUNS = 20
SEED_KEY = "seed"
# Overrides that cannot change what a run learns: runs differing only in these are the same setting
BOOKKEEPING_KEYS = ("checkpoint.", "tensorboard.", "hydra.", "progress", "eval_batch_size")
SEED_COLUMNS = ("n", "seeds", "best_val_mean", "best_val_std", "test_mean", "test_std",
                "test_final_mean", "test_final_std", "test_best_epoch_ff_mean",
                "test_best_epoch_ff_std", "test_best_epoch_all_mean", "test_best_epoch_all_std", "test_min",
                "test_max", "test_best_epoch_ff_min", "test_best_epoch_ff_max")
#: keys that draw random streams rather than define a setting: runs differing only in them are
#: seeds of one setting (protocol.route_seed draws the A/B splits, as the reference implementation's 10
#: "route seeds")
SEED_KEYS = ("seed", "protocol.route_seed")
#: the seed-summary figures a published reference can be placed against (``--reference``)
FIGURES = {"test": "test at best", "test_final": "test final",
           "test_best_epoch_ff": "best test epoch, FF stage", "test_best_epoch_all": "best test epoch, all"}
#: each figure's field in a run record
FIGURE_FIELDS = {"test": "test_acc", "test_final": "test_acc_final", "test_best_epoch_ff": "test_best_epoch_ff",
                 "test_best_epoch_all": "test_best_epoch_all"}
#: the figures' names before they said what they are, still accepted by ``--against`` for one release
OLD_FIGURE_NAMES = {"seed_style_ff": "test_best_epoch_ff", "seed_style_all": "test_best_epoch_all"}
REFERENCE_COLUMNS = ("reference", "reference_figure", "reference_place", "reference_z")
# The results.json fields the report reads, by what a wrong type costs. These decide what a row
# means (did the run succeed, which readout its accuracies belong to): a wrong type fails the row.
MEANING_FIELDS = ("status", "reason", "primary")
# Only shown: a wrong type blanks the cell and the rest of the row still counts.
LABEL_FIELDS = ("val_set",)
NUMBER_FIELDS = ("best_val_acc", "final_val_acc", "test_acc", "test_acc_final", "wall_seconds",
                 "mean_epoch_seconds", "samples_per_s", "peak_memory_mb")
COUNT_FIELDS = ("best_epoch", "epochs")


class ReportError(FFRunError):
    """The folder does not exist or holds no runs."""


def find_runs(root: Path) -> list[Path]:
    """Every folder below ``root`` (itself included) that holds a results.json, in natural order
    so that sweep job 10 follows job 9."""
    runs = {p.parent for p in root.rglob("results.json")
            # .submitit and .hydra hold launcher/Hydra files, never runs
            if not any(part.startswith(".") for part in p.parent.relative_to(root).parts)}
    return sorted(runs, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def _natural_key(text: str) -> list:
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text)]


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["units=16", "+model.x=1"]`` -> ``{"units": "16", "model.x": "1"}``. Values stay strings:
    the report only compares and displays them; deciding numeric vs categorical happens per parameter."""
    params: dict[str, str] = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        params[key.lstrip("+~")] = value if sep else ""
    return params


def load_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One run as a flat record: results.json fields, its overrides and its primary accuracy curve.
    A damaged results.json becomes a failed run instead of stopping the whole report."""
    results, problems = read_results(run_dir / "results.json")
    overrides = _read_overrides(run_dir)
    if overrides is None:   # no .hydra folder (e.g. copied results): loop.train also stores them
        overrides = results["overrides"] or []
    status = results["status"] or "unknown"
    reason = results["reason"]
    if problems:
        # loop.train never writes such a file: whatever it says, the run cannot count as done.
        # The run's own reason, if it had one, still follows.
        status = "failed"
        reason = "; ".join(problems + ([reason] if reason else []))
    elif status == "running":
        # loop.train writes "running" first and overwrites it at the end: the job is still going,
        # or its process was killed before the final write
        status = "unfinished"
        reason = reason or "no final results (still running, or killed)"
    epochs, curve, primary = _read_curve(run_dir, results["primary"])
    return {
        "run": run_dir.relative_to(root).as_posix() or ".",
        "path": run_dir,
        "status": status,
        "reason": reason,
        "primary": primary,
        **{key: results[key] for key in LABEL_FIELDS + NUMBER_FIELDS + COUNT_FIELDS},
        "overrides": overrides,
        "params": parse_overrides(overrides),
        "seed": _read_seed(run_dir),
        "curve": (epochs, curve),
        **best_test_epoch_figures(run_dir / "results.json", results["primary"], results["val_set"]),
    }


def best_test_epoch_figures(path: Path, primary: str | None, val_set: str | None) -> dict[str, float | None]:
    """The figures the reference implementation reports (its "best test epoch"): the primary
    readout's best TEST accuracy over the epochs of the first (FF) stage, and over all epochs.
    They come from the per-epoch figures when those are test figures (``eval_on=test``), else from
    the tracked test columns (``track_test``); None when the run has neither. They pick the epoch
    on the test set: labelled as such."""
    empty = {"test_best_epoch_ff": None, "test_best_epoch_all": None}
    try:
        readout = json.loads(path.read_text())["readouts"][primary]
        stages = readout["best_by_stage"] if val_set == "test" else readout.get("test_best_by_stage")
        bests = [_num(s["best"]) for s in stages or []]
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return empty
    if not bests or any(b is None for b in bests):
        return empty
    return {"test_best_epoch_ff": bests[0], "test_best_epoch_all": max(bests)}


def read_results(path: Path) -> tuple[dict[str, Any], list[str]]:
    """results.json as the fields the report reads, and what is wrong with the file (empty when
    nothing). Never raises: an unreadable file gives every field None and one problem."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:   # ValueError: bad JSON or bad UTF-8
        return check_results({})[0], [f"unreadable results.json: {exc}"]
    if not isinstance(data, dict):
        return check_results({})[0], [f"unreadable results.json: not a JSON object, got {_type_name(data)}"]
    return check_results(data)


def check_results(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Every field the report reads, with its type checked: ``status``, ``reason``, ``primary`` and
    ``val_set`` strings, ``overrides`` a list of strings, the others numbers (counts for best_epoch and
    epochs). A missing or null field is None and no problem (a failed run writes few fields); a
    wrong-typed one is None too, and for ``overrides`` and the fields in MEANING_FIELDS it is a
    problem that names the field and the type found. Other fields (readouts, data, ...) are not read."""
    record: dict[str, Any] = {}
    problems: list[str] = []
    for key in MEANING_FIELDS + LABEL_FIELDS:
        value = data.get(key)
        record[key] = value if isinstance(value, str) else None
        if value is not None and record[key] is None and key in MEANING_FIELDS:
            problems.append(f"results.json: {key!r} must be a string, got {_type_name(value)}")
    overrides = data.get("overrides")
    record["overrides"] = None
    if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
        record["overrides"] = list(overrides)
    elif overrides is not None:
        # Overrides place the run in the table's columns and its seed group: a guess would put it
        # in the wrong one
        found = _type_name(overrides) if not isinstance(overrides, list) else \
            "a list holding " + ", ".join(sorted({_type_name(o) for o in overrides if not isinstance(o, str)}))
        problems.append(f"results.json: 'overrides' must be a list of strings, got {found}")
    for key in NUMBER_FIELDS:
        record[key] = _num(data.get(key))
    for key in COUNT_FIELDS:
        number = _num(data.get(key))
        record[key] = int(number) if number is not None and number.is_integer() and number >= 0 else None
    return record, problems


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _num(value: Any) -> float | None:
    if isinstance(value, bool):   # float(True) is 1.0: a 100% accuracy nobody measured
        return None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):   # OverflowError: a JSON integer beyond float
        return None
    return value if math.isfinite(value) else None


def _read_overrides(run_dir: Path) -> list[str] | None:
    """The run's overrides from Hydra's overrides.yaml; None (use results.json's) when it is missing
    or is not the list of strings Hydra writes."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, RecursionError, yaml.YAMLError):   # ValueError: bad UTF-8
        return None
    if isinstance(data, list) and all(isinstance(o, str) for o in data):
        return data
    return None


def _read_seed(run_dir: Path) -> str | None:
    """The seed the run used, from its composed config (a run without a seed= override has one too)."""
    path = run_dir / ".hydra" / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, ValueError, RecursionError, yaml.YAMLError):
        return None
    seed = data.get(SEED_KEY) if isinstance(data, dict) else None
    # A seed is a number (or a string someone typed): a mapping or list there is no seed to show
    return str(seed) if isinstance(seed, (int, float, str)) and not isinstance(seed, bool) else None


def _read_curve(run_dir: Path, primary: str | None) -> tuple[list[float], list[float], str | None]:
    """(epochs, accuracies) of the primary readout. A failed run's results.json may not name the
    primary, so fall back to the first readout accuracy column, as loop.train does. Cells that are
    not numbers, and short or long rows, are skipped; a file that stops parsing keeps the rows before."""
    path = run_dir / "metrics.csv"
    primary = primary if isinstance(primary, str) else None
    xs: list[float] = []
    ys: list[float] = []
    if not path.exists():
        return xs, ys, primary
    try:
        # errors="replace": a torn multi-byte character becomes a non-number cell, not an exception
        with open(path, newline="", errors="replace") as f:
            reader = csv.DictReader(f)
            columns = [c for c in reader.fieldnames or [] if isinstance(c, str)]
            if primary not in columns:
                accs = [c for c in columns if c.endswith("/acc") and not c.startswith("test/")]
                primary = accs[0] if accs else primary
            for row in reader:
                x, y = _num(row.get("epoch")), _num(row.get(primary)) if primary else None
                if x is not None and y is not None:
                    xs.append(x)
                    ys.append(y)
    except (OSError, ValueError, csv.Error):   # a crash mid-write can leave a torn last line; show what exists
        pass
    return xs, ys, primary


def rank_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best validation accuracy first; failed runs, and runs with no accuracy at all, last."""
    def key(run: dict[str, Any]) -> tuple:
        acc = run["best_val_acc"]
        last = run["status"] == "failed" or acc is None
        return (last, -(acc if acc is not None else 0.0), _natural_key(run["run"]))
    ranked = sorted(runs, key=key)
    for i, run in enumerate(ranked, 1):
        run["rank"] = i
    return ranked


def varying_params(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between runs (missing counts as a value): the swept ones."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run["params"] if k not in keys]
    return [k for k in keys if len({run["params"].get(k) for run in runs}) > 1]


@dataclass(frozen=True)
class Reference:
    """A published accuracy (a fraction) to place against one of the seed summary's figures."""

    value: float
    figure: str = "test"

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise ReportError(f"--reference must be an accuracy in percent (0-100), got {100 * self.value:g}")
        if self.figure not in FIGURES:
            raise ReportError(f"--against must be one of {', '.join(FIGURES)}, got {self.figure!r}")

    def place(self, record: dict[str, Any]) -> dict[str, Any]:
        """Where the reference lies against the setting's seeds: ``inside`` their min-max range, or
        ``above`` / ``below`` it, and how many sample standard deviations from their mean (None with one
        seed). A single published run inside the range is as likely as one of ours; outside it, the
        difference needs a cause."""
        lo, hi = record[f"{self.figure}_min"], record[f"{self.figure}_max"]
        mean, std = record[f"{self.figure}_mean"], record[f"{self.figure}_std"]
        place = None if lo is None else "below" if self.value < lo else "above" if self.value > hi else "inside"
        z = (self.value - mean) / std if std else None
        return {"reference": self.value, "reference_figure": self.figure, "reference_place": place,
                "reference_z": z}


def seed_groups(runs: Sequence[dict[str, Any]], varying: Sequence[str],
                reference: Reference | None = None) -> list[dict[str, Any]]:
    """Completed runs that differ only in ``seed``, one record per setting of the other swept
    parameters: how many seeds, and the mean and sample standard deviation of the best validation
    accuracy, the test accuracy at the best epoch and the final test accuracy. A single run's accuracy
    says little on 10k test images; a setting is judged by its seeds. With a ``reference`` each record
    also says where that figure lies against its seeds (:meth:`Reference.place`). Empty unless ``seed``
    is swept and some setting has at least two completed runs."""
    if not any(k in varying for k in SEED_KEYS):
        return []
    others = _setting_keys(varying)
    groups = _settings(runs, others)
    if not any(len(members) > 1 for members in groups.values()):
        return []
    records = []
    for values, members in groups.items():
        record: dict[str, Any] = dict(zip(others, values))
        record["n"] = len(members)
        record["seeds"] = " ".join(sorted((_seed_label(r) for r in members), key=_natural_key))
        for name, field in (("best_val", "best_val_acc"), *FIGURE_FIELDS.items()):
            record[f"{name}_mean"], record[f"{name}_std"] = _mean_std([r[field] for r in members])
            present = [r[field] for r in members if r[field] is not None]
            record[f"{name}_min"], record[f"{name}_max"] = (min(present), max(present)) if present else (None, None)
        if reference is not None:
            record |= reference.place(record)
        records.append(record)
    records.sort(key=lambda r: -(r["best_val_mean"] or 0.0))
    return records


def _settings(runs: Sequence[dict[str, Any]], others: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    """The completed, scored runs by their values of the setting keys ``others``: each list holds
    one setting's seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        if run["status"] == "completed" and run["best_val_acc"] is not None:
            groups.setdefault(tuple(run["params"].get(k) for k in others), []).append(run)
    return groups


def _seed_label(run: dict[str, Any]) -> str:
    seed = run["params"].get(SEED_KEY) or run["seed"] or "?"
    route = run["params"].get("protocol.route_seed")
    return seed if route is None else f"{seed}/{route}"


def _setting_keys(varying: Sequence[str]) -> list[str]:
    """The swept keys that define a setting: not the seeds, not bookkeeping such as checkpoint.every."""
    return [k for k in varying if k not in SEED_KEYS and not k.startswith(BOOKKEEPING_KEYS)]


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values present; no spread from one value."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None


def seed_table(records: Sequence[dict[str, Any]], varying: Sequence[str],
               reference: Reference | None = None) -> Table:
    """The seed summary: one row per setting, accuracies as mean +- sample std over its seeds; with a
    reference, a last column saying where it lies against the seeds' min-max of the chosen figure."""
    others = _setting_keys(varying)
    title = "over seeds (mean +- sample std)"
    if reference is not None:   # said once above the table: in the column's header it widened the table
        title += f"; reference {100 * reference.value:.2f}% against the min-max of {FIGURES[reference.figure]}"
    table = Table(title=title)
    for key in others:
        table.add_column(key, overflow="fold")
    # Eight or nine columns do not fit an 80-column terminal: every column may fold, and a minimum
    # width keeps rich from squeezing the narrow ones (n, seeds) to nothing.
    table.add_column("n", justify="right", no_wrap=True, min_width=2)
    table.add_column("seeds", overflow="fold", min_width=5)
    for label in ("best val", *FIGURES.values()):
        table.add_column(label, justify="right", overflow="fold", min_width=7)
    if reference is not None:
        table.add_column(f"reference {100 * reference.value:.2f}%", overflow="fold", min_width=8)
    for rec in records:
        cells = []
        for name in ("best_val", *FIGURES):
            mean, std = rec[f"{name}_mean"], rec[f"{name}_std"]
            cells.append("-" if mean is None else f"{100 * mean:.2f}%"
                         + ("" if std is None else f" +- {100 * std:.2f}"))
        if reference is not None:
            lo, hi, z = rec[f"{reference.figure}_min"], rec[f"{reference.figure}_max"], rec["reference_z"]
            cells.append("-" if rec["reference_place"] is None else
                         f"{rec['reference_place']} ({100 * lo:.2f} - {100 * hi:.2f})"
                         + ("" if z is None else f", {z:+.1f} std from the mean"))
        table.add_row(*[Text(_short(str(rec[k]))) if rec[k] is not None else "-" for k in others],
                      str(rec["n"]), Text(rec["seeds"]), *cells)
    return table


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def csv_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat summary.csv rows, in table order; the same records write_report returns."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run["params"] if k not in keys]
    rows = []
    for run in runs:
        row = {c: run.get(c) for c in RESULT_COLUMNS}
        row["overrides"] = " ".join(run["overrides"])
        row.update({PARAM_PREFIX + k: run["params"].get(k) for k in keys})
        rows.append(row)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns = list(RESULT_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    write_csv_columns(rows, columns, path)


def write_csv_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def summary_table(runs: Sequence[dict[str, Any]], varying: Sequence[str], title: str) -> Table:
    """Ranked runs; only the swept parameters get columns, the common overrides go in the caption."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    # Run names, overrides, status and reasons come from the runs' files: as Text, rich shows them as
    # they are instead of reading markup (a reason such as "loss [/] nan" would raise, "[bold]" vanish)
    table = Table(title=Text(title, style="table.title"))
    # Numbers and status never wrap; at the 80 columns of a pipe the reason takes what is left
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("run", overflow="fold")
    for key in varying:
        table.add_column(key, overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("best val", justify="right", no_wrap=True)
    table.add_column("epoch", justify="right", no_wrap=True)
    table.add_column("test", justify="right", no_wrap=True)
    table.add_column("s/epoch", justify="right", no_wrap=True)
    reasons = any(run["reason"] for run in runs)
    if reasons:
        table.add_column("reason", ratio=1, overflow="fold")
    for run in runs:
        style = "red" if run["status"] == "failed" else ("yellow" if run["status"] != "completed" else None)
        sec = run["mean_epoch_seconds"]
        table.add_row(str(run["rank"]), Text(run["run"]),
                      *[Text(_short(run["params"].get(k, "-"))) for k in varying],
                      Text(run["status"]), pct(run["best_val_acc"]), str(run["best_epoch"] or "-"),
                      pct(run["test_acc"]), "-" if sec is None else f"{sec:.2f}",
                      *([Text(run["reason"] or "")] if reasons else []), style=style)
    common = {k: v for k, v in runs[0]["params"].items() if k not in varying} if runs else {}
    primaries = sorted({r["primary"] for r in runs if r["primary"]})
    table.caption = Text("  ".join(filter(None, [
        f"readout: {', '.join(primaries)}" if primaries else "",
        ("common overrides: " + " ".join(f"{k}={v}" for k, v in common.items())) if common else "",
    ])), style="table.caption")
    return table


def _short(value: str) -> str:
    """Optuna samples floats such as 0.14135935551752302: four digits tell trials apart in a table
    (summary.csv keeps the full value)."""
    number = _as_float(value)
    return f"{number:.4g}" if number is not None and len(value) > 8 else value


def plot_summary(runs: Sequence[dict[str, Any]], varying: Sequence[str], path: Path, title: str) -> None:
    """summary.png: the primary validation-accuracy curve of every run, then best accuracy against
    each swept parameter (numeric axis when all its values are numbers, categories otherwise)."""
    import matplotlib
    matplotlib.use("Agg")   # no display in sweeps or CI; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = list(varying)[:MAX_PARAM_PANELS]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(7 + 5 * len(panels), 4.8),
                             constrained_layout=True, squeeze=False)
    ax_curves = axes[0, 0]
    for i, run in enumerate(runs):
        xs, ys = run["curve"]
        if not xs:
            continue
        label = run["run"] + "".join(f" {k}={_short(run['params'].get(k, '-'))}" for k in varying)
        ax_curves.plot(xs, ys, marker="." if len(xs) < 30 else None, color=f"C{i % 10}",
                       linestyle="-" if run["status"] == "completed" else ":", label=label)
    val_sets = sorted({str(r["val_set"]) for r in runs if r["val_set"]}) or ["validation"]
    primaries = sorted({r["primary"] for r in runs if r["primary"]})
    ax_curves.set(title=f"{', '.join(primaries) or 'primary readout'} per epoch",
                  xlabel="epoch", ylabel=f"accuracy ({'/'.join(val_sets)} set)")
    if ax_curves.get_legend_handles_labels()[0] and len(runs) <= MAX_LEGEND_RUNS:
        ax_curves.legend(fontsize=7)
    ax_curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_curves.grid(alpha=0.3)

    scored = [r for r in runs if r["best_val_acc"] is not None and r["status"] != "failed"]
    for ax, key in zip(axes[0, 1:], panels):
        _plot_param(ax, key, scored, skipped=len(runs) - len(scored), alone=len(varying) == 1)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_param(ax, key: str, runs: Sequence[dict[str, Any]], skipped: int, alone: bool) -> None:
    pts = [(r["params"].get(key), r["best_val_acc"]) for r in runs if key in r["params"]]
    values = [_as_float(v) for v, _ in pts]
    numeric = bool(pts) and all(v is not None for v in values)
    if numeric:
        xs = values
        ax.scatter(xs, [a for _, a in pts], alpha=0.6)
        # On a grid, the line follows the best run per x (over the other parameters). When other
        # parameters vary and x never repeats (random/Optuna search) a line would join unrelated
        # runs, so the points stand alone. Seeds are labels, not a quantity: no line joins seed 1
        # to seed 2 (seeds.png sums them up).
        if key not in SEED_KEYS and (alone or len(set(xs)) < len(xs)):
            best: dict[float, float] = {}
            for x, (_, acc) in zip(xs, pts):
                best[x] = max(acc, best.get(x, -math.inf))
            ax.plot(sorted(best), [best[x] for x in sorted(best)], alpha=0.8)
        if min(xs) > 0 and max(xs) / min(xs) >= 100:   # lr- or wd-like sweeps span decades
            ax.set_xscale("log")
    else:
        cats = list(dict.fromkeys(str(v) for v, _ in pts))
        ax.scatter([cats.index(str(v)) for v, _ in pts], [a for _, a in pts], alpha=0.8)
        ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 4 else 0)
    note = f"\n({skipped} failed or unscored runs not shown)" if skipped else ""
    ax.set(title=f"best accuracy vs {key}{note}", xlabel=key, ylabel="best accuracy")
    ax.grid(alpha=0.3)


def plot_seeds(runs: Sequence[dict[str, Any]], varying: Sequence[str], records: Sequence[dict[str, Any]],
               path: Path, title: str, reference: Reference | None = None) -> None:
    """seeds.png: one column per setting (seeds.csv's rows); in it each test figure the runs have (at
    the validation-chosen epoch, final, best test epoch) as one point per seed beside a bar of their mean
    +- sample std, and a published reference as a dashed line across. Whether a reported figure lies
    inside the seeds' spread, or where, is then read at a glance; seeds.csv holds the numbers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = _setting_keys(varying)
    groups = _settings(runs, others)
    shown = [name for name in FIGURES if any(rec[f"{name}_mean"] is not None for rec in records)]
    fig, ax = plt.subplots(figsize=(max(6.0, 2.0 + 1.8 * len(records)), 4.8), constrained_layout=True)
    step = 0.8 / max(1, len(shown))
    for i, rec in enumerate(records):
        members = groups[tuple(rec[k] for k in others)]
        for j, name in enumerate(shown):
            x = i + (j - (len(shown) - 1) / 2) * step
            ys = [m[FIGURE_FIELDS[name]] for m in members if m[FIGURE_FIELDS[name]] is not None]
            ax.scatter([x - step / 6] * len(ys), ys, color=f"C{j}", alpha=0.6, s=16,
                       label=FIGURES[name] if i == 0 else None)
            mean, std = rec[f"{name}_mean"], rec[f"{name}_std"]
            if mean is not None:
                ax.errorbar([x + step / 6], [mean], yerr=[std or 0.0], color=f"C{j}", marker="_",
                            markersize=10, capsize=3)
    if reference is not None:
        ax.axhline(reference.value, color="black", linestyle="--", linewidth=1,
                   label=f"reference {100 * reference.value:.2f}% (against {FIGURES[reference.figure]})")
    labels = [(", ".join(f"{k}={_short(str(rec[k]))}" for k in others) or "all runs") + f"\nn = {rec['n']}"
              for rec in records]
    ax.set_xticks(range(len(records)), labels, rotation=20 if len(records) > 4 else 0)
    ax.set_xlim(-0.6, len(records) - 0.4)
    ax.set(title=f"{title}\ntest figures over seeds (points: seeds; bars: mean +- std)", ylabel="test accuracy")
    if ax.get_legend_handles_labels()[0]:   # below the axes: inside, it would hide points
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(folder: Path | Sequence[Path], console: Console,
                 out: Path | None = None, reference: Reference | None = None) -> list[dict[str, Any]]:
    """Collect every run below ``folder`` (or below each of several folders), print the ranked table
    on ``console`` and write ``summary.csv`` and ``summary.png`` into ``out`` (default: the folder
    itself; required for several). Runs are named relative to the folders' common parent. A
    ``reference`` (a published figure) is placed against each seed group. Returns the
    summary.csv rows, best first. Raises ReportError when a folder does not exist or none holds runs."""
    folders = [Path(folder)] if isinstance(folder, (str, Path)) else [Path(f) for f in folder]
    if not folders:
        raise ReportError("no folder given")
    for f in folders:
        if f.exists() and not f.is_dir():
            raise ReportError(f"{f} is a file, not a folder; give a run folder, a sweep folder or outputs/")
        if not f.is_dir():
            raise ReportError(f"no such folder: {f}")
    if out is None:
        if len(folders) > 1:
            raise ReportError("several folders: say where the summary goes (--out DIR)")
        out = folders[0]
    # Name runs relative to what the folders share, so runA and runB keep telling names
    root = Path(os.path.commonpath([f.resolve() for f in folders]))
    run_dirs = sorted({d.resolve() for f in folders for d in find_runs(f)},
                      key=lambda p: _natural_key(p.relative_to(root).as_posix()))
    if not run_dirs:
        raise ReportError(f"no runs (no results.json) below {' or '.join(str(f) for f in folders)}")
    runs = rank_runs([load_run(d, root) for d in run_dirs])
    varying = varying_params(runs)
    failed = sum(r["status"] == "failed" for r in runs)
    name = folders[0].resolve().name if len(folders) == 1 else f"{len(folders)} folders"
    title = f"{name}: {len(runs)} runs" + (f", {failed} failed" if failed else "")
    rows = csv_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "summary.csv")
    plot_summary(runs, varying, out / "summary.png", title)
    console.print(summary_table(runs, varying, title))
    written = [out / "summary.csv", out / "summary.png"]
    by_seed = seed_groups(runs, varying, reference)
    if by_seed:
        others = _setting_keys(varying)
        extra = list(REFERENCE_COLUMNS) if reference is not None else []
        write_csv_columns(by_seed, others + list(SEED_COLUMNS) + extra, out / "seeds.csv")
        plot_seeds(runs, varying, by_seed, out / "seeds.png", title, reference)
        console.print(seed_table(by_seed, varying, reference))
        written += [out / "seeds.csv", out / "seeds.png"]
    console.print("summary: " + ", ".join(str(p) for p in written))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ffrun-report",
        description="Rank every ffrun run below one or more folders; write summary.csv and summary.png.")
    parser.add_argument("folders", type=Path, nargs="+", metavar="folder",
                        help="a run, a sweep folder (outputs/multirun/<stamp>) or outputs/; "
                             "several to compare runs kept apart")
    parser.add_argument("--out", type=Path, default=None,
                        help="where summary.csv and summary.png go (default: the folder; "
                             "required with several folders)")
    parser.add_argument("--reference", type=float, default=None, metavar="PERCENT",
                        help="a published accuracy (e.g. rmwkwok's 91.7): the seed summary says whether "
                             "it lies inside each setting's min-max and how many std from the mean")
    parser.add_argument("--against", choices=(*FIGURES, *OLD_FIGURE_NAMES), default="test",
                        help="which figure the reference is placed against (default: test, the test "
                             "accuracy at the validation-chosen epoch; test_best_epoch_ff for a figure "
                             "reported as the best test epoch)")
    args = parser.parse_args(argv)
    try:
        against = OLD_FIGURE_NAMES.get(args.against, args.against)
        reference = None if args.reference is None else Reference(args.reference / 100, against)
        write_report(args.folders, outputs.make_console(), out=args.out, reference=reference)
    except ReportError as exc:
        # A usage problem, like argparse's own: one line on stderr, exit code 2
        print(f"ffrun-report: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # e.g. a read-only outputs folder: the table was not the problem
        print(f"ffrun-report: error: cannot write the summary: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
