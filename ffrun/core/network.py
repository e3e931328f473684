"""A network: a dict of FF layers, the nodes that wire them, and the sequence function that runs
the nodes. It is the one place that sets the layers' tasks, so a caller never leaves a layer in a
task another caller does not expect."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from ffrun.core.layers import BaseFFLayer, Task

#: seq(X, y, y_ff) -> {node name: output}
SeqFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict]


@dataclass
class Node:
    name: str
    inputs: tuple[str, ...]
    label: str          # "ff": the layer sees y_ff; "true": the layer sees the true label y


@dataclass
class Roles:
    """Which layers of the network play which part."""

    ff: tuple[str, ...]              # FF layers (trained by goodness)
    softmax: tuple[str, ...] = ()    # softmax readouts and probes
    goodness: tuple[str, ...] = ()   # FFGoodness readouts (need EVAL_ALL_LABELS)
    supervised: bool = False         # the label is overlaid on the input
    classes: tuple[str, ...] = ()    # FFClassGoodness readouts (CwComp: one plain pass)

    @property
    def readouts(self) -> tuple[str, ...]:
        """Every readout that scores accuracy, the goodness readouts first."""
        return self.goodness + self.classes + self.softmax


def _flat(t: tf.Tensor) -> tf.Tensor:
    return tf.reshape(t, [tf.shape(t)[0], -1]) if t.shape.rank > 2 else t


def make_sequence(layers: Mapping[str, BaseFFLayer], nodes: list[Node],
                  image_shape: tuple[int, int, int] | None = None) -> SeqFn:
    """The sequence function ``seq(X, y, y_ff)`` that runs the nodes in order; returns all outputs.
    Data stays flat (N, D) in memory; with ``image_shape`` (H, W, C) the input node is the image
    (a reshape, free). A node with several inputs gets them flattened and concatenated."""
    def seq(X, y, y_ff):
        outs = {"input": X if image_shape is None else tf.reshape(X, [-1, *image_shape])}
        return run_nodes(layers, nodes, outs, y, y_ff)
    return seq


def run_nodes(layers: Mapping[str, BaseFFLayer], nodes: Iterable[Node], outs: dict, y: tf.Tensor,
              y_ff: tf.Tensor) -> dict:
    """Run ``nodes`` in order, each on outputs already in ``outs`` (which it extends), each layer
    doing its current task; returns ``outs``."""
    for node in nodes:
        xs = [outs[i] for i in node.inputs]
        layer = layers[node.name]
        if getattr(layer, "takes_list", False):   # a readout that reads each input in its own shape
            x = xs
        else:
            x = xs[0] if len(xs) == 1 else tf.concat([_flat(tf.cast(t, tf.float32)) for t in xs], axis=-1)
        try:
            outs[node.name] = layer.ff_do_task(x, y_ff if node.label == "ff" else y)
        except ValueError as exc:   # at trace time: say which node (Keras' shape errors do not)
            raise ValueError(f"model.layers.{node.name}: {' '.join(str(exc).split())}") from exc
    return outs


@dataclass
class Network:
    """``layers`` wired by ``seq``; ``nodes`` and ``roles`` when the builder made it (a hand-written
    sequence has neither: every layer is then an FF layer as far as the roles go)."""

    layers: dict[str, BaseFFLayer]
    seq: SeqFn
    nodes: list[Node] = field(default_factory=list)
    roles: Roles | None = None
    _forward: dict = field(default_factory=dict, repr=False)

    @property
    def ff_names(self) -> tuple[str, ...]:
        return self.roles.ff if self.roles is not None else tuple(self.layers)

    @property
    def all_label_rows(self) -> int:
        """Rows per image in an all-labels (EVAL_ALL_LABELS) pass: the overlay makes one per label."""
        return max(layer.all_label_rows for layer in self.layers.values())

    # --- tasks -------------------------------------------------------------------------------
    def set_tasks(self, active: Iterable[str], task: Task, positive: bool = True) -> None:
        """Layers in ``active`` do ``task``; every other layer only transforms. Read when a graph
        is traced: every compiled graph bakes in one task per layer."""
        active = set(active)
        for name, layer in self.layers.items():
            layer.set_task(task if name in active else Task.TRANSFORM, positive)

    @contextlib.contextmanager
    def tasks(self, active: Iterable[str], task: Task, positive: bool = True) -> Iterator[None]:
        """``set_tasks`` for the block, then every layer's task as it was (e.g. a plain forward pass
        traced in the middle of a training step)."""
        before = {name: (layer.task, layer.positive) for name, layer in self.layers.items()}
        self.set_tasks(active, task, positive)
        try:
            yield
        finally:
            for name, (t, p) in before.items():
                self.layers[name].set_task(t, p)

    def fixed_nodes(self, changing: Iterable[str]) -> frozenset[str]:
        """The nodes whose outputs cannot change while only the layers in ``changing`` train:
        every node outside it whose inputs are all fixed (the data, ``input``, is). Empty for a
        hand-written sequence (no nodes)."""
        changing, fixed = set(changing), {"input"}
        for node in self.nodes:
            if node.name not in changing and all(i in fixed for i in node.inputs):
                fixed.add(node.name)
        return frozenset(fixed - {"input"})

    def needed_nodes(self, active: Iterable[str], fixed: frozenset[str]) -> tuple[list[Node], frozenset[str]]:
        """What a pass whose ``active`` layers do its task must still run when the ``fixed``
        nodes' outputs are known: the nodes outside ``fixed`` that are active or feed one (in
        order), and the fixed nodes (or ``input``) they read."""
        wanted = set(active) - fixed
        for node in reversed(self.nodes):
            if node.name in wanted:
                wanted |= {i for i in node.inputs if i not in fixed and i != "input"}
        run = [node for node in self.nodes if node.name in wanted]
        return run, frozenset(i for node in run for i in node.inputs if i in fixed or i == "input")

    def run_from(self, outs: dict, nodes: Iterable[Node], y: tf.Tensor, y_ff: tf.Tensor) -> dict:
        """Run ``nodes`` on the outputs of the nodes they read, given in ``outs``."""
        return run_nodes(self.layers, nodes, dict(outs), y, y_ff)

    def transform(self, X: tf.Tensor, y: tf.Tensor, y_ff: tf.Tensor) -> dict:
        """Every node's output of a plain forward pass (no training, no metrics)."""
        with self.tasks((), Task.TRANSFORM):
            return self.seq(X, y, y_ff)

    def _range_readouts(self) -> dict[str, BaseFFLayer]:
        return {name: layer for name, layer in self.layers.items() if getattr(layer, "select_range", False)}

    def select_class_ranges(self) -> dict[str, float]:
        """Fix the range [S, E] of each class readout that selects one (``FFClassGoodness``
        ``select_range``) from the evaluation passes counted since its metrics were last reset;
        returns readout -> its accuracy on those passes at that range. The caller picks the
        passes: they must be validation passes, never test ones."""
        chosen = {name: layer.select_range_from_counts() for name, layer in self._range_readouts().items()}
        return {name: picked[2] for name, picked in chosen.items() if picked is not None}

    def class_ranges(self) -> dict[str, tuple[str, str]]:
        """Each range-selecting class readout's current range, as its first and last input."""
        inputs = {node.name: node.inputs for node in self.nodes}
        return {name: (inputs[name][layer.range[0]], inputs[name][layer.range[1]])
                for name, layer in self._range_readouts().items()}

    def readout_probs(self, data, readout: str | None = None, batch_size: int = 2000) -> np.ndarray:
        """Softmax probabilities of a softmax readout, one plain pass with the neutral label."""
        readout = readout or self.roles.softmax[0]
        fn = self._forward.get(readout)
        if fn is None:
            spec = [tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int32)]
            fn = tf.function(lambda X, y: tf.nn.softmax(self.transform(X, y, tf.fill(tf.shape(y), -1))[readout]),
                             input_signature=spec)
            self._forward[readout] = fn
        return np.concatenate([fn(data.X[i:i + batch_size], data.y[i:i + batch_size]).numpy()
                               for i in range(0, len(data), batch_size)])
