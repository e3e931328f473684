"""One FF training run, top to bottom: check the config, build, train epoch by epoch, test,
write the outputs. What happens at the end of each epoch is in ``callbacks``; the results.json
schema in ``results``; ``mode=bp`` runs go to ``baseline``."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from ffrun.core.checkpoints import BestWeights, Checkpointer
from ffrun.core.feature_cache import HIDDEN_FOLDER
from ffrun.core.trainer import EpochResult, PassStopped, TrainingDiverged, TrainMgr
from ffrun.errors import ConfigError
from ffrun.experiment.build import build_run
from ffrun.experiment.schedules import lr_multiplier
from ffrun.experiment.schema import typed
from ffrun.run import baseline
from ffrun.run import callbacks as cb
from ffrun.run import outputs, results
from ffrun.run import resume as resume_checks

log = logging.getLogger("ffrun")


def train(cfg: DictConfig, run_dir: Path, console: Console | None = None,
          overrides: list[str] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train the configured network; write metrics.csv, results.json, curves.png, checkpoints and
    TensorBoard scalars to run_dir. With ``resume``, continue from run_dir's last checkpoint."""
    spec = typed(cfg)                    # every type, choice and range, before anything is built
    console = console or outputs.make_console()
    overrides = list(overrides or [])
    if spec.mode.name == "bp":
        if resume:
            raise ConfigError("mode=bp runs cannot be resumed")
        return baseline.train(cfg, spec, run_dir, console, overrides)
    t_start = outputs.start_job(spec.seed)

    # --- build -------------------------------------------------------------------------------
    run = build_run(cfg)
    net, plan = run.network, run.plan
    total_epochs = sum(e for _, e in run.schedule)
    progress = outputs.RichProgress(console, total_epochs) if console.is_interactive and spec.progress else None
    mgr = TrainMgr(net, None, plan.train + plan.val, batch_size=spec.batch_size, eval_batch_size=spec.eval_batch_size,
                   seed=spec.seed, shuffle=spec.shuffle, shuffle_buffer=spec.shuffle_buffer,
                   drop_last=spec.drop_last, same_order=spec.same_order, progress=progress, max_loss=spec.max_loss,
                   augment=run.augment, feature_cache_mb=spec.feature_cache_mb,
                   feature_cache_disk_mb=spec.feature_cache_disk_mb, feature_cache_dir=run_dir / HIDDEN_FOLDER,
                   lr_multiplier=lr_multiplier(spec.lr_schedule, [n for _, n in run.schedule], spec.lr_min_factor))
    mgr.build()
    acc_keys = [f"{n}/acc" for n in net.roles.readouts]
    primary = f"{spec.primary_readout}/acc" if spec.primary_readout else acc_keys[0]
    if primary not in acc_keys:
        raise ConfigError(f"primary_readout {spec.primary_readout!r} is not a readout; readouts are "
                          f"{[k.split('/')[0] for k in acc_keys]}")
    best_weights = BestWeights(net.layers)
    best = cb.BestEpoch(acc_keys, primary, best_weights)
    checkpointer = Checkpointer(run_dir / "checkpoints", net.layers, best_weights, keep=spec.checkpoint.keep)

    # --- resume: weights, optimizer state and the rows up to the checkpoint -------------------
    start_epoch, rows, before = restore(run_dir, checkpointer, best) if resume else (0, [], {})
    track_test = spec.track_test and plan.val_set != "test"
    columns = ["epoch", "stage", "seconds", "samples_per_s"] + \
              [f"{n}/{k}" for n, layer in net.layers.items() for k in layer.metrics] + \
              ([f"test/{k}" for k in acc_keys] if track_test else [])
    if resume:   # drop epochs after the checkpoint; atomically, so a crash here loses nothing
        outputs.rewrite_metrics(run_dir / "metrics.csv", columns, rows)
    record = results.started(run_dir, mode=spec.mode.name, protocol=str(spec.protocol.name), val_set=plan.val_set,
                             primary=primary, epochs_planned=total_epochs, overrides=overrides,
                             data={"name": run.data_name, **plan.info},
                             resumed_from_epoch=start_epoch if resume else None)
    log.info("run folder: %s", run_dir)
    log.info("%s / %s on %s: %s, %d epochs planned", spec.mode.name, spec.protocol.name, run.data_name,
             " -> ".join(f"{n}({l.units})" if hasattr(l, "units") else n for n, l in net.layers.items()),
             total_epochs)

    # --- train -------------------------------------------------------------------------------
    stop = cb.StopPolicy(checkpointer, spec.stop_after_epoch, spec.checkpoint.in_memory_after_s)
    mgr.stop_requested = stop.stop_now
    callbacks: list[cb.Callback] = []      # in order: test columns before the CSV row, the stop last
    if track_test:
        callbacks.append(cb.TestTracker(lambda: mgr.evaluate(plan.test, prefix="test/"), acc_keys, primary))
    callbacks += [cb.CSVWriter(run_dir / "metrics.csv", columns, rows, append=resume), best,
                  cb.EpochLog(total_epochs, acc_keys, primary, net.ff_names, progress)]
    if spec.tensorboard.enabled:
        callbacks.append(cb.TensorBoard(run_dir / "tb", net, plan.val[0].resolve, spec.tensorboard.histogram_every))
    callbacks += [cb.PeriodicCheckpoint(checkpointer, spec.checkpoint.every), stop]

    def on_epoch_end(result: EpochResult) -> None:
        # first: the ranges from this epoch's validation pass (the last pass counted; a test pass
        # of track_test comes after and reads them), and each readout's figure at its range
        for name, acc in net.select_class_ranges().items():
            result.metrics[f"{name}/acc"] = acc
        row = result.row()
        for callback in callbacks:
            callback.on_epoch_end(result, row)

    try:
        with stop, (progress or contextlib.nullcontext()):
            try:
                mgr.fit(run.schedule, start_epoch=start_epoch, on_epoch_end=on_epoch_end, eval_every=spec.eval_every)
            except PassStopped as exc:
                raise stop.stopped_inside(exc) from None
        record["status"] = "completed"
        if rows:
            checkpointer.save_once(int(rows[-1]["epoch"]))
    except TrainingDiverged as exc:
        record.update(status="failed", reason=str(exc))
        log.error("training stopped: %s", exc)
    except (cb.StopTraining, KeyboardInterrupt) as exc:
        how = f"{exc}" if isinstance(exc, cb.StopTraining) else "aborted by a second Ctrl-C"
        if not resume_checks.complete_checkpoints(run_dir / "checkpoints"):   # aborted before the first
            then = "nothing to resume (no checkpoint yet); start the run again"
        else:
            then = f"resume with: ffrun resume={run_dir}"
        record.update(status="interrupted", reason=f"{how}; {then}")
        log.warning("interrupted (%s) after epoch %d; %s", how, int(rows[-1]["epoch"]) if rows else 0, then)
    finally:
        for callback in callbacks:
            callback.close()

    # --- test: once with the final weights, once with the best epoch's ------------------------
    readouts = {k: results.readout(rows, k, best.best[k], track_test) for k in acc_keys}
    if record["status"] == "completed":
        # a deep net's test pass can take minutes: say what the process is doing
        log.info("testing the final weights on the test set")
        test = mgr.evaluate(plan.test, prefix="test/")
        final_ranges = net.class_ranges()
        primary_epoch = readouts[primary]["best_epoch"]
        test_best = {}
        if rows and primary_epoch == int(rows[-1]["epoch"]):
            # the best epoch is the last: its weights are the final ones, tested just above (a second
            # pass took 130 s on deeperforward_resnet17_mnist's test set on a 2-core Xeon)
            test_best = test
        elif best_weights.restore():
            log.info("testing epoch %s's weights (the best on %s)", primary_epoch, plan.val_set)
            test_best = mgr.evaluate(plan.test, prefix="test/")
        for name, (first, last) in net.class_ranges().items():   # the best epoch's, restored with its weights
            readouts[f"{name}/acc"]["range"] = [first, last]
            readouts[f"{name}/acc"]["range_final"] = list(final_ranges[name])
        for k in acc_keys:
            readouts[k]["test_final"] = test.get(f"test/{k}")
            # Each readout at its own best epoch: the kept weights are the primary's best epoch's, so
            # another readout that peaked elsewhere reads its figure from that epoch's test column
            if test_best and readouts[k]["best_epoch"] == primary_epoch:
                readouts[k]["test_at_best"] = test_best.get(f"test/{k}")
            else:
                own_epoch = readouts[k]["best_epoch"]
                readouts[k]["test_at_best"] = results.figure_on_test_at(rows, k, own_epoch, plan.val_set)
    record = results.finished(record, run_dir, rows, readouts, t_start, before)
    if rows:
        outputs.plot_curves(rows, run_dir / "curves.png", title=f"{spec.mode.name} / {spec.protocol.name} — {run_dir.name}")
    console.print(outputs.results_table(record))
    log.info("outputs: %s (metrics.csv, results.json, curves.png)", run_dir)
    return record


def restore(run_dir: Path, checkpointer: Checkpointer, best: cb.BestEpoch) -> tuple[int, list[dict], dict]:
    """A resumed run's state: the checkpoint's epoch (weights, optimizer state and best weights are
    restored into the objects), metrics.csv's rows up to it, and the earlier results.json (its time
    and peak memory carry over)."""
    before = outputs.read_json(run_dir / "results.json")
    epoch, note = resume_checks.checkpoint_to_resume(run_dir)
    if note:
        log.warning(note)
    start_epoch = checkpointer.restore_latest(str(run_dir / "checkpoints" / f"ckpt-{epoch}"))
    rows = []
    if (run_dir / "metrics.csv").exists():
        rows = [r for r in outputs.read_metrics(run_dir / "metrics.csv") if r["epoch"] <= start_epoch]
    for row in rows:
        best.update(row, take_snapshot=False)   # the best weights came back with the checkpoint
    log.info("resuming %s from epoch %d", run_dir, start_epoch)
    return start_epoch, rows, before
