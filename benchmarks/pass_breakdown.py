"""Seconds of each pass of an epoch, for any preset: where does an epoch go?

Run:  FFRUN_DATA_DIR=../shared/data python benchmarks/pass_breakdown.py experiment=paper_small
      ... experiment=paper_small units=16     (tiny layers: what is left is per-step overhead)
      ... --train-only experiment=paper_small (skip the evaluation passes)

      ... --compare model.xla=false,true --rounds 6 experiment=paper_small
                                            (A/B in one process: one network per value, their
                                             training passes alternated, so a drifting machine
                                             slows both alike; medians per value)

      ... --floor --rounds 6 experiment=paper_small
                                            (the ceiling of a dense FF step: in one loop per
                                             epoch, the step's matmuls alone, then with each
                                             layer's own optimizer update, against the real
                                             pos+neg pass; rounds alternated, medians)

Arguments are Hydra overrides. Every pass (training and evaluation) is traced once, then timed twice.
"""
from __future__ import annotations

import statistics
from typing import Any
import time

from ffrun import _import_tensorflow_quietly

_import_tensorflow_quietly()
import keras  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

import ffrun.conf  # noqa: E402,F401  (registers the config schema and resolvers)
from ffrun.experiment.build import build_run  # noqa: E402
from ffrun.core.layers import FFDense, Task  # noqa: E402
from ffrun.core.trainer import TrainMgr  # noqa: E402
import tensorflow as tf  # noqa: E402


def _trainer(overrides: list[str], train_only: bool) -> TrainMgr:
    with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["progress=false", *overrides])
    keras.utils.set_random_seed(int(cfg.seed))
    run = build_run(cfg)
    mgr = TrainMgr(run.network.layers, run.network.seq, run.plan.train + ([] if train_only else run.plan.val),
                   batch_size=int(cfg.batch_size), eval_batch_size=int(cfg.eval_batch_size), seed=int(cfg.seed))
    mgr.build()
    return mgr


