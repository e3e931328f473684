"""How much Adam's epsilon matters in a finished run: Keras' default 1e-7 against PyTorch's 1e-8.

A port from PyTorch keeps Keras' epsilon unless it is set. Whether that changes training depends on
the size of each weight's second moment: the step is lr * m_hat / (sqrt(v_hat) + eps), so epsilon
only matters for weights whose sqrt(v_hat) is not far above it. This script loads a run's newest
checkpoint, reads each FF layer's Adam second moments, and prints per layer the 1st / 10th / 50th
percentile of sqrt(v_hat), the median ratio of the step taken with the run's epsilon to the step the
other epsilon would take, and the share of weights whose step would differ by more than 10%.
Nothing is written to the run folder.

Run:  python benchmarks/adam_epsilon.py <run folder> [--against 1e-8]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def step_ratio(velocity: np.ndarray, iterations: int, beta_2: float, epsilon: float,
               against: float) -> np.ndarray:
    """The step Keras takes with ``epsilon`` over the step PyTorch takes with ``against``, per weight.

    Keras adds epsilon to sqrt(v) and folds the bias correction into the rate
    (lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + eps)); PyTorch adds it to sqrt(v_hat).
    On v_hat's scale Keras' epsilon is therefore eps / sqrt(1 - beta_2^t)."""
    correction = np.sqrt(1.0 - beta_2 ** iterations)
    root = np.sqrt(velocity.astype(np.float64)) / correction      # sqrt(v_hat)
    return (root + against) / (root + epsilon / correction)


def second_moments(run_dir: Path) -> tuple[int, list[dict]]:
    """The checkpoint's epoch, and for each FF layer with an Adam-family optimizer: its iterations,
    beta_2, epsilon and the second moments of all its weights, flattened."""
    from ffrun.app.evaluate import load_run
    run, _, epoch = load_run(run_dir)
    rows = []
    for name in run.network.ff_names:
        layer = run.network.layers[name]
        opt = layer.optimizer
        if opt is None or not hasattr(opt, "_velocities"):
            continue
        velocity = np.concatenate([opt._velocities[opt._get_variable_index(v)].numpy().ravel()
                                   for v in layer.layer.trainable_variables])
        rows.append({"layer": name, "optimizer": type(opt).__name__, "iterations": int(opt.iterations.numpy()),
                     "beta_2": float(opt.beta_2), "epsilon": float(opt.epsilon), "velocity": velocity})
    return epoch, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished or interrupted run folder with a checkpoint")
    parser.add_argument("--against", type=float, default=1e-8, help="the other epsilon (PyTorch's: 1e-8)")
    args = parser.parse_args(argv)
    epoch, rows = second_moments(args.run)
    if not rows:
        print(f"{args.run}: no FF layer trains with an Adam-family optimizer")
        return 1
    print(f"checkpoint epoch {epoch}; step with the run's epsilon / step with {args.against:g}")
    print(f"{'layer':<10} {'optimizer':<9} {'steps':>7} {'eps':>8} {'sqrt(v_hat) p1 / p10 / p50':>32} "
          f"{'median ratio':>12} {'differs > 10%':>13}")
    for row in rows:
        ratio = step_ratio(row["velocity"], row["iterations"], row["beta_2"], row["epsilon"], args.against)
        root = np.sqrt(row["velocity"].astype(np.float64) / (1.0 - row["beta_2"] ** row["iterations"]))
        p1, p10, p50 = np.percentile(root, [1, 10, 50])
        print(f"{row['layer']:<10} {row['optimizer']:<9} {row['iterations']:>7} {row['epsilon']:>8.0e} "
              f"{p1:>10.2e} / {p10:.2e} / {p50:.2e} {np.median(ratio):>12.4f} "
              f"{np.mean(np.abs(ratio - 1.0) > 0.1):>12.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
