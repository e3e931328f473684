"""Seconds of each pass of an epoch, for any preset: where does an epoch go?

Run:  FFRUN_DATA_DIR=../shared/data python benchmarks/pass_breakdown.py experiment=paper_small
      ... experiment=paper_small units=16     (tiny layers: what is left is per-step overhead)
      ... --train-only experiment=paper_small (skip the evaluation passes)

      ... --compare model.xla=false,true --rounds 6 experiment=paper_small
                                            (A/B in one process: one network per value, their
                                             training passes alternated, so a drifting machine
                                             slows both alike; medians per value)

Arguments are Hydra overrides. Every pass (training and evaluation) is traced once, then timed twice.
"""
from __future__ import annotations

import statistics
import sys
import time

from ffrun import _import_tensorflow_quietly

_import_tensorflow_quietly()
import keras  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

import ffrun.conf  # noqa: E402,F401  (registers the config schema and resolvers)
from ffrun.experiment.build import build_run  # noqa: E402
from ffrun.core.trainer import TrainMgr  # noqa: E402


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
    p.add_argument("--rounds", type=int, default=6, help="rounds of the --compare alternation")
    a = p.parse_args()
    if a.compare:
        key, _, values = a.compare.partition("=")
        compare(a.overrides, key, values.split(","), a.rounds)
    else:
        main(a.overrides, train_only=a.train_only)
