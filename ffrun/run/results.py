"""results.json: one schema for FF and backprop runs.

A run writes it three times: ``started`` (status running, what was planned), then the final
record (``finished``), and — through the CLI's outcome wrapper — ``record_failure`` when anything
stops it. Every write is atomic. Fields (the ffrun-report columns read them):

status, reason, run_dir, mode, protocol, val_set, test_set, primary, epochs_planned, overrides,
data, resumed_from_epoch; and at the end readouts (per readout: final, best, best_epoch,
best_by_stage, test_final, test_at_best (at its own best epoch; None when neither the kept best
weights nor a test column give it), with track_test test_best_by_stage, and for a class readout
that selects its range of layers range and range_final: [first, last input] chosen on validation for
the best epoch's and the last epoch's weights), final_val_acc,
best_val_acc, best_epoch, test_acc (at the best epoch), test_acc_final, epochs, wall_seconds,
mean_epoch_seconds, median_epoch_seconds, samples_per_s, peak_memory_mb.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ffrun.run import outputs

Row = Mapping[str, float]


def started(run_dir: Path, *, mode: str, protocol: str, val_set: str, primary: str, epochs_planned: int,
            overrides: Sequence[str], data: Mapping[str, Any] | None = None,
            resumed_from_epoch: int | None = None) -> dict[str, Any]:
    """The record of a run that has begun: written before the first epoch."""
    results = {"status": "running", "reason": None, "run_dir": str(run_dir), "mode": mode, "protocol": protocol,
               "val_set": val_set, "test_set": "test", "primary": primary, "epochs_planned": epochs_planned,
               "overrides": list(overrides)}
    if data is not None:
        results["data"] = dict(data)
    results["resumed_from_epoch"] = resumed_from_epoch
    outputs.write_json(run_dir / "results.json", results)
    return results


def readout(rows: Sequence[Row], key: str, best: tuple[float, int] | None = None,
            track_test: bool = False) -> dict[str, Any]:
    """One readout's figures from the rows of metrics.csv (``best`` when the caller tracked it)."""
    finals = [r[key] for r in rows if key in r]
    if best is None:   # the first epoch that reached the highest value
        best = max(((r[key], int(r["epoch"])) for r in rows if key in r), key=lambda t: t[0], default=(-1.0, 0))
    out = {"final": finals[-1] if finals else None, "best": best[0] if best[0] >= 0 else None,
           "best_epoch": best[1] or None,
           # the reference implementation reads its best per stage (an unsup FF stage, then its
           # softmax-only stage)
           "best_by_stage": outputs.best_by_stage(rows, key)}
    if track_test:
        out["test_best_by_stage"] = outputs.best_by_stage(rows, f"test/{key}")
    return out


def figure_on_test_at(rows: Sequence[Row], key: str, epoch: int | None, val_set: str) -> float | None:
    """A readout's test accuracy at ``epoch`` from the per-epoch rows: its own column when the
    per-epoch figures are test figures (``val_set`` test), else its ``track_test`` column; None
    when the rows do not hold it."""
    column = key if val_set == "test" else f"test/{key}"
    return next((r[column] for r in rows if int(r["epoch"]) == epoch and column in r), None)


def finished(results: dict[str, Any], run_dir: Path, rows: Sequence[Row], readouts: dict[str, dict],
             t_start: float, before: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Complete and write the record: the primary readout's figures, epochs and timing. A resumed
    run (``before``: its earlier record) adds this process's time to the earlier ones' and keeps
    the higher peak memory."""
    before = before or {}
    train_rows = [r for r in rows if r.get("samples_per_s", 0) > 0]
    p = readouts[results["primary"]]
    results.update(
        readouts=readouts,
        final_val_acc=p["final"], best_val_acc=p["best"], best_epoch=p["best_epoch"],
        test_acc=p.get("test_at_best"), test_acc_final=p.get("test_final"),
        epochs=len(rows),
        wall_seconds=round(time.perf_counter() - t_start + (_num(before.get("wall_seconds")) or 0.0), 2),
        mean_epoch_seconds=round(statistics.fmean(r["seconds"] for r in train_rows), 3) if train_rows else None,
        median_epoch_seconds=round(statistics.median(r["seconds"] for r in train_rows), 3) if train_rows else None,
        samples_per_s=round(statistics.median(r["samples_per_s"] for r in train_rows), 1) if train_rows else None,
        peak_memory_mb=max(outputs.peak_memory_mb(), _num(before.get("peak_memory_mb")) or 0.0),
    )
    outputs.write_json(run_dir / "results.json", results)
    return results


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
