"""FLOP counting beside the layers it counts (as nanoGPT keeps ``estimate_mfu`` beside the model):
what one FF epoch multiplies, so that a measured epoch time becomes a share of the matmul roofline."""
from __future__ import annotations

from typing import Any

from ffrun.core.layers import TRAIN_TASKS, FFDense, FFSoftmax, Task
from ffrun.core.trainer import TaskEntry


def dense_shape(layer: Any) -> tuple[int, int] | None:
    """(in, out) of a built FF layer with a kernel, else None."""
    if isinstance(layer, (FFDense, FFSoftmax)) and layer.layer.built:
        k = layer.layer.kernel.shape
        return int(k[0]), int(k[1])
    return None


def ff_epoch_flop(layers: dict[str, Any], tasks: list[TaskEntry], epoch: int = 1) -> tuple[float, float]:
    """FLOPs of one FF training epoch, (counted, executed).

    counted (the definition the roofline share uses): every layer that trains in a pass does forward + weight
    gradient, two matmuls, 2 * 2 * in * out per row; FF layers need no input gradient.
    executed: what the graphs really multiply. A layer with half-split routing computes the weight
    gradient of a row only on the half of the units the row owns (the rest is exactly zero), and
    FF layers that only transform still run forward where a training readout consumes them (the
    neutral-label readout pass). Layers whose output nothing consumes are pruned by TF."""
    counted = executed = 0.0
    for entry in tasks:
        if entry.task not in TRAIN_TASKS:
            continue
        data = entry.resolve(epoch)
        rows = len(data[0] if isinstance(data, tuple) else data)
        listed = set(entry.layers) if entry.layers is not None else set(layers)
        training = {name for name, layer in layers.items() if dense_shape(layer) is not None
                    and name in listed and entry.task in layer.trains_on}
        readout_trains = any(isinstance(layers[n], FFSoftmax) for n in training)
        for name, layer in layers.items():
            shape = dense_shape(layer)
            if shape is None:
                continue
            mm = 2.0 * shape[0] * shape[1]
            if name not in training:
                if readout_trains and isinstance(layer, FFDense):
                    executed += rows * mm
                continue
            # Paired rows hold positives and negatives; the readout trains on one set of rows
            # (positives, or their neutral-label copy in TRAIN_PAIR_READOUT, which the FF layers
            # also carry forward without a weight gradient).
            paired = entry.task in (Task.TRAIN_PAIR, Task.TRAIN_PAIR_READOUT)
            n = rows * (2 if paired and not isinstance(layer, FFSoftmax) else 1)
            counted += n * 2 * mm
            half_split = isinstance(layer, FFDense) and layer.owns_first_half is not None and (
                entry.task == Task.TRAIN_NEG or (entry.task == Task.TRAIN_POS and not layer.peer_norm))
            executed += n * (1.5 if half_split else 2) * mm
            if entry.task == Task.TRAIN_PAIR_READOUT and isinstance(layer, FFDense):
                executed += rows * mm
    return counted, executed


def forward_flop(shapes: list[tuple[int, int]], rows: int) -> float:
    return rows * sum(2.0 * k * n for k, n in shapes)
