"""What a run shows and leaves behind: progress bar, metrics.csv, results.json, curves.png, tables.

One rich Console serves the log handler, the progress bar and the tables (two consoles garble the
bar). Without a terminal (CI, pipes) there is no live bar, only plain log lines.
"""
from __future__ import annotations

import csv
import fcntl
import json
import logging
import math
import os
import re
import resource
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

log = logging.getLogger("ffrun")


def make_console() -> Console:
    return Console(stderr=False)


def route_logging_to(console: Console) -> None:
    """Send console log lines through ``console`` (so they print above the live bar); the file
    handler Hydra set up stays as it is."""
    if not console.is_interactive:
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    root.addHandler(RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False))


class RichProgress:
    """A live bar over epochs and one over the batches of the current pass (TrainMgr's ProgressHook)."""

    def __init__(self, console: Console, total_epochs: int):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False)
        self.epochs = self.progress.add_task("epochs", total=total_epochs, stats="")
        self.batches = self.progress.add_task("pass", total=1, stats="")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def start_pass(self, label: str, batches: int) -> None:
        self.progress.reset(self.batches, total=batches, description=label, stats="")

    def advance(self, batches_done: int) -> None:
        self.progress.update(self.batches, completed=batches_done)

    def end_pass(self) -> None:
        pass

    def end_epoch(self, epoch: int, stats: str) -> None:
        self.progress.update(self.epochs, completed=epoch, stats=stats)


def _vm_hwm_kib() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(m.group(1)) if m else None


def start_job(seed: int) -> float:
    """A clean slate for a run (sweep jobs share a process: no Keras names or graphs leak between
    jobs, and each reports its own peak memory); returns the start time."""
    import keras
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    reset_peak_memory()
    return time.perf_counter()


