"""The Forward-Forward local objective: goodness, the positive/negative losses and their metrics.

Everything here is a pure function of tensors, so it can be tested against hand-computed values
and traced into any graph.
"""
from __future__ import annotations

import keras
import tensorflow as tf

GOODNESS_REDUCTIONS = ("sum", "mean")


def goodness(h: tf.Tensor, reduction: str = "sum", mask: tf.Tensor | None = None) -> tf.Tensor:
    """Goodness of each row of ``h``: the sum (or mean) of its squared activities.

    ``mask`` (same shape as ``h``, 0/1) restricts the goodness to the selected units; with
    ``reduction="mean"`` the mean is over the selected units only.
    """
    sq = tf.square(tf.cast(h, tf.float32))
    if mask is not None:
        sq = sq * mask
    total = tf.reduce_sum(sq, axis=-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        count = tf.reduce_sum(mask, axis=-1) if mask is not None else tf.cast(tf.shape(h)[-1], tf.float32)
        return total / tf.maximum(count, 1.0)
    raise ValueError(f"goodness reduction must be one of {GOODNESS_REDUCTIONS}, got {reduction!r}")


def positive_loss(g: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
    """Mean BCE for "this is positive" on the logit G - theta: softplus(-(G - theta))."""
    return tf.reduce_mean(tf.nn.softplus(-(g - threshold)))


def negative_loss(g: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
    """Mean BCE for "this is negative" on the logit G - theta: softplus(G - theta)."""
    return tf.reduce_mean(tf.nn.softplus(g - threshold))


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
