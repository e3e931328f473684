"""``ffrun-eval <run folder>``: evaluate a saved run on its validation and test sets.

Loads the run's own config and its newest checkpoint (or, with --best, the weights of the primary
readout's best epoch, with which every readout is scored; results.json's test_at_best gives each
readout at its own best epoch), runs every evaluation the run's protocol has, prints a table, writes
eval.json and a confusion matrix per readout (confusion.png).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ffrun import _import_tensorflow_quietly
from ffrun.errors import CheckpointError, FFRunError
from ffrun.run import outputs
from ffrun.run.resume import load_run_config

# TensorFlow (10-14 s to import) loads only when a run is evaluated: `ffrun-eval --help` and a
# usage error answer at once.
if TYPE_CHECKING:
    from ffrun.core.trainer import FFData, TrainMgr
    from ffrun.experiment.build import Network, Run

log = logging.getLogger("ffrun")


def predict(network: Network, data: FFData, readout: str, batch_size: int = 1000) -> np.ndarray:
    """Predicted labels of one readout. Goodness readouts try every label (EVAL_ALL_LABELS); softmax
    readouts of a supervised net see the neutral label, never the true one."""
    _import_tensorflow_quietly()
    import tensorflow as tf

    from ffrun.core.layers import Task
    from ffrun.experiment.protocols import neutral
    goodness = readout in network.roles.goodness
    if network.roles.supervised and not goodness:
        data = neutral(data)
    if goodness:   # batch_size counts rows; each image becomes one row per label
        batch_size = max(1, batch_size // network.all_label_rows)
    preds = []
    # goodness readouts: every layer makes its all-labels rows (the overlay one per label)
    with network.tasks(network.layers if goodness else (), Task.EVAL_ALL_LABELS if goodness else Task.TRANSFORM):
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            outs = network.seq(data.X[sl], data.y[sl], tf.maximum(data.y_ff[sl], 0) if goodness else data.y_ff[sl])
            out = outs[readout]
            preds.append(network.layers[readout].predict_all_labels(out).numpy() if goodness
                         else tf.argmax(out, axis=1).numpy())
    network.layers[readout].reset_metrics()
    return np.concatenate(preds).astype(np.int32)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def plot_confusions(mats: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mats), figsize=(5.5 * len(mats), 5), constrained_layout=True, squeeze=False)
    for ax, (name, m) in zip(axes[0], mats.items()):
        ax.imshow(np.log1p(m), cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > m.max() / 2 else "black")
        acc = np.trace(m) / max(m.sum(), 1)
        ax.set(title=f"{name}: test accuracy {100 * acc:.2f}%", xlabel="predicted", ylabel="true",
               xticks=range(len(m)), yticks=range(len(m)))
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_run(run_dir: Path, best: bool = False) -> tuple[Run, TrainMgr, int]:
    """A run folder's network built from its own config, its newest checkpoint restored (or, with
    ``best``, the best epoch's weights); returns the run, a TrainMgr over it and the checkpoint's epoch."""
    _import_tensorflow_quietly()
    import keras

    from ffrun.core.checkpoints import BestWeights, Checkpointer
    from ffrun.core.trainer import TrainMgr
    from ffrun.experiment.build import build_run
    from ffrun.experiment.plugins import load_plugins
    cfg = load_run_config(run_dir)
    load_plugins(cfg.get("plugins") or [])     # the protocols, datasets, losses ... its config names
    keras.backend.clear_session()
    keras.utils.set_random_seed(int(cfg.seed))
    run = build_run(cfg)
    net, plan = run.network, run.plan
    mgr = TrainMgr(net.layers, net.seq, plan.train + plan.val, batch_size=int(cfg.batch_size),
                   eval_batch_size=int(cfg.eval_batch_size), seed=int(cfg.seed))
    mgr.build()
    best_weights = BestWeights(net.layers)
    epoch = Checkpointer(run_dir / "checkpoints", net.layers, best_weights).restore_latest()
    if best and not best_weights.restore():
        raise CheckpointError(f"{run_dir} has no best-epoch weights in its checkpoint")
    return run, mgr, epoch


def evaluate_run(run_dir: Path, console: Console, best: bool = False) -> dict[str, Any]:
    run_dir = run_dir.expanduser().resolve()
    run, mgr, epoch = load_run(run_dir, best)
    from ffrun.core.layers import Task
    net, plan = run.network, run.plan
    metrics = {**mgr.evaluate(plan.val, prefix="val/"), **mgr.evaluate(plan.test, prefix="test/")}

    readouts = list(net.roles.readouts)
    test_pos = next(e.data for e in plan.test if e.task in (Task.EVAL, Task.EVAL_ALL_LABELS) and
                    not callable(e.data) and e.data.positive)
    y_true = test_pos.y.numpy()
    mats = {r: confusion(y_true, predict(net, test_pos, r), plan.num_classes) for r in readouts}
    result = {
        "run_dir": str(run_dir), "checkpoint_epoch": epoch, "weights": "best" if best else "final",
        "val_set": plan.val_set, "test_set": "test",
        "readouts": {r: {"val_acc": metrics.get(f"val/{r}/acc"), "test_acc": metrics.get(f"test/{r}/acc"),
                         "confusion": mats[r].tolist()} for r in readouts},
        "metrics": metrics,
    }
    outputs.write_json(run_dir / "eval.json", result)
    plot_confusions(mats, run_dir / "confusion.png", f"{run_dir.name} — epoch {epoch} ({result['weights']} weights)")

    table = Table(title=f"ffrun-eval {run_dir.name} — checkpoint epoch {epoch}, {result['weights']} weights")
    table.add_column("readout")
    table.add_column(f"{plan.val_set} acc", justify="right")
    table.add_column("test acc", justify="right")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    for r in readouts:
        table.add_row(r, pct(result["readouts"][r]["val_acc"]), pct(result["readouts"][r]["test_acc"]))
    for name in net.ff_names:
        sep = metrics.get(f"test/{name}/separation")
        if sep is not None:
            table.add_row(f"{name} separation", pct(metrics.get(f"val/{name}/separation")), pct(sep))
    console.print(table)
    console.print(f"wrote {run_dir / 'eval.json'} and {run_dir / 'confusion.png'}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ffrun-eval", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (with .hydra/ and checkpoints/)")
    parser.add_argument("--best", action="store_true", help="evaluate the weights of the primary readout's best epoch, not the last")
    args = parser.parse_args(argv)
    console = outputs.make_console()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        evaluate_run(args.run, console, best=args.best)
    except FFRunError as exc:   # as argparse's own usage errors: one line on stderr, exit code 2
        print(f"ffrun-eval: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
