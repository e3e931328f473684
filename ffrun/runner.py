"""One training run, top to bottom: build, train epoch by epoch, test, write the outputs."""
from __future__ import annotations

import contextlib
import logging
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf
from omegaconf import DictConfig
from rich.console import Console

from ffrun import reporting
from ffrun.builder import Run, build_run
from ffrun.checkpoints import BestWeights, Checkpointer
from ffrun.errors import ConfigError
from ffrun.experiment.schema import typed
from ffrun.training import EpochResult, TrainingDiverged, TrainMgr

log = logging.getLogger("ffrun")


def lr_multiplier(cfg: DictConfig, stage_epochs: Sequence[int]) -> Callable[[int], float] | None:
    """``constant``, or ``linear_cooldown``: constant for the first half of a stage, then decayed
    linearly to about zero (the paper; lr * 2 * (1 + E - e) / E with e counted from 0 in a stage of
    E epochs, as Hinton's code and its PyTorch port, capped at lr). Each stage (the FF epochs, then any readout-only epochs) runs the schedule afresh:
    a readout trained alone after the cool-down should not start at a learning rate of zero."""
    if cfg.lr_schedule == "constant":
        return None
    if cfg.lr_schedule == "linear_cooldown":
        starts = [0]
        for n in stage_epochs:
            starts.append(starts[-1] + int(n))

        def mult(epoch: int) -> float:
            stage = max(i for i in range(len(stage_epochs)) if starts[i] < epoch) if epoch > 0 else 0
            e, total = epoch - 1 - starts[stage], int(stage_epochs[stage])
            # min(): for an odd E the formula starts the second half above 1 (4/3 at E=3)
            return 1.0 if e <= total // 2 else min(1.0, 2.0 * (1 + total - e) / total)
        return mult
    raise ConfigError(f"lr_schedule must be constant or linear_cooldown, got {cfg.lr_schedule!r}")


class BestTracker:
    """Tracks every readout's accuracy; keeps the weights of the primary readout's best epoch."""

    def __init__(self, keys: list[str], primary: str, best_weights: BestWeights):
        self.keys, self.primary, self.best_weights = keys, primary, best_weights
        self.best = {k: (-1.0, 0) for k in keys}
        self.final: dict[str, float] = {}

    def update(self, row: dict[str, float], take_snapshot: bool = True) -> None:
        for k in self.keys:
            if k in row:
                self.final[k] = row[k]
                if row[k] > self.best[k][0]:
                    self.best[k] = (row[k], int(row["epoch"]))
                    if k == self.primary and take_snapshot:
                        self.best_weights.take()


class StopRequest:
    """SIGINT/SIGTERM ask training to stop at the end of the current epoch (a checkpoint follows);
    a second Ctrl-C aborts at once."""

    def __init__(self):
        self.reason: str | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        log.warning("%s received: stopping after this epoch and writing a checkpoint (Ctrl-C again to abort now)",
                    self.reason)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class StopTraining(Exception):
    pass


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _epoch_line(result: EpochResult, total: int, acc_keys: list[str], ff_names,
                eta_seconds: float | None = None) -> str:
    m = result.metrics
    parts = [f"epoch {result.epoch}/{total}", f"{result.seconds:.1f}s"]
    parts += [f"{k.split('/')[0]} acc {m[k]:.4f}" for k in acc_keys if k in m]
    losses = [m[f"{n}/loss_{s}"] for n in ff_names for s in ("pos", "neg") if f"{n}/loss_{s}" in m]
    if losses:
        parts.append(f"ff loss {sum(losses) / len(losses):.4f}")
    seps = [m[f"{n}/separation"] for n in ff_names if f"{n}/separation" in m]
    if seps:
        parts.append(f"sep {min(seps):.3f}-{max(seps):.3f}")
    if eta_seconds is not None and result.epoch < total:
        parts.append(f"eta {_duration(eta_seconds)}")
    return "  ".join(parts)


