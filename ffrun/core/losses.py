"""The Forward-Forward local objective: goodness, the positive/negative losses and their metrics.

Everything here is a pure function of tensors, so it can be tested against hand-computed values
and traced into any graph.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import keras
import tensorflow as tf

from ffrun.registry import Registry, signature_keys


def check_goodness(name: str, fn: object) -> str | None:
    """A goodness function: a documented callable (its docstring's first line is its entry in docs/config.md)."""
    if not callable(fn):
        return "it must be a function"
    if not (getattr(fn, "__doc__", None) or "").strip():
        return "it has no docstring (its first line describes it in docs/config.md)"
    return None


#: how a layer's goodness reduces its squared activities, by name (``goodness: sum``): each takes the
#: squares (N, units), masked, and the 0/1 mask or None, and gives one value per row
GOODNESS: Registry[Callable[[tf.Tensor, tf.Tensor | None], tf.Tensor]] = Registry("goodness", contract=check_goodness)


@GOODNESS.register("sum")
def sum_of_squares(sq: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
    """The sum of the squared activities (Hinton 2022)."""
    return tf.reduce_sum(sq, axis=-1)


@GOODNESS.register("mean")
def mean_of_squares(sq: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
    """The mean of the squared activities (over the selected units when routed)."""
    count = tf.reduce_sum(mask, axis=-1) if mask is not None else tf.cast(tf.shape(sq)[-1], tf.float32)
    return tf.reduce_sum(sq, axis=-1) / tf.maximum(count, 1.0)


def goodness(h: tf.Tensor, reduction: str = "sum", mask: tf.Tensor | None = None) -> tf.Tensor:
    """Goodness of each row of ``h``: its squared activities reduced by the registered goodness
    function ``reduction`` (``GOODNESS``: the sum or the mean).

    ``mask`` (same shape as ``h``, 0/1) restricts the goodness to the selected units; with
    ``reduction="mean"`` the mean is over the selected units only.
    """
    if reduction not in GOODNESS:
        raise ValueError(f"goodness reduction must be one of {', '.join(GOODNESS.in_order())}, got {reduction!r}")
    sq = tf.square(tf.cast(h, tf.float32))
    if mask is not None:
        sq = sq * mask
    return GOODNESS.get(reduction)(sq, mask)


def positive_loss(g: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
    """Mean BCE for "this is positive" on the logit G - theta: softplus(-(G - theta))."""
    return tf.reduce_mean(tf.nn.softplus(-(g - threshold)))


def negative_loss(g: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
    """Mean BCE for "this is negative" on the logit G - theta: softplus(G - theta)."""
    return tf.reduce_mean(tf.nn.softplus(g - threshold))


class FFLoss:
    """A layer's local objective on goodness, registered by name in ``LOSSES``
    (``@LOSSES.register("name")`` on the class; its docstring's first line is its entry in
    docs/config.md).

    ``positive(g, theta)`` and ``negative(g, theta)`` are the terms of the separate positive and
    negative passes; ``pair(g_pos, g_neg, th_pos, th_neg)`` is the loss of one step on aligned
    (positive, negative) rows and returns (loss to minimize, {metric name: value}). A subclass
    overrides the narrowest of these; a loss that only exists on pairs sets ``needs_pairs``.
    ``positive_high`` says which way goodness points: True when positives get the larger goodness
    (the goodness readout then picks the label with the largest goodness, else the smallest).

    Its hyper-parameters are the keyword arguments of ``__init__``, each with a default and a
    type annotation; a value out of range raises ValueError ("must be ..., got x"). The config
    names one ``<loss>_<parameter>`` (``symba_alpha``): in a node of ``model.layers``, or
    model-wide where the model's schema has that key (:func:`parameter_keys`)."""

    name: str = ""
    needs_pairs: bool = False
    #: a loss on per-class goodness against the label (ClassLoss): no negative data
    competitive: bool = False
    positive_high: bool = True
    #: the metrics the training steps of this loss report, each a per-sample mean of a loss that
    #: the divergence check (``TrainMgr.check_losses``) holds under ``max_loss``
    train_metrics: tuple[str, ...] = ("loss_pos", "loss_neg")

    def positive(self, g: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
        raise NotImplementedError(f"loss {self.name!r} has no positive-only term: it needs aligned pairs")

    def negative(self, g: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
        raise NotImplementedError(f"loss {self.name!r} has no negative-only term: it needs aligned pairs")

    def classes(self, g: tf.Tensor, y: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
        """A class loss's value on per-class goodness ``g`` (N, classes) against labels ``y``."""
        raise NotImplementedError(f"loss {self.name!r} is not a class loss")

    def pair(self, g_pos: tf.Tensor, g_neg: tf.Tensor, th_pos, th_neg) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        loss_pos, loss_neg = self.positive(g_pos, th_pos), self.negative(g_neg, th_neg)
        # The mean BCE over the concatenated batch, as in Hinton's code.
        return 0.5 * (loss_pos + loss_neg), {"loss_pos": loss_pos, "loss_neg": loss_neg}


def _overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(FFLoss, method)


def check_loss(name: str, cls: object) -> str | None:
    """What a registered loss must have: an FFLoss subclass whose ``name`` is its registered name,
    a docstring (its line in docs/config.md), the names of the metrics it logs, the terms its kind
    needs (``classes`` for a class loss; ``pair`` for a paired one; else ``positive`` and
    ``negative`` or ``pair``), and hyper-parameters that each have a default and a type."""
    if not (isinstance(cls, type) and issubclass(cls, FFLoss)):
        return "it must be a subclass of ffrun.core.losses.FFLoss"
    if cls.name != name:
        return f"its `name` attribute is {cls.name!r}; set it to the name it is registered under"
    if not (cls.__doc__ or "").strip():
        return "it has no docstring (its first line describes it in docs/config.md)"
    metrics = cls.train_metrics
    if not (isinstance(metrics, tuple) and metrics and all(isinstance(m, str) and m.isidentifier() for m in metrics)):
        return (f"its `train_metrics` must be a non-empty tuple of the metric names it logs (checked against "
                f"max_loss), got {metrics!r}")
    if cls.competitive:
        if not _overrides(cls, "classes"):
            return "a class loss (competitive) must define classes(g, y, threshold)"
    elif cls.needs_pairs and not _overrides(cls, "pair"):
        return "a paired loss (needs_pairs) must define pair(g_pos, g_neg, th_pos, th_neg)"
    elif not cls.needs_pairs and not (_overrides(cls, "positive") and _overrides(cls, "negative")):
        return "it must define positive(g, threshold) and negative(g, threshold) (or set needs_pairs and define pair)"
    for key, param in signature_keys(cls).items():
        if param.default is inspect.Parameter.empty or param.annotation is inspect.Parameter.empty:
            return f"its hyper-parameter {key!r} needs a default and a type annotation (it is a config key)"
    return None


#: the FF losses by name; a plugin registers its own with ``@LOSSES.register("name")``
LOSSES: Registry[type[FFLoss]] = Registry("loss", contract=check_loss)


@LOSSES.register("threshold")
class ThresholdLoss(FFLoss):
    """Hinton (2022): p(positive) = sigmoid(G - theta); the BCE of positives and of negatives,
    softplus(theta - G+) and softplus(G- - theta)."""

    name = "threshold"

    def positive(self, g, threshold):
        return positive_loss(g, threshold)

    def negative(self, g, threshold):
        return negative_loss(g, threshold)


@LOSSES.register("flipped")
class FlippedLoss(FFLoss):
    """The sign-flipped goodness Hinton (2022) mentions: positives get LOW activity,
    p(positive) = sigmoid(theta - G); softplus(G+ - theta) and softplus(theta - G-)."""

    name = "flipped"
    positive_high = False

    def positive(self, g, threshold):
        return tf.reduce_mean(tf.nn.softplus(g - threshold))

    def negative(self, g, threshold):
        return tf.reduce_mean(tf.nn.softplus(threshold - g))


@LOSSES.register("symba")
class SymbaLoss(FFLoss):
    """SymBa (Lee & Song 2023; Trifecta's default alpha = 4): softplus(-alpha (G+ - G-)) on aligned
    (positive, negative) pairs. No threshold: only the gap between a pair counts, so positive and
    negative gradients stay balanced."""

    name = "symba"
    needs_pairs = True
    train_metrics = ("loss_pair",)

    def __init__(self, alpha: float = 4.0):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"must be a finite number > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def pair(self, g_pos, g_neg, th_pos, th_neg):
        loss = tf.reduce_mean(tf.nn.softplus(-self.alpha * (g_pos - g_neg)))
        return loss, {"loss_pair": loss}


#: how a class group's units make its goodness, by name (``class_goodness: mean_square``): each takes
#: the activities grouped (N, positions, classes, units per class) and gives (N, classes)
CLASS_GOODNESS: Registry[Callable[[tf.Tensor], tf.Tensor]] = Registry("class goodness", contract=check_goodness)


@CLASS_GOODNESS.register("mean_square")
def mean_square(grouped: tf.Tensor) -> tf.Tensor:
    """The mean of a class group's squared activities (CwComp, Papachristodoulou et al. 2024)."""
    return tf.reduce_mean(tf.square(grouped), axis=[1, 3])


@CLASS_GOODNESS.register("mean_activity")
def mean_activity(grouped: tf.Tensor) -> tf.Tensor:
    """The plain mean of a class group's activities (DeeperForward, Sun et al. ICLR 2025: 6.8 points
    better than the squared form on CIFAR-10 in their ablation)."""
    return tf.reduce_mean(grouped, axis=[1, 3])


def class_goodness(h: tf.Tensor, num_classes: int, kind: str = "mean_square") -> tf.Tensor:
    """Per-class goodness (N, num_classes) of a layer whose output units (the last axis: a dense
    layer's units, a conv map's channels) are split into ``num_classes`` contiguous groups: the mean
    over a group's units and, for a map, over every position, of the squared activities
    (``kind="mean_square"``: CwComp, Papachristodoulou et al. 2024) or of the activities themselves
    (``kind="mean_activity"``: DeeperForward). Group k = channels [k F/C, (k+1) F/C), as both
    papers' code splits them."""
    if kind not in CLASS_GOODNESS:
        raise ValueError(f"class_goodness must be one of {', '.join(CLASS_GOODNESS.in_order())}, got {kind!r}")
    h = tf.cast(h, tf.float32)
    units = h.shape[-1]
    if units is None or units % num_classes:
        raise ValueError(f"a class-goodness layer needs its units/filters divisible by the {num_classes} classes, "
                         f"got {units}")
    grouped = tf.reshape(h, [tf.shape(h)[0], -1, num_classes, units // num_classes])
    return CLASS_GOODNESS.get(kind)(grouped)


class ClassLoss(FFLoss):
    """A loss on per-class goodness (``class_goodness``) against the true label, with no negative
    data: the groups of a layer compete for each image (CwComp). ``classes(g, y, theta)`` gives the
    loss of a batch; the layer predicts the group with the largest goodness."""

    competitive = True
    train_metrics = ("loss",)


def _true_and_rest(g: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The true class's goodness and the mean goodness of the other classes, per row."""
    onehot = tf.one_hot(tf.cast(y, tf.int32), tf.shape(g)[1], dtype=g.dtype)
    g_true = tf.reduce_sum(g * onehot, axis=1)
    g_rest = (tf.reduce_sum(g, axis=1) - g_true) / tf.cast(tf.shape(g)[1] - 1, g.dtype)
    return g_true, g_rest


@LOSSES.register("cwc")
class CwCLoss(ClassLoss):
    """CwComp's CwC: the cross-entropy of softmax(g) against the label, the class goodness taken as
    logits as they are (no temperature; CwComp's default ``CwC_CE``)."""

    name = "cwc"

    def classes(self, g, y, threshold):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=g))


@LOSSES.register("pvn")
class PvNLoss(ClassLoss):
    """CwComp's PvN (positive vs negative channels): the threshold loss with the true class's group
    as the positive and the mean of the other groups as the negative, on the same image:
    mean over [softplus(theta - g_y), softplus(mean_{c != y} g_c - theta)] (CwComp: theta = 2)."""

    name = "pvn"

    def classes(self, g, y, threshold):
        g_true, g_rest = _true_and_rest(g, y)
        return 0.5 * (positive_loss(g_true, threshold) + negative_loss(g_rest, threshold))


@LOSSES.register("cwg")
class CWGLoss(ClassLoss):
    """CwComp's CWG: ``weight`` x CwC + (1 - weight) x PvN (their weight: 0.28)."""

    name = "cwg"

    def __init__(self, weight: float = 0.28):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"must be a number in [0, 1], got {weight!r}")
        self.weight = float(weight)

    def classes(self, g, y, threshold):
        return self.weight * CwCLoss().classes(g, y, threshold) + (1.0 - self.weight) * PvNLoss().classes(g, y, threshold)


def make_loss(name: str = "threshold", **options) -> FFLoss:
    """The registered loss ``name`` with its hyper-parameters (``__init__``'s keywords)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES.names())}, got {name!r}")
    return LOSSES.get(name)(**options)


def parameter_keys(name: str) -> dict[str, str]:
    """The config key of each hyper-parameter of the registered loss ``name``: ``<loss>_<parameter>``
    (symba's ``alpha`` is ``symba_alpha``) -> the keyword of its ``__init__``."""
    return {f"{name}_{key}": key for key in signature_keys(LOSSES.get(name))}


def peer_normalization_loss(running_mean: tf.Tensor) -> tf.Tensor:
    """Hinton's peer normalization: pull each unit's running mean activity toward the layer mean."""
    return tf.reduce_mean(tf.square(tf.reduce_mean(running_mean) - running_mean))


class GoodnessSeparation(keras.metrics.Metric):
    """Fraction of (positive, negative) pairs where the positive sample has the larger goodness.

    This is the ROC AUC of goodness as a pos/neg score. Keras' AUC metric needs scores in [0, 1]
    and a sigmoid of G - theta saturates for wide layers, so we stream two histograms of
    log-goodness on a fine grid instead: pairs in different bins are counted exactly, pairs that
    share a bin (relative width ~0.6%) count one half, like ties.
    """

    def __init__(self, bins: int = 4096, log_range: tuple[float, float] = (-16.0, 16.0),
                 name: str = "separation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bins = bins
        self.log_range = log_range
        self.pos_hist = self.add_variable(shape=(bins,), initializer="zeros", name="pos_hist")
        self.neg_hist = self.add_variable(shape=(bins,), initializer="zeros", name="neg_hist")

    def _hist(self, g: tf.Tensor) -> tf.Tensor:
        g = tf.cast(g, tf.float32)
        # Non-finite goodness is left out explicitly: tf.maximum(nan, x) is NaN on some CPUs (AVX2)
        # and not on others, and tf.histogram_fixed_width raises on NaN. The losses carry the NaN
        # to TrainMgr's check, which stops the run with the layer's name.
        g = tf.boolean_mask(g, tf.math.is_finite(g))
        logg = tf.math.log(tf.maximum(g, 1e-30))
        lo, hi = self.log_range
        return tf.cast(tf.histogram_fixed_width(logg, [lo, hi], nbins=self.bins), tf.float32)

    def update_state(self, g: tf.Tensor, positive: bool = True, sample_weight=None) -> None:
        hist = self.pos_hist if positive else self.neg_hist
        hist.assign_add(self._hist(g))

    def result(self) -> tf.Tensor:
        pos, neg = self.pos_hist, self.neg_hist
        neg_below = tf.cumsum(neg, exclusive=True)
        wins = tf.reduce_sum(pos * neg_below) + 0.5 * tf.reduce_sum(pos * neg)
        pairs = tf.reduce_sum(pos) * tf.reduce_sum(neg)
        return tf.math.divide_no_nan(wins, pairs)

    def reset_state(self) -> None:
        self.pos_hist.assign(tf.zeros_like(self.pos_hist))
        self.neg_hist.assign(tf.zeros_like(self.neg_hist))

    def has_data(self) -> bool:
        return bool(tf.reduce_sum(self.pos_hist) > 0 and tf.reduce_sum(self.neg_hist) > 0)
