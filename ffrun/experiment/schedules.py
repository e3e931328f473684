"""Learning-rate schedules: a multiplier of each optimizer's base rate per epoch, chosen by name."""
from __future__ import annotations

import math
from typing import Callable, Sequence

Multiplier = Callable[[int], float]


def linear_cooldown(stage_epochs: Sequence[int]) -> Multiplier:
    """Constant for the first half of a stage, then decayed linearly to about zero (the paper;
    lr * 2 * (1 + E - e) / E with e counted from 0 in a stage of E epochs, as Hinton's code and its
    PyTorch port, capped at lr). Each stage (the FF epochs, then any readout-only epochs) runs the
    schedule afresh: a readout trained alone after the cool-down should not start at a rate of zero."""
    starts = [0]
    for n in stage_epochs:
        starts.append(starts[-1] + int(n))

    def mult(epoch: int) -> float:
        stage = max(i for i in range(len(stage_epochs)) if starts[i] < epoch) if epoch > 0 else 0
        e, total = epoch - 1 - starts[stage], int(stage_epochs[stage])
        # min(): for an odd E the formula starts the second half above 1 (4/3 at E=3)
        return 1.0 if e <= total // 2 else min(1.0, 2.0 * (1 + total - e) / total)
    return mult


def cosine(stage_epochs: Sequence[int], min_factor: float = 0.0) -> Multiplier:
    """Cosine decay from the base rate to ``min_factor`` x the base rate over each stage, one value
    per epoch: epoch e (from 0 in a stage of E epochs) runs at f + (1 - f)(1 + cos(pi e / E)) / 2,
    PyTorch's CosineAnnealingLR(T_max=E, eta_min=f x lr) stepped once an epoch (DeeperForward:
    0.08 -> 0.008, f = 0.1). The last epoch stays just above the floor, as theirs does."""
    starts = [0]
    for n in stage_epochs:
        starts.append(starts[-1] + int(n))

    def mult(epoch: int) -> float:
        stage = max(i for i in range(len(stage_epochs)) if starts[i] < epoch) if epoch > 0 else 0
        e, total = epoch - 1 - starts[stage], max(int(stage_epochs[stage]), 1)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * e / total))
    return mult


#: schedule name -> maker of the multiplier from the stage lengths; None: the base rate throughout
SCHEDULES: dict[str, Callable[[Sequence[int]], Multiplier] | None] = {
    "constant": None,
    "linear_cooldown": linear_cooldown,
    "cosine": cosine,
}


def lr_multiplier(name: str, stage_epochs: Sequence[int], min_factor: float = 0.0) -> Multiplier | None:
    """The multiplier of schedule ``name`` (a choice the config schema has already checked);
    ``min_factor`` is the floor of ``cosine`` (the other schedules have none)."""
    make = SCHEDULES[str(name)]
    if make is None:
        return None
    return make(stage_epochs, min_factor) if make is cosine else make(stage_epochs)
