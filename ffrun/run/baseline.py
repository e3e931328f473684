"""A ``mode=bp`` run: the same MLP trained end to end by Keras ``model.fit``; it writes metrics.csv,
results.json (the FF runs' schema), curves.png, TensorBoard curves and the best epoch's weights."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig
from rich.console import Console

from ffrun.experiment.backprop import baseline_data, build_mlp
from ffrun.experiment.schedules import lr_multiplier
from ffrun.experiment.schema import FFRunConfig
from ffrun.run import outputs, results

log = logging.getLogger("ffrun")
COLUMNS = ["epoch", "stage", "seconds", "samples_per_s", "bp/loss", "bp/train_acc", "bp/acc", "bp/lr"]


class _Recorder(keras.callbacks.Callback):
    def __init__(self, csv_out: outputs.MetricsCSV, rows: list, n_train: int, total: int):
        super().__init__()
        self.csv_out, self.rows, self.n_train, self.total = csv_out, rows, n_train, total

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.t0
        row = {"epoch": epoch + 1, "stage": 0, "seconds": round(seconds, 4),
               "samples_per_s": round(self.n_train / seconds, 1), "bp/loss": float(logs["loss"]),
               "bp/train_acc": float(logs["acc"]), "bp/acc": float(logs["val_acc"]),
               "bp/lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
        self.csv_out.write(row)
        self.rows.append(row)
        log.info("epoch %d/%d  %.1fs  bp acc %.4f  loss %.4f", epoch + 1, self.total, seconds, row["bp/acc"], row["bp/loss"])
        if not np.isfinite(row["bp/loss"]):
            self.model.stop_training = True


def train(cfg: DictConfig, spec: FFRunConfig, run_dir: Path, console: Console, overrides: list[str]) -> dict[str, Any]:
    t_start = outputs.start_job(spec.seed)
    data = baseline_data(spec)
    model = build_mlp(spec, data.x_train.shape[1], data.num_classes)
    epochs = spec.epochs
    rows: list[dict] = []
    record = results.started(run_dir, mode="bp", protocol=str(spec.protocol.name), val_set=str(spec.eval_on),
                             primary="bp/acc", epochs_planned=epochs, overrides=overrides)
    csv_out = outputs.MetricsCSV(run_dir / "metrics.csv", COLUMNS)
    best_ckpt = run_dir / "checkpoints" / "best.weights.h5"
    best_ckpt.parent.mkdir(exist_ok=True)
    log.info("run folder: %s", run_dir)
    log.info("bp on %s: %s, %d epochs", data.name, " -> ".join(l.name for l in model.layers[1:]), epochs)
    callbacks = [_Recorder(csv_out, rows, len(data.x_train), epochs),
                 keras.callbacks.ModelCheckpoint(str(best_ckpt), monitor="val_acc", mode="max",
                                                 save_best_only=True, save_weights_only=True)]
    mult = lr_multiplier(spec.lr_schedule, [epochs], spec.lr_min_factor)   # the FF runs' schedule (lr_schedule=linear_cooldown)
    if mult is not None:
        base_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        # Keras counts epochs from 0, lr_multiplier from 1
        callbacks.insert(0, keras.callbacks.LearningRateScheduler(lambda epoch, lr: base_lr * mult(epoch + 1)))
    if spec.tensorboard.enabled:   # Keras' own writer: <run>/tb/train and tb/validation
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tb"), write_graph=False))
    interrupted = False
    try:
        model.fit(data.x_train, data.y_train, batch_size=spec.batch_size, epochs=epochs, shuffle=spec.shuffle,
                  validation_data=(data.x_val, data.y_val), verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        # Ctrl-C: keep what the finished epochs earned (metrics.csv, the best weights) and report it
        interrupted = True
        log.warning("interrupted after %d of %d epochs (a bp run cannot be resumed)", len(rows), epochs)
    finally:
        csv_out.close()
    if not rows:
        record.update(status="interrupted" if interrupted else "failed", reason="no epoch finished")
        return results.finished(record, run_dir, rows, {"bp/acc": results.readout(rows, "bp/acc")}, t_start)
    status = "interrupted" if interrupted else "completed" if np.isfinite(rows[-1]["bp/loss"]) else "failed"
    record.update(status=status, reason={"completed": None, "failed": "non-finite loss",
                                         "interrupted": "stopped by the user"}[status])
    readout = results.readout(rows, "bp/acc")
    _, readout["test_final"] = model.evaluate(data.x_test, data.y_test, batch_size=spec.eval_batch_size, verbose=0)
    model.load_weights(str(best_ckpt))
    _, readout["test_at_best"] = model.evaluate(data.x_test, data.y_test, batch_size=spec.eval_batch_size, verbose=0)
    record = results.finished(record, run_dir, rows, {"bp/acc": readout}, t_start)
    outputs.plot_bp_curves(rows, run_dir / "curves.png", title=f"backprop baseline — {run_dir.name}")
    console.print(outputs.results_table(record))
    log.info("outputs: %s (metrics.csv, results.json, curves.png)", run_dir)
    return record
