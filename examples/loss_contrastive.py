"""A local loss: a margin contrastive loss on aligned (positive, negative) pairs. Each pair is pushed
apart until the positive's goodness exceeds its negative's by ``margin``, then left alone: no
threshold, only the gap of a pair counts (as SymBa; a hinge instead of a softplus).

    ffrun plugins=[loss_contrastive] model.loss=contrastive pairing=same_step mode=sup protocol=wrong_label debug=tiny

Its margin is the key contrastive_margin of a node of model.layers (default 1.0).
"""
import math

import tensorflow as tf

from ffrun.api import LOSSES, FFLoss


@LOSSES.register("contrastive")
class ContrastiveLoss(FFLoss):
    """Margin contrastive loss on aligned pairs: mean of relu(margin - (G+ - G-))."""

    name = "contrastive"
    needs_pairs = True                  # defined on aligned pairs only: the schema asks for pairing=same_step
    train_metrics = ("loss_pair",)      # the metric it logs, held under max_loss by the divergence check

    def __init__(self, margin: float = 1.0):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (math.isfinite(margin) and margin > 0):
            raise ValueError(f"must be a finite number > 0, got {margin!r}")
        self.margin = float(margin)

    def pair(self, g_pos, g_neg, th_pos, th_neg):
        loss = tf.reduce_mean(tf.nn.relu(self.margin - (g_pos - g_neg)))
        return loss, {"loss_pair": loss}
