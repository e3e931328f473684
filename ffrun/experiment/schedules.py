"""Learning-rate schedules: a multiplier of each optimizer's base rate per epoch, chosen by name."""
from __future__ import annotations

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


#: schedule name -> maker of the multiplier from the stage lengths; None: the base rate throughout
SCHEDULES: dict[str, Callable[[Sequence[int]], Multiplier] | None] = {
    "constant": None,
    "linear_cooldown": linear_cooldown,
}


def lr_multiplier(name: str, stage_epochs: Sequence[int]) -> Multiplier | None:
    """The multiplier of schedule ``name`` (a choice the config schema has already checked)."""
    make = SCHEDULES[str(name)]
    return None if make is None else make(stage_epochs)
