"""FLOP counting beside the layers it counts (as nanoGPT keeps ``estimate_mfu`` beside the model):
what one FF epoch multiplies, so that a measured epoch time becomes a share of the matmul roofline."""
from __future__ import annotations

from typing import Any

from ffrun.core.layers import TRAIN_TASKS, BaseFFLayer, FFLocalLayer, Task
from ffrun.core.trainer import TaskEntry


def dense_shape(layer: Any) -> tuple[int, int] | None:
    """(in, out) of a built layer whose weights are one 2-D kernel (a dense FF layer, a softmax
    readout), else None: the matmul shapes the roofline is measured at."""
    kernel = getattr(getattr(layer, "layer", None), "kernel", None)
    if kernel is not None and layer.layer.built and len(kernel.shape) == 2:
        return int(kernel.shape[0]), int(kernel.shape[1])
    return None


def layer_flop(name: str, layer: BaseFFLayer) -> float:
    """Forward FLOPs of one sample of a layer that trains: its node type's FLOP rule (``forward_flop``),
    never a silent 0."""
    if layer.forward_flop is None:
        raise ValueError(f"layer {name} ({type(layer).__name__}) has no FLOP count: build it from a registered node "
                         f"type (its FLOP rule sets forward_flop), or set forward_flop")
    return float(layer.forward_flop)


def ff_epoch_flop(layers: dict[str, Any], tasks: list[TaskEntry], epoch: int = 1) -> tuple[float, float]:
    """FLOPs of one FF training epoch, (counted, executed).

    counted (the definition the roofline share uses): every layer that trains in a pass does forward + weight
    gradient, two products of its forward FLOPs (``forward_flop``: 2 * in * out per row for a dense
    layer); FF layers need no input gradient.
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
        training = {name for name, layer in layers.items() if name in listed and entry.task in layer.trains_on}
        readout_trains = any(not isinstance(layers[n], FFLocalLayer) for n in training)
        for name, layer in layers.items():
            if not layer.trains_on:     # a weightless op or a readout without weights
                continue
            mm = layer_flop(name, layer)
            ff = isinstance(layer, FFLocalLayer)
            if name not in training:
                if readout_trains and ff:
                    executed += rows * mm
                continue
            # Paired rows hold positives and negatives; the readout trains on one set of rows
            # (positives, or their neutral-label copy in TRAIN_PAIR_READOUT, which the FF layers
            # also carry forward without a weight gradient).
            paired = entry.task in (Task.TRAIN_PAIR, Task.TRAIN_PAIR_READOUT)
            n = rows * (2 if paired and ff else 1)
            counted += n * 2 * mm
            half_split = getattr(layer, "owns_first_half", None) is not None and (
                entry.task == Task.TRAIN_NEG or (entry.task == Task.TRAIN_POS and not layer.peer_norm))
            executed += n * (1.5 if half_split else 2) * mm
            if entry.task == Task.TRAIN_PAIR_READOUT and ff:
                executed += rows * mm
    return counted, executed


def forward_flop(shapes: list[tuple[int, int]], rows: int) -> float:
    return rows * sum(2.0 * k * n for k, n in shapes)
