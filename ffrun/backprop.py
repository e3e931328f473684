"""mode=bp: the same MLP (same widths, same data, softmax on top) trained end to end by backprop,
so every FF result has a same-architecture backprop figure beside it."""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig
from rich.console import Console

from ffrun import reporting
from ffrun.builder import _int, _per_layer, make_initializer, make_optimizer
from ffrun.data import load_splits
from ffrun.errors import ConfigError
from ffrun.runner import lr_multiplier

log = logging.getLogger("ffrun")


def _classes(cfg: DictConfig, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The five-digits protocol compares on its positive classes; other protocols on all classes."""
    if cfg.protocol.name != "five_digits":
        return x, y
    classes = list(cfg.protocol.positive_classes)
    keep = np.isin(y, classes)
    remap = {c: i for i, c in enumerate(classes)}
    return x[keep], np.array([remap[v] for v in y[keep]], np.int32)


def build_mlp(cfg: DictConfig, input_dim: int, num_classes: int) -> keras.Model:
    m = cfg.model
    n = _int(m.num_layers, "num_layers")
    units = _per_layer(m.units, n, "units", _int)
    dtype = "mixed_bfloat16" if m.get("precision", "fp32") == "bf16" else None
    inputs = keras.Input((input_dim,))
    h = inputs
    dropout = float(cfg.mode.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"mode.dropout must be in [0, 1), got {dropout}")
    for i, u in enumerate(units):
        # backprop uses the plain activation: a full-gradient ReLU is an FF training device
        h = keras.layers.Dense(u, activation=m.activation.removesuffix("_full_grad"), kernel_initializer=make_initializer(m.init),
                               name=f"dense{i + 1}", dtype=dtype)(h)
        if dropout:   # the regularizer of the paper's backprop figures; FF layers have none
            h = keras.layers.Dropout(dropout, name=f"dropout{i + 1}")(h)
    out = keras.layers.Dense(num_classes, name="softmax", dtype="float32")(h)
    model = keras.Model(inputs, out, name="bp_mlp")
    # no XLA: the FF graphs do not use it either, and it showed no gain on this CPU
    model.compile(optimizer=make_optimizer(cfg.mode.optimizer, "mode.optimizer"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")], jit_compile=False)
    return model


class _Recorder(keras.callbacks.Callback):
    def __init__(self, csv_out: reporting.MetricsCSV, rows: list, n_train: int, total: int):
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


def train(cfg: DictConfig, run_dir: Path, console: Console | None = None,
          overrides: list[str] | None = None) -> dict[str, Any]:
    console = console or reporting.make_console()
    keras.backend.clear_session()
    keras.utils.set_random_seed(int(cfg.seed))
    t_start = time.perf_counter()
    reporting.reset_peak_memory()   # a sweep's jobs share a process; each reports its own peak
    d = cfg.data
    splits = load_splits(d.name, d.get("path"), _int(d.val_size, "data.val_size", 0), d.normalize,
                         d.get("train_size"), d.get("test_size"), num_classes=d.get("num_classes"))
    x_tr, y_tr = _classes(cfg, splits.x_train, splits.y_train)
    if cfg.eval_on == "test":
        x_val, y_val = _classes(cfg, splits.x_test, splits.y_test)
    elif len(splits.x_val):
        x_val, y_val = _classes(cfg, splits.x_val, splits.y_val)
    else:
        raise ConfigError("eval_on=validation needs data.val_size > 0")
    x_te, y_te = _classes(cfg, splits.x_test, splits.y_test)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    model = build_mlp(cfg, splits.input_dim, num_classes)
    epochs = _int(cfg.epochs, "epochs")
    rows: list[dict] = []
    csv_out = reporting.MetricsCSV(run_dir / "metrics.csv", ["epoch", "stage", "seconds", "samples_per_s",
                                                             "bp/loss", "bp/train_acc", "bp/acc", "bp/lr"])
    best_ckpt = run_dir / "checkpoints" / "best.weights.h5"
    best_ckpt.parent.mkdir(exist_ok=True)
    log.info("run folder: %s", run_dir)
    log.info("bp on %s: %s, %d epochs", splits.name, " -> ".join(l.name for l in model.layers[1:]), epochs)
    callbacks = [_Recorder(csv_out, rows, len(x_tr), epochs),
                 keras.callbacks.ModelCheckpoint(str(best_ckpt), monitor="val_acc", mode="max",
                                                 save_best_only=True, save_weights_only=True)]
    mult = lr_multiplier(cfg, [epochs])   # the FF runs' schedule (lr_schedule=linear_cooldown)
    if mult is not None:
        base_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        # Keras counts epochs from 0, lr_multiplier from 1
        callbacks.insert(0, keras.callbacks.LearningRateScheduler(lambda epoch, lr: base_lr * mult(epoch + 1)))
    if cfg.tensorboard.enabled:   # Keras' own writer: <run>/tb/train and tb/validation
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tb"), write_graph=False))
    interrupted = False
    try:
        model.fit(x_tr, y_tr, batch_size=int(cfg.batch_size), epochs=epochs, shuffle=bool(cfg.shuffle),
                  validation_data=(x_val, y_val), verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        # Ctrl-C: keep what the finished epochs earned (metrics.csv, the best weights) and report it
        interrupted = True
        log.warning("interrupted after %d of %d epochs (a bp run cannot be resumed)", len(rows), epochs)
    finally:
        csv_out.close()
    if not rows:
        results = {"status": "interrupted" if interrupted else "failed", "reason": "no epoch finished",
                   "run_dir": str(run_dir), "mode": "bp", "epochs": 0, "epochs_planned": epochs,
                   "overrides": list(overrides or [])}
        reporting.write_json(run_dir / "results.json", results)
        return results
    status = ("interrupted" if interrupted else
              "completed" if np.isfinite(rows[-1]["bp/loss"]) else "failed")
    _, test_final = model.evaluate(x_te, y_te, batch_size=int(cfg.eval_batch_size), verbose=0)
    best_row = max(rows, key=lambda r: r["bp/acc"])
    model.load_weights(str(best_ckpt))
    _, test_best = model.evaluate(x_te, y_te, batch_size=int(cfg.eval_batch_size), verbose=0)
    results = {
        "status": status,
        "reason": {"completed": None, "failed": "non-finite loss", "interrupted": "stopped by the user"}[status],
        "run_dir": str(run_dir), "mode": "bp", "protocol": cfg.protocol.name,
        "val_set": "test" if cfg.eval_on == "test" else "validation", "test_set": "test", "primary": "bp/acc",
        "readouts": {"bp/acc": {"final": rows[-1]["bp/acc"], "best": best_row["bp/acc"],
                                "best_epoch": int(best_row["epoch"]), "test_final": test_final,
                                "test_at_best": test_best}},
        "final_val_acc": rows[-1]["bp/acc"], "best_val_acc": best_row["bp/acc"], "best_epoch": int(best_row["epoch"]),
        "test_acc": test_best, "test_acc_final": test_final, "epochs": len(rows), "epochs_planned": epochs,
        "wall_seconds": round(time.perf_counter() - t_start, 2),
        "mean_epoch_seconds": round(statistics.fmean(r["seconds"] for r in rows), 3),
        "median_epoch_seconds": round(statistics.median(r["seconds"] for r in rows), 3),
        "samples_per_s": round(statistics.median(r["samples_per_s"] for r in rows), 1),
        "peak_memory_mb": reporting.peak_memory_mb(), "overrides": list(overrides or []),
    }
    reporting.write_json(run_dir / "results.json", results)
    reporting.plot_bp_curves(rows, run_dir / "curves.png", title=f"backprop baseline — {run_dir.name}")
    console.print(reporting.results_table(results))
    log.info("outputs: %s (metrics.csv, results.json, curves.png)", run_dir)
    return results
