"""Recompute the BatchNorm statistics of a finished conv FF run from its training images.

A block frozen by the stage schedule keeps the BatchNorm running statistics it had at the end of its
own window, while CwComp's code keeps every block in training mode to the end. This script loads a
run's newest checkpoint, scores every readout on the validation and test sets, then, block by block
in order, recomputes the block's BatchNorm mean and variance from all training images with the final
weights, and scores again after each block. Nothing is written to the run folder.

Run:  python benchmarks/bn_recalibration.py <run folder of a conv preset with batchnorm: true>
"""
from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ffrun.app.evaluate import load_run
from ffrun.core.trainer import TrainMgr

ROWS_PER_BATCH = 1000


def accuracies(mgr: TrainMgr, plan) -> dict[str, float]:
    """Every readout's and layer's accuracy on the validation and the test set."""
    metrics = {**mgr.evaluate(plan.val, prefix="val/"), **mgr.evaluate(plan.test, prefix="test/")}
    return {k: round(v, 4) for k, v in metrics.items() if k.endswith("/acc")}


def recalibrate(run_dir: Path) -> None:
    run, mgr, epoch = load_run(run_dir)
    net, plan = run.network, run.plan
    print(f"checkpoint epoch {epoch}", accuracies(mgr, plan), flush=True)
    train = plan.train[0].resolve(1)
    train = train[0] if isinstance(train, tuple) else train
    blocks = [n for n in net.ff_names if hasattr(net.layers[n].layer, "layers")]
    print("blocks", blocks, flush=True)
    for name in blocks:
        block = net.layers[name].layer
        batchnorm = block.layers[-1]
        before_bn = keras.Sequential(block.layers[:-1])
        node = next(nd for nd in net.nodes if nd.name == name)
        total = total_sq = 0.0
        count = 0
        for i in range(0, len(train), ROWS_PER_BATCH):
            rows = slice(i, i + ROWS_PER_BATCH)
            outs = net.transform(train.X[rows], train.y[rows], train.y_ff[rows])
            h = tf.cast(before_bn(outs[node.inputs[0]]), tf.float64)   # float64: sums over 50k maps
            total += tf.reduce_sum(h, [0, 1, 2]).numpy()
            total_sq += tf.reduce_sum(h * h, [0, 1, 2]).numpy()
            count += int(h.shape[0] * h.shape[1] * h.shape[2])
        mean = total / count
        var = total_sq / count - mean ** 2
        print(name, "old mean/var", float(tf.reduce_mean(batchnorm.moving_mean)),
              float(tf.reduce_mean(batchnorm.moving_variance)), "new", mean.mean(), var.mean(), flush=True)
        batchnorm.moving_mean.assign(mean.astype(np.float32))
        batchnorm.moving_variance.assign(var.astype(np.float32))
        print(f"after recalibrating {name}", accuracies(mgr, plan), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    recalibrate(Path(sys.argv[1]))