def _tensorboard_histograms(writer, network, data, epoch: int, n: int = 512) -> None:
    """Activation and goodness histograms of every FF layer on a slice of evaluation data."""
    from ffrun.layers import Task
    for layer in network.layers.values():
        layer.set_task(Task.TRANSFORM)
    outs = network.seq(data.X[:n], data.y[:n], tf.maximum(data.y_ff[:n], 0))
    with writer.as_default(step=epoch):
        for name in network.ff_names:
            h = tf.cast(outs[name], tf.float32)
            tf.summary.histogram(f"{name}/activations", h)
            tf.summary.histogram(f"{name}/goodness", tf.reduce_sum(tf.square(h), -1))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def train(cfg: DictConfig, run_dir: Path, console: Console | None = None,
          overrides: list[str] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train the configured FF network; write metrics.csv, results.json, curves.png, checkpoints
    and TensorBoard scalars to run_dir. With ``resume``, continue from run_dir's last checkpoint."""
    spec = typed(cfg)                    # every type, choice and range, before anything is built
    if cfg.mode.name == "bp":
        if resume:
            raise ConfigError("mode=bp runs cannot be resumed")
        from ffrun import backprop
        return backprop.train(cfg, run_dir, console, overrides)
    console = console or reporting.make_console()
    eval_every = spec.eval_every
    keras.backend.clear_session()        # multirun jobs share a process: no names or graphs leak
    keras.utils.set_random_seed(int(cfg.seed))
    t_start = time.perf_counter()
    reporting.reset_peak_memory()   # a sweep's jobs share a process; each reports its own peak

    run: Run = build_run(cfg)
    layers, plan = run.network.layers, run.plan
    total_epochs = sum(e for _, e in run.schedule)
    interactive = console.is_interactive and bool(cfg.progress)
    progress = reporting.RichProgress(console, total_epochs) if interactive else None
    mgr = TrainMgr(layers, run.network.seq, plan.train + plan.val, batch_size=int(cfg.batch_size),
                   eval_batch_size=int(cfg.eval_batch_size), seed=int(cfg.seed), shuffle=bool(cfg.shuffle),
                   lr_multiplier=lr_multiplier(cfg, [n for _, n in run.schedule]), progress=progress,
                   max_loss=spec.max_loss)
    mgr.build()

    acc_keys = [f"{n}/acc" for n in run.network.roles.goodness + run.network.roles.softmax]
    primary = f"{cfg.primary_readout}/acc" if cfg.primary_readout else acc_keys[0]
    if primary not in acc_keys:
        raise ConfigError(f"primary_readout {cfg.primary_readout!r} is not a readout; readouts are "
                          f"{[k.split('/')[0] for k in acc_keys]}")
    best_weights = BestWeights(layers)
    tracker = BestTracker(acc_keys, primary, best_weights)
    ck = cfg.checkpoint
    checkpointer = Checkpointer(run_dir / "checkpoints", layers, best_weights, keep=int(ck.keep))

    rows: list[dict[str, float]] = []
    start_epoch = 0
    before: dict[str, Any] = {}   # what earlier sessions of a resumed run recorded (time, memory)
    if resume:
        before = reporting.read_json(run_dir / "results.json")
        start_epoch = checkpointer.restore_latest()
        metrics_path = run_dir / "metrics.csv"
        if metrics_path.exists():
            rows = [r for r in reporting.read_metrics(metrics_path) if r["epoch"] <= start_epoch]
        for row in rows:
            tracker.update(row, take_snapshot=False)   # best weights came back with the checkpoint
        log.info("resuming %s from epoch %d", run_dir, start_epoch)
    track_test = spec.track_test and plan.val_set != "test"
    columns = ["epoch", "stage", "seconds", "samples_per_s"] + \
              [f"{n}/{k}" for n, layer in layers.items() for k in layer.metrics] + \
              ([f"test/{k}" for k in acc_keys] if track_test else [])
    if resume:   # drop epochs after the checkpoint; atomically, so a crash here loses nothing
        reporting.rewrite_metrics(run_dir / "metrics.csv", columns, rows)
    csv_out = reporting.MetricsCSV(run_dir / "metrics.csv", columns, append=resume)
    results: dict[str, Any] = {
        "status": "running", "reason": None, "run_dir": str(run_dir),
        "mode": cfg.mode.name, "protocol": cfg.protocol.name, "val_set": plan.val_set, "test_set": "test",
        "primary": primary, "epochs_planned": total_epochs, "overrides": list(overrides or []),
        "data": {"name": run.data_name, **plan.info}, "resumed_from_epoch": start_epoch if resume else None,
    }
    reporting.write_json(run_dir / "results.json", results)
    tb = tf.summary.create_file_writer(str(run_dir / "tb")) if cfg.tensorboard.enabled else None
    hist_every = int(cfg.tensorboard.histogram_every)
    log.info("run folder: %s", run_dir)
    log.info("%s / %s on %s: %s, %d epochs planned", cfg.mode.name, cfg.protocol.name, run.data_name,
             " -> ".join(f"{n}({l.units})" if hasattr(l, "units") else n for n, l in layers.items()),
             total_epochs)
    stop = StopRequest()
    epoch_seconds: list[float] = []

    def on_epoch_end(result: EpochResult) -> None:
        row = result.row()
        if track_test and primary in row:   # the seed's way, recorded beside the honest one; never selects
            test = mgr.evaluate(plan.test, prefix="test/")
            row.update({f"test/{k}": test[f"test/{k}"] for k in acc_keys if f"test/{k}" in test})
        csv_out.write(row)
        rows.append(row)
        tracker.update(row)
        # the remaining time from this process's epochs (a resumed run's earlier epochs may have
        # run on another machine or load); evaluation epochs and plain ones average out
        epoch_seconds.append(result.seconds)
        eta = statistics.fmean(epoch_seconds) * (total_epochs - result.epoch)
        log.info(_epoch_line(result, total_epochs, acc_keys, run.network.ff_names, eta))
        if progress is not None:
            progress.end_epoch(result.epoch, f"{primary.split('/')[0]} {row[primary]:.4f}" if primary in row else "")
        if tb is not None:
            with tb.as_default(step=result.epoch):
                for key, value in row.items():
                    if key != "epoch":
                        tf.summary.scalar(key, value)
            if hist_every and result.epoch % hist_every == 0:
                _tensorboard_histograms(tb, run.network, plan.val[0].resolve(result.epoch), result.epoch)
            tb.flush()
        if ck.every and result.epoch % int(ck.every) == 0:
            checkpointer.save(result.epoch)
        stop_after = cfg.get("stop_after_epoch")
        if stop.reason is None and stop_after and result.epoch >= int(stop_after):
            stop.reason = f"stop_after_epoch={stop_after}"
        if stop.reason is not None:
            if checkpointer.manager.latest_checkpoint != str(run_dir / "checkpoints" / f"ckpt-{result.epoch}"):
                checkpointer.save(result.epoch)
            raise StopTraining(stop.reason)

    try:
        with stop, (progress or contextlib.nullcontext()):
            mgr.fit(run.schedule, start_epoch=start_epoch, on_epoch_end=on_epoch_end,
                    eval_every=eval_every)
        results["status"] = "completed"
        if rows and checkpointer.manager.latest_checkpoint != str(run_dir / "checkpoints" / f"ckpt-{int(rows[-1]['epoch'])}"):
            checkpointer.save(int(rows[-1]["epoch"]))
    except TrainingDiverged as exc:
        results.update(status="failed", reason=str(exc))
        log.error("training stopped: %s", exc)
    except (StopTraining, KeyboardInterrupt) as exc:
        how = f"{exc}" if isinstance(exc, StopTraining) else "aborted by a second Ctrl-C"
        results.update(status="interrupted", reason=f"{how}; resume with: ffrun resume={run_dir}")
        log.warning("interrupted (%s) after epoch %d; resume with: ffrun resume=%s",
                    how, int(rows[-1]["epoch"]) if rows else 0, run_dir)
    finally:
        csv_out.close()
        if tb is not None:
            tb.close()

    readouts = {k: {"final": tracker.final.get(k), "best": tracker.best[k][0] if tracker.best[k][0] >= 0 else None,
                    "best_epoch": tracker.best[k][1] or None,
                    # the seed reads its best per stage (an unsup FF stage, then its softmax-only stage)
                    "best_by_stage": reporting.best_by_stage(rows, k)} for k in acc_keys}
    if track_test:
        for k in acc_keys:
            readouts[k]["test_best_by_stage"] = reporting.best_by_stage(rows, f"test/{k}")
    if results["status"] == "completed":
        test = mgr.evaluate(plan.test, prefix="test/")
        for k in acc_keys:
            readouts[k]["test_final"] = test.get(f"test/{k}")
        if best_weights.restore():
            test_best = mgr.evaluate(plan.test, prefix="test/")
            for k in acc_keys:
                readouts[k]["test_at_best"] = test_best.get(f"test/{k}")
    train_rows = [r for r in rows if r.get("samples_per_s", 0) > 0]
    p = readouts[primary]
    results.update(
        readouts=readouts,
        final_val_acc=p["final"], best_val_acc=p["best"], best_epoch=p["best_epoch"],
        test_acc=p.get("test_at_best"), test_acc_final=p.get("test_final"),
        epochs=len(rows),
        # a resumed run adds this session's time to the earlier ones' and keeps the highest peak
        wall_seconds=round(time.perf_counter() - t_start + (_num(before.get("wall_seconds")) or 0.0), 2),
        mean_epoch_seconds=round(statistics.fmean(r["seconds"] for r in train_rows), 3) if train_rows else None,
        median_epoch_seconds=round(statistics.median(r["seconds"] for r in train_rows), 3) if train_rows else None,
        samples_per_s=round(statistics.median(r["samples_per_s"] for r in train_rows), 1) if train_rows else None,
        peak_memory_mb=max(reporting.peak_memory_mb(), _num(before.get("peak_memory_mb")) or 0.0),
    )
    reporting.write_json(run_dir / "results.json", results)
    if rows:
        reporting.plot_curves(rows, run_dir / "curves.png",
                              title=f"{cfg.mode.name} / {cfg.protocol.name} — {run_dir.name}")
    console.print(reporting.results_table(results))
    log.info("outputs: %s (metrics.csv, results.json, curves.png)", run_dir)
    return results
