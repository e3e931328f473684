"""Data protocols: which samples are positive, how negatives are made, and the passes of an epoch.

A protocol turns image splits into a ``Plan``: the (task, dataset) passes TrainMgr runs every epoch
(training + validation) and the passes of the final test evaluation. Negatives that are drawn
afresh every epoch are functions of the epoch, seeded by (seed, epoch), so a resumed run draws
exactly what an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf
from omegaconf import ListConfig

from ffrun.data import ImageSplits
from ffrun.errors import ConfigError
from ffrun.layers import Task
from ffrun.training import FFData, TaskEntry

NEG_LABEL_DRAWS = ("once", "every_epoch")


@dataclass
class Roles:
    """Which layers of the network play which part (from the builder)."""

    ff: tuple[str, ...]              # FF layers (trained by goodness)
    softmax: tuple[str, ...] = ()    # softmax readouts and probes
    goodness: tuple[str, ...] = ()   # FFGoodness readouts (need EVAL_DUPED)
    supervised: bool = False         # the label is overlaid on the input


@dataclass
class Plan:
    num_classes: int
    train: list[TaskEntry]
    val: list[TaskEntry]
    test: list[TaskEntry]
    val_set: str                     # "validation" or "test": where the per-epoch figures come from
    routing: list[np.ndarray] | None = None   # per FF layer (classes x units) 0/1, or None
    neg_routing: str = "same"
    info: dict = field(default_factory=dict)


class PerEpoch:
    """A dataset drawn afresh each epoch by ``make(epoch)``; cached so passes of one epoch agree."""

    def __init__(self, make: Callable[[int], FFData | tuple]):
        self.make = make
        self._epoch, self._value = None, None

    def __call__(self, epoch: int):
        if epoch != self._epoch:
            # Let go of the last epoch's set before drawing the next: two 50k-image sets at once
            # were the peak of an unsupervised run.
            self._epoch, self._value = None, None
            self._epoch, self._value = epoch, self.make(epoch)
        return self._value


def neutral(data: FFData) -> FFData:
    """The same images with the neutral label (-1): for readouts that must not see the true label."""
    return FFData(data.X, data.y, tf.fill(tf.shape(data.y), -1), positive=True)


def wrong_labels(y: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A label drawn uniformly from the classes other than y (never equal to y)."""
    return ((y + rng.integers(1, num_classes, size=len(y))) % num_classes).astype(np.int32)


def make_entries(roles: Roles, pos: FFData, neg: FFData | PerEpoch, *, paired: bool, split: str,
                 readout_in_step: bool = False, hard_from: str | None = None) -> list[TaskEntry]:
    """The passes for one split. ``split='train'`` gives training passes, else evaluation passes.
    Positives are fixed; negatives may be drawn afresh every epoch.

    Supervised nets see the label in the input, so their softmax readouts are trained and scored
    only on neutral-label inputs: a readout that saw the true label would be leaky. They train in
    a pass of their own after the FF pass, or (``readout_in_step``, paired only) in the FF step
    itself on a neutral-label copy of the positives, as Hinton's code does. ``hard_from`` (paired
    only) names the softmax readout that picks every batch's wrong labels inside the step."""
    ff, sm, sup = roles.ff, roles.softmax, roles.supervised
    entries: list[TaskEntry] = []
    if split == "train":
        if paired:
            pair = (lambda epoch: (pos, neg(epoch))) if callable(neg) else (pos, neg)
            if sup and sm and readout_in_step:
                return [TaskEntry(Task.TRAIN_PAIR_READOUT, pair, ff + sm, "train pos+neg+readout", hard_from)]
            entries.append(TaskEntry(Task.TRAIN_PAIR, pair, ff if sup else None, "train pos+neg", hard_from))
        else:
            entries.append(TaskEntry(Task.TRAIN_POS, pos, ff if sup else None, "train pos"))
            entries.append(TaskEntry(Task.TRAIN_NEG, neg, ff, "train neg"))
        if sup and sm:
            entries.append(TaskEntry(Task.TRAIN_POS, neutral(pos), sm, "train readout"))
        return entries
    entries.append(TaskEntry(Task.EVAL, pos, ff if sup else None, f"{split} pos"))
    entries.append(TaskEntry(Task.EVAL, neg, ff, f"{split} neg"))
    if sup and roles.goodness:
        entries.append(TaskEntry(Task.EVAL_DUPED, pos, roles.goodness, f"{split} all labels"))
    if sup and sm:
        entries.append(TaskEntry(Task.EVAL, neutral(pos), sm, f"{split} readout"))
    return entries