def reset_peak_memory() -> bool:
    """Restart the peak-memory count (Linux: VmHWM), so that each job of a sweep, which shares one
    process, reports its own peak. False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mb() -> float:
    """Peak resident memory of this process since the last ``reset_peak_memory`` (Linux VmHWM),
    else since it started (ru_maxrss; Linux and BSD report KiB)."""
    kib = _vm_hwm_kib()
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024.0, 1)


class MetricsCSV:
    """metrics.csv: one row per epoch, flushed at once so a crash keeps every finished epoch."""

    def __init__(self, path: Path, columns: Sequence[str], append: bool = False):
        self.path = path
        self.columns = list(columns)
        exists = append and path.exists()
        self._file = open(path, "a" if exists else "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, restval="", extrasaction="ignore")
        if not exists:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: Mapping[str, float]) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()

    def write_all(self, rows: Iterable[Mapping[str, float]]) -> None:
        for row in rows:
            self.write(row)
        self.close()

    def close(self) -> None:
        self._file.close()


def rewrite_metrics(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, float]]) -> None:
    """Replace metrics.csv by ``rows`` in one atomic step."""
    tmp = path.with_suffix(".csv.tmp")
    MetricsCSV(tmp, columns).write_all(rows)
    os.replace(tmp, path)


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def read_metrics(path: Path) -> list[dict[str, float]]:
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            rows.append({k: float(v) for k, v in raw.items() if v not in ("", None)})
    return rows


def best_by_stage(rows: Sequence[Mapping[str, float]], key: str) -> list[dict[str, float | int]]:
    """The best value of ``key`` and its epoch in each stage of the schedule (stages in order; a
    stage whose rows never hold ``key`` is left out). The first epoch reaching the best wins."""
    best: dict[int, dict[str, float | int]] = {}
    for row in rows:
        if key not in row or not math.isfinite(row[key]):
            continue
        stage = int(row.get("stage", 0))
        if stage not in best or row[key] > best[stage]["best"]:
            best[stage] = {"stage": stage, "best": row[key], "epoch": int(row["epoch"])}
    return [best[s] for s in sorted(best)]


def write_json(path: Path, data: Mapping) -> None:
    """Write atomically: a crash mid-write never leaves half a results.json."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)   # a full disk: the old file stays whole, no half-written twin
        raise


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_failure(path: Path, reason: str, status: str = "failed") -> None:
    """Mark results.json ``failed`` (or ``status``) with ``reason``, keeping every field already in
    it (a run that failed in epoch 40 still says what epochs 1-39 reached). Best effort: on a full
    disk or an unwritable folder the caller's one line is all there is, and nothing written before
    is lost."""
    data = read_json(path)
    if data.get("status") not in (None, status, "running"):
        data["previous_status"] = data["status"]
    data.update(status=status, reason=reason)
    try:
        write_json(path, data)
    except OSError:
        pass


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run of ffrun (its saved config or its results.json)."""
    return (folder / ".hydra" / "config.yaml").is_file() or (folder / "results.json").is_file()


def first_run_below(folder: Path) -> Path | None:
    """A run folder at or below ``folder`` (a sweep's job folders sit below it), or None."""
    if not folder.is_dir():
        return None
    if holds_run(folder):
        return folder
    marker = next(folder.rglob("results.json"), None) or next(folder.rglob(".hydra/config.yaml"), None)
    return None if marker is None else marker.parent if marker.name == "results.json" else marker.parent.parent


class RunFolderLock:
    """One process at a time owns a run folder: an exclusive ``flock`` on ``<run>/.ffrun.lock``, which
    holds the owner's pid. The kernel drops the lock when the process ends, however it ends (a
    crash, kill -9), so a stale lock file never blocks a later resume."""

    NAME = ".ffrun.lock"

    def __init__(self, folder: Path):
        self.path = folder / self.NAME
        self._fd: int | None = None

    def _in_use(self, fd: int) -> str:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        who = f"process {holder}" if holder.isdigit() else "another process"
        return (f"{self.path.parent} is in use by {who}, which holds its lock {self.path}; wait for that "
                f"process to end (or stop it) and try again")

    def busy(self) -> str | None:
        """Why the folder is in use (one line naming the process), or None. Takes no lock and
        writes nothing: a folder without a lock file is not in use."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except OSError:
            return self._in_use(fd)
        finally:
            os.close(fd)        # also drops the lock just taken

    def acquire(self) -> None:
        """Take the lock and write this process's pid into it, or raise OutputError naming the
        process that holds it (then nothing is written)."""
        from ffrun.errors import OutputError
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write the run folder {self.path.parent} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            line = self._in_use(fd)
            os.close(fd)
            raise OutputError(line) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass    # a full disk: the lock holds without the pid, a rival's line says "another process"
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)      # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o).__name__)


def accuracy_keys(rows: Iterable[Mapping[str, float]]) -> list[str]:
    keys = []
    for row in rows:
        for k in row:
            if k.endswith("/acc") and not k.startswith("test/") and k not in keys:
                keys.append(k)
    return keys


def accuracy_lines(rows: Iterable[Mapping[str, float]]) -> list[tuple[str, str, str]]:
    """(column, label, line style) of each accuracy curve: every readout on the evaluation set, and
    beside it, dashed, its test column when the run tracked the test set (``track_test=true``), so a
    curve shows how far the epoch chosen on validation sits from the test set's best."""
    rows = list(rows)
    columns = {k for r in rows for k in r}
    lines = []
    for key in accuracy_keys(rows):
        name = key.removesuffix("/acc")
        lines.append((key, name, "-"))
        if f"test/{key}" in columns:
            lines.append((f"test/{key}", f"{name} (test)", "--"))
    return lines


def plot_curves(rows: Sequence[Mapping[str, float]], path: Path, title: str = "") -> None:
    """curves.png: accuracy, per-layer losses, goodness and pos/neg separation against epochs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    ax_acc, ax_loss, ax_good, ax_sep = axes.ravel()

    def series(key):
        pts = [(r["epoch"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        return zip(*pts) if pts else ((), ())

    lines, readouts = accuracy_lines(rows), accuracy_keys(rows)
    for key, label, style in lines:     # a readout's test curve in its evaluation curve's colour
        ax_acc.plot(*series(key), color=f"C{readouts.index(key.removeprefix('test/'))}", linestyle=style, label=label)
    tracked = any(style == "--" for _, _, style in lines)
    ax_acc.set(title="readout accuracy (solid: evaluation set, dashed: test set, tracked)" if tracked
               else "readout accuracy (evaluation set)", xlabel="epoch", ylabel="accuracy")
    layers = sorted({k.split("/")[0] for r in rows for k in r if k.endswith(("/loss_pos", "/loss_pair"))})
    for i, name in enumerate(layers):
        color = f"C{i}"
        for kind, style in (("pos", "-"), ("neg", "--"), ("pair", ":")):   # pair: losses such as symba
            if any(f"{name}/loss_{kind}" in r for r in rows):
                ax_loss.plot(*series(f"{name}/loss_{kind}"), color=color, linestyle=style, label=f"{name} {kind}")
        ax_good.plot(*series(f"{name}/goodness_pos"), color=color, label=f"{name} pos")
        ax_good.plot(*series(f"{name}/goodness_neg"), color=color, linestyle="--", label=f"{name} neg")
        ax_sep.plot(*series(f"{name}/separation"), color=color, label=name)
    # class losses (cwc, pvn, cwg) log one loss per layer on training and evaluation data, and no
    # positive/negative goodness: their panel shows those two curves, the pos/neg panels say why empty
    class_layers = sorted({k.split("/")[0] for r in rows for k in r if k.endswith("/val_loss")} - set(layers))
    for i, name in enumerate(class_layers):
        ax_loss.plot(*series(f"{name}/loss"), color=f"C{i}", label=f"{name} training")
        ax_loss.plot(*series(f"{name}/val_loss"), color=f"C{i}", linestyle="--", label=f"{name} evaluation")
    ax_loss.set(title="FF training loss (solid: positive, dashed: negative, dotted: pair)" if layers or not class_layers
                else "class loss per layer (solid: training, dashed: evaluation set)", xlabel="epoch", yscale="log")
    ax_good.set(title="mean goodness on evaluation data", xlabel="epoch", yscale="log")
    ax_sep.set(title="pos/neg separation P(G+ > G-)", xlabel="epoch", ylim=(None, 1.0))
    if class_layers and not layers:
        for ax in (ax_good, ax_sep):
            ax.text(0.5, 0.5, "no negative data: the layers train on class losses", ha="center",
                    transform=ax.transAxes, color="0.4")
    for ax in axes.ravel():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_bp_curves(rows: Sequence[Mapping[str, float]], path: Path, title: str = "") -> None:
    """curves.png of a backprop baseline: accuracy (evaluation and training set), training loss and
    learning rate; the FF panels (per-layer losses, goodness) have nothing to show for it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_acc, ax_loss, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    ax_acc.plot(epochs, [r["bp/acc"] for r in rows], label="evaluation set")
    ax_acc.plot(epochs, [r["bp/train_acc"] for r in rows], linestyle="--", label="training set")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    ax_acc.legend(fontsize=7)
    ax_loss.plot(epochs, [r["bp/loss"] for r in rows])
    ax_loss.set(title="training loss (cross-entropy)", xlabel="epoch", yscale="log")
    ax_lr.plot(epochs, [r.get("bp/lr", math.nan) for r in rows])
    ax_lr.set(title="learning rate", xlabel="epoch", ylim=(0, None))
    for ax in (ax_acc, ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def results_table(results: Mapping) -> Table:
    table = Table(title=f"ffrun results — {results.get('status', '?')} "
                        f"(final/best on the {results.get('val_set')} set)")
    table.add_column("readout")
    for col in ("final", "best", "epoch", "test@final", "test@best"):
        table.add_column(col, justify="right")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    for name, r in results.get("readouts", {}).items():
        table.add_row(name.removesuffix("/acc"), pct(r.get("final")), pct(r.get("best")), str(r.get("best_epoch", "-")),
                      pct(r.get("test_final")), pct(r.get("test_at_best")))
    table.caption = ("test@best: each readout at its own best epoch (-: not kept; track_test=true keeps it); "
                     f"primary {results.get('primary')}; "
                     f"{results.get('epochs', 0)} epochs, {results.get('wall_seconds', 0):.1f} s, "
                     f"{results.get('mean_epoch_seconds') or 0:.2f} s/epoch, "
                     f"{results.get('samples_per_s') or 0:.0f} samples/s, peak {results.get('peak_memory_mb')} MB")
    return table
