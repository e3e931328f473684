"""Validation accuracy of mlp_threshold and mlp_symba over epochs: the mean of the seeds, band = min-max.

Run:  python benchmarks/plot_symba_threshold.py <folder of the runs> <out.png>
where the folder holds one run folder per loss and seed, named mlp_<loss>_e10_s<seed>
(docs/results.md gives the runs' commands).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402  (after the backend is chosen)
import numpy as np                # noqa: E402

LOSSES = (("threshold", "-"), ("symba", "--"))
READOUTS = (("goodness/acc", "goodness readout"), ("softmax/acc", "softmax readout"))
SEEDS = (0, 1, 2)


def validation_curve(run_dir: Path, column: str) -> dict[int, float]:
    """Accuracy (%) by epoch, from the epochs of metrics.csv that have the column."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return {int(r["epoch"]): 100 * float(r[column]) for r in csv.DictReader(f) if r.get(column)}


def plot(runs: Path, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for loss, style in LOSSES:
        for ax, (column, _) in zip(axes, READOUTS):
            curves = [validation_curve(runs / f"mlp_{loss}_e10_s{s}", column) for s in SEEDS]
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            acc = np.array([[c[e] for e in epochs] for c in curves])
            line, = ax.plot(epochs, acc.mean(0), style, marker="o",
                            label=f"{loss}: mean of {len(SEEDS)} seeds, band min-max")
            ax.fill_between(epochs, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.2)
    for ax, (_, title) in zip(axes, READOUTS):
        ax.set(title=f"4 x 2000 MLP, {title}", xlabel="epoch", ylabel="validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    plot(Path(sys.argv[1]), Path(sys.argv[2]))
