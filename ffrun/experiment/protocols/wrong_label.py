"""Hinton's supervised recipe (wrong_label): positives carry the true label, negatives the same
image with a wrong one: uniform, or hard (drawn from the network's own softmax)."""
from __future__ import annotations

import numpy as np

from ffrun.experiment.protocols.base import Protocol, Source, wrong_label_source


class WrongLabel(Protocol):
    name = "wrong_label"
    takes_hard_negatives = True

    def source(self, x: np.ndarray, y: np.ndarray, stream: int) -> Source:
        return wrong_label_source(x, y, self.num_classes, self.seed, stream)
