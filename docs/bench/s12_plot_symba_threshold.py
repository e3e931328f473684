"""Validation accuracy of mlp_threshold and mlp_symba over epochs: mean of the seeds, band = min-max.

Run: python docs/bench/s12_plot_symba_threshold.py <folder of the runs> docs/curves_symba_threshold.png
where the folder holds mlp_{threshold,symba}_e10_s{0,1,2} (docs/results.md has their commands)."""
import csv, sys
import numpy as np
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
seeds = [0, 1, 2]
fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
for loss, style in (("threshold", "-"), ("symba", "--")):
    for ax, key in zip(axes, ("goodness/acc", "softmax/acc")):
        curves = []
        for s in seeds:
            rows = list(csv.DictReader(open(f"{sys.argv[1]}/mlp_{loss}_e10_s{s}/metrics.csv")))
            pts = {int(r["epoch"]): 100 * float(r[key]) for r in rows if r.get(key)}
            curves.append(pts)
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        a = np.array([[c[e] for e in epochs] for c in curves])
        line, = ax.plot(epochs, a.mean(0), style, marker="o", label=f"{loss}: mean of {len(seeds)} seeds, band min-max")
        ax.fill_between(epochs, a.min(0), a.max(0), color=line.get_color(), alpha=0.2)
for ax, key in zip(axes, ("goodness readout", "softmax readout")):
    ax.set(title=f"4 x 2000 MLP, {key}", xlabel="epoch", ylabel="validation accuracy (%)")
    ax.grid(alpha=0.3); ax.legend()
fig.savefig(sys.argv[2], dpi=90)
