"""rmwkwok's "Result 1" (five_digits): images of the positive classes are positive with their labels;
images of the other classes are negative, each with a random positive-class label."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

import numpy as np

from ffrun.errors import ConfigError, DataError
from ffrun.experiment.protocols.base import PROTOCOLS, NegLabels, Protocol, Source


@dataclass
class FiveDigitsConfig:
    name: str = "five_digits"
    positive_classes: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    neg_labels: NegLabels = NegLabels.once

    def __post_init__(self) -> None:
        classes = list(self.positive_classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or min(classes) < 0:
            raise ConfigError(f"protocol.positive_classes must be >= 2 distinct classes >= 0, got {classes}")


@PROTOCOLS.register()
class FiveDigits(Protocol):
    name = "five_digits"
    config = FiveDigitsConfig
    pairable = False      # more negatives than positives: no aligned pairs

    @classmethod
    def check_config(cls, cfg: Any, *, supervised: bool, num_classes: int | None = None, **run: Any) -> None:
        if num_classes is not None and max(cfg.positive_classes) >= num_classes:
            raise ConfigError(f"protocol.positive_classes must be classes of 0..{num_classes - 1}, "
                              f"got {list(cfg.positive_classes)}")
        super().check_config(cfg, supervised=supervised, num_classes=num_classes, **run)

    @classmethod
    def network_classes(cls, cfg: Any, data_classes: int | None) -> int | None:
        return len(cfg.positive_classes)     # the network labels the positive classes only

    def check(self) -> None:
        super().check()
        classes = list(self.cfg.positive_classes)
        self.classes = np.asarray(classes, np.int32)
        # class -> its index among the positive classes, -1 for the negative classes
        self.remap = np.full(self.splits.num_classes, -1, np.int32)
        self.remap[self.classes] = np.arange(len(self.classes), dtype=np.int32)
        # a set of one kind trains only one of the two FF terms: nothing teaches a layer to tell them apart
        is_pos = self.remap[self.splits.y_train] >= 0
        if is_pos.all() or not is_pos.any():
            kind = "negative classes (the classes not in" if is_pos.all() else "positive classes (protocol.positive_classes"
            raise DataError(f"protocol five_digits: the training set ({self.splits.name}) holds no image of the {kind} "
                            f"{classes}); it holds only the classes {np.unique(self.splits.y_train).tolist()}: "
                            f"FF needs positives and negatives")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def source(self, x: np.ndarray, y: np.ndarray, stream: int) -> Source:
        import tensorflow as tf

        from ffrun.core.trainer import FFData
        c = len(self.classes)
        is_pos = self.remap[y] >= 0
        pos = FFData.from_numpy(x[is_pos], self.remap[y[is_pos]])
        x_neg, y_neg = tf.constant(x[~is_pos]), tf.constant(y[~is_pos])
        seed = self.seed
        draw = lambda *key: FFData(x_neg, y_neg, tf.constant(
            np.random.default_rng([seed, stream, *key]).integers(0, c, size=int(x_neg.shape[0])).astype(np.int32)),
            positive=False)
        return pos, draw

    def baseline_classes(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The baseline compares on the positive classes, with the same labels as the FF net."""
        keep = self.remap[y] >= 0
        return x[keep], self.remap[y[keep]]