def _eval_splits(splits: ImageSplits, eval_on: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-epoch evaluation set and final test set. ``eval_on=test`` is the seed's practice
    (evaluate on the test set every epoch); results then say the figures come from the test set."""
    if eval_on == "test":
        return {"val": (splits.x_test, splits.y_test), "test": (splits.x_test, splits.y_test)}
    if eval_on != "validation":
        raise ConfigError(f"eval_on must be validation or test, got {eval_on!r}")
    if len(splits.x_val) == 0:
        raise ConfigError("eval_on=validation needs data.val_size > 0")
    return {"val": (splits.x_val, splits.y_val), "test": (splits.x_test, splits.y_test)}


# --- the protocols ------------------------------------------------------------------------
# Each protocol function returns the positive and negative data of the training set and of a
# given evaluation set; ``make_plan`` turns them into passes.

@dataclass
class Spec:
    """What the network must know before it is built."""

    num_classes: int
    routing: list[np.ndarray] | None = None
    neg_routing: str = "same"


def _draw_mode(value: str) -> str:
    if value not in NEG_LABEL_DRAWS:
        raise ConfigError(f"protocol.neg_labels must be one of {NEG_LABEL_DRAWS}, got {value!r}")
    return value


def _positive_classes(proto, splits: ImageSplits) -> np.ndarray:
    classes = np.asarray(list(proto.positive_classes), np.int32)
    if len(classes) < 2 or len(set(classes.tolist())) != len(classes) or classes.min() < 0 \
            or classes.max() >= splits.num_classes:
        raise ConfigError(f"protocol.positive_classes must be >= 2 distinct classes of 0..{splits.num_classes - 1}")
    return classes


def routing_matrices(splitting: str, units: list[int], num_classes: int, seed: int) -> list[np.ndarray]:
    """Per FF layer a (classes x units) 0/1 matrix: set A (half the classes) owns the first half of
    the units, set B the second. ``random``: a split per layer; ``same``: one for all; ``none``: ones."""
    out = []
    shared = np.random.default_rng([seed, 0]).permutation(num_classes)
    for i, u in enumerate(units):
        r = np.ones((num_classes, u), np.float32)
        if splitting != "none":
            perm = shared if splitting == "same" else np.random.default_rng([seed, i + 1]).permutation(num_classes)
            in_a = np.zeros(num_classes, bool)
            in_a[perm[: num_classes // 2]] = True
            r[in_a, u // 2:] = 0.0
            r[~in_a, : u // 2] = 0.0
        out.append(r)
    return out


SPLITTINGS = ("random", "same", "none")


def prepare(proto, splits: ImageSplits, model, supervised: bool, seed: int) -> Spec:
    """Number of classes and routing the network needs, from the protocol config."""
    name = proto.name
    if name == "five_digits":
        return Spec(len(_positive_classes(proto, splits)))
    if name == "split":
        if proto.splitting not in SPLITTINGS:
            raise ConfigError(f"splitting must be one of {SPLITTINGS}, got {proto.splitting!r}")
        if proto.splitting == "none" and not supervised:
            raise ConfigError("splitting=none is supervised only: unsup negatives use the units the "
                              "sample's class does NOT own, which would be none")
        n = int(model.num_layers)
        units = list(model.units) if isinstance(model.units, (list, tuple, ListConfig)) else [model.units] * n
        try:
            units = [int(u) for u in units]
        except (TypeError, ValueError):
            raise ConfigError(f"units must be integers, got {model.units!r}") from None
        routing = routing_matrices(proto.splitting, units, splits.num_classes, int(proto.route_seed))
        return Spec(splits.num_classes, routing, "same" if supervised else "complement")
    if name == "wrong_label":
        if not supervised:
            raise ConfigError("protocol wrong_label needs the label in the input: use mode=sup")
        return Spec(splits.num_classes)
    if name == "hybrid":
        if supervised:
            raise ConfigError("protocol hybrid is the unsupervised recipe: use mode=unsup")
        return Spec(splits.num_classes)
    raise ConfigError(f"unknown protocol {name!r}")


def _five_digits(proto, splits, x, y, seed, stream):
    """Seed "Result 1": images of the positive classes are positive with their labels; images of
    the other classes are negative, each with a random positive-class label."""
    classes = _positive_classes(proto, splits)
    c = len(classes)
    remap = np.full(splits.num_classes, -1, np.int32)
    remap[classes] = np.arange(c, dtype=np.int32)
    is_pos = remap[y] >= 0
    pos = FFData.from_numpy(x[is_pos], remap[y[is_pos]])
    x_neg, y_neg = tf.constant(x[~is_pos]), tf.constant(y[~is_pos])
    draw = lambda *key: FFData(x_neg, y_neg, tf.constant(
        np.random.default_rng([seed, stream, *key]).integers(0, c, size=int(x_neg.shape[0])).astype(np.int32)),
        positive=False)
    return pos, draw


def _wrong_label(splits, x, y, seed, stream):
    """Positives: images with their true label; negatives: the same images with a wrong label."""
    pos = FFData.from_numpy(x, y)
    y_np = y.astype(np.int32)
    draw = lambda *key: FFData(pos.X, pos.y, tf.constant(
        wrong_labels(y_np, splits.num_classes, np.random.default_rng([seed, stream, *key]))), positive=False)
    return pos, draw


def hybrid_images(X: tf.Tensor, seed: tf.Tensor, height: int, width: int, blur_steps: int,
                  chunk: int = 8192) -> tf.Tensor:
    """Hinton's unsupervised negatives: a random bit image blurred ``blur_steps`` times with
    [1/4, 1/2, 1/4] across and down, thresholded at 0.5, mixes each image a with a different
    image b as m*a + (1-m)*b. Stateless in ``seed`` (shape [2]). The random draws cover the whole
    set at once; the blur and the mixing run ``chunk`` images at a time, which keeps the float
    temporaries of a 60k-image set (190 MB each) from piling up, and gives the same images."""
    n = int(X.shape[0])
    seeds = tf.random.experimental.stateless_split(seed, 2)
    bits = tf.random.stateless_uniform([n, height, width, 1], seeds[0]) < 0.5
    # partner j = i + k (mod n), k in [1, n): always another image
    shift = tf.random.stateless_uniform([n], seeds[1], minval=1, maxval=max(n, 2), dtype=tf.int32)
    partner = (tf.range(n) + shift) % n
    k = tf.constant([0.25, 0.5, 0.25])
    kx, ky = tf.reshape(k, [1, 3, 1, 1]), tf.reshape(k, [3, 1, 1, 1])
    parts = []
    for start in range(0, n, chunk):
        m = tf.cast(bits[start:start + chunk], tf.float32)
        for _ in range(blur_steps):
            m = tf.nn.conv2d(tf.nn.conv2d(m, kx, 1, "SAME"), ky, 1, "SAME")
        mask = tf.reshape(tf.cast(m > 0.5, X.dtype), [-1, height * width])
        a, b = X[start:start + chunk], tf.gather(X, partner[start:start + chunk])
        parts.append(mask * a + (1.0 - mask) * b)
    return tf.concat(parts, 0) if len(parts) > 1 else parts[0]


def _hybrid(proto, splits, x, y, seed, stream):
    pos = FFData.from_numpy(x, y)
    h, w = splits.image_shape
    if h * w != x.shape[1]:
        raise ConfigError("protocol hybrid needs 2-D images")
    steps = int(proto.blur_steps)
    draw = lambda *key: FFData(
        hybrid_images(pos.X, tf.constant([seed * 1000 + stream, key[0]], tf.int64), h, w, steps),
        pos.y, pos.y, positive=False)
    return pos, draw


def hard_wrong_labels(probs: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wrong label per row, drawn in proportion to the model's own class probabilities with the
    true class masked out (Hinton's "hard" negatives)."""
    p = np.array(probs, np.float64)
    p[np.arange(len(y)), y] = 0.0
    p += 1e-12                                   # a row that puts all mass on the truth: uniform
    p[np.arange(len(y)), y] = 0.0
    cdf = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
    labels = (cdf < rng.random(len(y))[:, None]).sum(1)
    return np.minimum(labels, p.shape[1] - 1).astype(np.int32)


def make_plan(proto, splits: ImageSplits, roles: Roles, *, seed: int, eval_on: str, pairing: str,
              readout_step: str = "separate",
              readout_probs: Callable[[FFData], np.ndarray] | None = None) -> Plan:
    """The passes of an epoch and of the final test for the configured protocol. ``readout_probs``
    (the network's neutral-label softmax) is needed for hard negatives only."""
    if pairing not in ("separate", "same_step"):
        raise ConfigError(f"pairing must be separate or same_step, got {pairing!r}")
    if readout_step not in ("separate", "same_step"):
        raise ConfigError(f"readout_step must be separate or same_step, got {readout_step!r}")
    name = proto.name
    paired = pairing == "same_step"
    if readout_step == "same_step" and not paired:
        raise ConfigError("readout_step=same_step trains the readout in the pos+neg step: it needs pairing=same_step")
    if name == "five_digits" and paired:
        raise ConfigError("protocol five_digits has unequal positive and negative sets: use pairing=separate")

    def source(x, y, stream):
        if name == "five_digits":
            return _five_digits(proto, splits, x, y, seed, stream)
        if name == "hybrid":
            return _hybrid(proto, splits, x, y, seed, stream)
        if name == "split" and not roles.supervised:   # negatives: the same images, other half of units
            pos = FFData.from_numpy(x, y)
            return pos, lambda *key: FFData(pos.X, pos.y, pos.y_ff, positive=False)
        return _wrong_label(splits, x, y, seed, stream)

    pos, draw = source(splits.x_train, splits.y_train, 1)
    fresh = name == "hybrid" or _draw_mode(proto.get("neg_labels", "once")) == "every_epoch"
    negatives = proto.get("negatives", "uniform")
    if negatives not in ("uniform", "hard", "hard_batch"):
        raise ConfigError(f"protocol.negatives must be uniform, hard or hard_batch, got {negatives!r}")
    if negatives != "uniform" and (name != "wrong_label" or not roles.softmax):
        raise ConfigError("hard negatives need protocol=wrong_label and a softmax readout (model.readouts)")
    if negatives == "hard_batch" and not paired:
        raise ConfigError("negatives=hard_batch draws each batch's wrong labels in the pos+neg step: it needs "
                          "pairing=same_step")
    if negatives == "hard":
        if readout_probs is None:
            raise ConfigError("hard negatives need the network's softmax readout to draw from")
        y_np = pos.y.numpy()
        draw = lambda epoch: FFData(pos.X, pos.y, tf.constant(hard_wrong_labels(
            readout_probs(pos), y_np, np.random.default_rng([seed, 1, epoch]))), positive=False)
        fresh = True
    neg = PerEpoch(lambda epoch: draw(epoch)) if fresh else draw(0)
    sets = _eval_splits(splits, eval_on)
    val_pos, val_draw = source(*sets["val"], 2)
    test_pos, test_draw = source(*sets["test"], 3)
    return Plan(
        num_classes=splits.num_classes if name != "five_digits" else len(_positive_classes(proto, splits)),
        train=make_entries(roles, pos, neg, paired=paired, split="train", readout_in_step=readout_step == "same_step",
                           hard_from=roles.softmax[0] if negatives == "hard_batch" else None),
        val=make_entries(roles, val_pos, val_draw(0), paired=False, split="val"),
        test=make_entries(roles, test_pos, test_draw(0), paired=False, split="test"),
        val_set="test" if eval_on == "test" else "validation",
        info={"train_pos": len(pos), "val_pos": len(val_pos), "test_pos": len(test_pos)},
    )
