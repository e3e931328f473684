"""Seconds of each pass of an epoch, for any preset: where does an epoch go?

Run:  FFRUN_DATA_DIR=../shared/data python benchmarks/pass_breakdown.py experiment=paper_small
      ... experiment=paper_small units=16     (tiny layers: what is left is per-step overhead)
      ... --train-only experiment=paper_small (skip the evaluation passes)

Arguments are Hydra overrides. Every pass (training and evaluation) is traced once, then timed twice.
"""
from __future__ import annotations

import sys
import time

from ffrun import _import_tensorflow_quietly

_import_tensorflow_quietly()
import keras  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

import ffrun.conf  # noqa: E402,F401  (registers the config schema and resolvers)
from ffrun.experiment.build import build_run  # noqa: E402
from ffrun.core.trainer import TrainMgr  # noqa: E402


def main(overrides: list[str], train_only: bool = False) -> None:
    with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["progress=false", *overrides])
    keras.utils.set_random_seed(int(cfg.seed))
    run = build_run(cfg)
    mgr = TrainMgr(run.network.layers, run.network.seq, run.plan.train + ([] if train_only else run.plan.val),
                   batch_size=int(cfg.batch_size), eval_batch_size=int(cfg.eval_batch_size), seed=int(cfg.seed))
    mgr.build()
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
    args = sys.argv[1:]
    main([a for a in args if a != "--train-only"], train_only="--train-only" in args)
