"""Hinton's supervised recipe (wrong_label): positives carry the true label, negatives the same
image with a wrong one: uniform, or hard (drawn from the network's own softmax)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ffrun.errors import ConfigError
from ffrun.experiment.protocols.base import PROTOCOLS, NegLabels, Negatives, Protocol, Source, wrong_label_source


@dataclass
class WrongLabelConfig:
    name: str = "wrong_label"
    neg_labels: NegLabels = NegLabels.every_epoch
    negatives: Negatives = Negatives.uniform


@PROTOCOLS.register()
class WrongLabel(Protocol):
    name = "wrong_label"
    config = WrongLabelConfig
    takes_hard_negatives = True

    @classmethod
    def check_config(cls, cfg: Any, *, supervised: bool, **run: Any) -> None:
        if not supervised:
            raise ConfigError("protocol wrong_label needs the label in the input: use mode=sup")
        super().check_config(cfg, supervised=supervised, **run)

    def source(self, x: np.ndarray, y: np.ndarray, stream: int) -> Source:
        return wrong_label_source(x, y, self.num_classes, self.seed, stream)