def compare(overrides: list[str], key: str, values: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds of every training pass for each value of ``key``, the networks alive side by side
    and their passes alternated round by round (in reversed order every other round)."""
    mgrs = {v: _trainer([*overrides, f"{key}={v}"], train_only=True) for v in values}
    for mgr in mgrs.values():            # trace and warm up
        for i, entry in enumerate(mgr.tasks):
            mgr.run_task(entry, frozenset(mgr.layers), 1, i)
    seconds: dict[str, list[float]] = {v: [] for v in values}
    for r in range(rounds):
        for v in (values if r % 2 == 0 else values[::-1]):
            mgr = mgrs[v]
            t0 = time.perf_counter()
            for i, entry in enumerate(mgr.tasks):
                mgr.run_task(entry, frozenset(mgr.layers), 2 + r, i)
            seconds[v].append(time.perf_counter() - t0)
    print(f"{' '.join(overrides)}: training passes of one epoch, {key} alternated, {rounds} rounds")
    for v, ts in seconds.items():
        print(f"  {key}={v:8s} median {statistics.median(ts):7.2f} s   " + "  ".join(f"{t:.2f}" for t in ts))
    return seconds


def floor(overrides: list[str], rounds: int) -> dict[str, Any]:
    """What a step of the paired pass could cost at best: the same matmuls at the same shapes
    (forward z = xW + b and weight gradient x^T dz for every FFDense layer, as many steps as the
    pass makes), once alone and once followed by each layer's own update (``FFDense._update``: bias
    gradient, weight decay and the fused optimizer kernel, exactly as a step runs it, XLA-compiled
    with model.xla). The first is
    the matmul roofline of the step; the second the best a step can do without element-wise work.
    The real pass of a second network with the same config is timed in the same rounds."""
    mgr = _trainer(overrides, train_only=True)
    pair = next(i for i, e in enumerate(mgr.tasks) if e.task in (Task.TRAIN_PAIR, Task.TRAIN_PAIR_READOUT))
    entry = mgr.tasks[pair]
    parts = 2 if entry.task is Task.TRAIN_PAIR else 3
    steps = -(-len(entry.resolve(1)[0]) // mgr.batch_size)
    rows = mgr.batch_size * parts
    scratch = _trainer(overrides, train_only=True)       # its weights take the synthetic updates
    dense = [layer for layer in scratch.layers.values() if isinstance(layer, FFDense)]
    for layer in dense:
        layer.build_optimizer()
    inputs = [tf.random.uniform([rows, int(layer.layer.kernel.shape[0])]) for layer in dense]
    scale = tf.Variable(1e-6)   # tiny gradients keep the weights finite; a variable is not folded away

    def loop(update: bool):
        @tf.function
        def run():
            def body(i, acc):
                for x, layer in zip(inputs, dense):
                    z = tf.matmul(x, layer.layer.kernel) + layer.layer.bias
                    grad = tf.matmul(x, z, transpose_a=True) * scale
                    if update:
                        layer._compiled(("update",), layer._update)(grad, z * scale)
                    else:
                        acc += grad[0, 0]
                return i + 1, acc
            return tf.while_loop(lambda i, _: i < steps, body, (0, 0.0))[1]
        return run

    runs = {"matmuls": loop(False), "matmuls+update": loop(True),
            "real pass": lambda: mgr.run_task(entry, frozenset(mgr.layers), 2, pair)}
    for fn in runs.values():     # trace and warm up
        fn()
    flop = sum(2 * 2 * rows * int(l.layer.kernel.shape[0]) * int(l.layer.kernel.shape[1]) for l in dense) * steps
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            out = runs[k]()
            if isinstance(out, tf.Tensor):
                out.numpy()
            seconds[k].append(time.perf_counter() - t0)
    base = statistics.median(seconds["matmuls"])
    print(f"{' '.join(overrides)}: {entry.label or entry.task.value}, {steps} steps of {rows} rows, "
          f"{len(dense)} FF dense layers, {flop / 1e9:.0f} GFLOP of forward + weight-gradient matmuls; "
          f"{rounds} rounds alternated")
    for k, ts in seconds.items():
        med = statistics.median(ts)
        print(f"  {k:15s} median {med:6.2f} s  {med / steps * 1e3:6.2f} ms/step  {flop / med / 1e9:6.1f} GFLOP/s"
              f"  {base / med:5.0%} of the matmul roofline   " + "  ".join(f"{t:.2f}" for t in ts))
    return {"seconds": seconds, "steps": steps, "rows": rows, "gflop": flop / 1e9,
            "updates": {layer.name: int(layer.optimizer.iterations.numpy()) for layer in dense}}


def main(overrides: list[str], train_only: bool = False) -> None:
    mgr = _trainer(overrides, train_only)
    everything = frozenset(mgr.layers)
    print(f"{' '.join(overrides) or '(defaults)'}: seconds per pass (trace, then 2 timed)")
    for i, entry in enumerate(mgr.tasks):
        mgr.run_task(entry, everything, 1, i)
        times = []
        for epoch in (2, 3):
            t0 = time.perf_counter()
            mgr.run_task(entry, everything, epoch, i)
            times.append(time.perf_counter() - t0)
        print(f"  {entry.label or entry.task.value:24s} {entry.task.value:11s} "
              + "  ".join(f"{t:7.2f}" for t in times))


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=paper_small")
    p.add_argument("--train-only", action="store_true", help="skip the evaluation passes")
    p.add_argument("--compare", default=None, help="KEY=V1,V2: alternate the training passes of one network per value")
    p.add_argument("--floor", action="store_true", help="the paired pass against its matmuls alone and with the updates")
    p.add_argument("--rounds", type=int, default=6, help="rounds of the --compare / --floor alternation")
    a = p.parse_args()
    if a.floor:
        floor(a.overrides, a.rounds)
    elif a.compare:
        key, _, values = a.compare.partition("=")
        compare(a.overrides, key, values.split(","), a.rounds)
    else:
        main(a.overrides, train_only=a.train_only)
