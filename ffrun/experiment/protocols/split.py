"""rmwkwok's "Result 2" (split): all images positive with their labels. Each FF layer routes a class's
goodness to the half of its units that the class's set (A or B) owns. unsup: negatives are the same
images scored on the other half; sup: negatives carry a wrong label."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from ffrun.errors import ConfigError
from ffrun.experiment.protocols.base import PROTOCOLS, NegLabels, Protocol, Source, wrong_label_source


class Splitting(StrEnum):
    random = "random"
    same = "same"
    none = "none"


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



@dataclass
class SplitConfig:
    name: str = "split"
    splitting: Splitting = Splitting.random
    route_seed: int = 0
    neg_labels: NegLabels = NegLabels.once


@PROTOCOLS.register()
class Split(Protocol):
    name = "split"
    config = SplitConfig

    @classmethod
    def check_config(cls, cfg: Any, *, supervised: bool, convolutional: bool = False, **run: Any) -> None:
        if cfg.splitting == Splitting.none and not supervised:
            raise ConfigError("splitting=none is supervised only: unsup negatives use the units the "
                              "sample's class does NOT own, which would be none")
        if convolutional:
            raise ConfigError("protocol split routes the units of dense layers; a graph with conv layers cannot use it")
        super().check_config(cfg, supervised=supervised, convolutional=convolutional, **run)

    def routing(self, units: list[int]) -> tuple[list[np.ndarray] | None, str]:
        matrices = routing_matrices(self.cfg.splitting, units, self.num_classes, int(self.cfg.route_seed))
        return matrices, "same" if self.supervised else "complement"

    def source(self, x: np.ndarray, y: np.ndarray, stream: int) -> Source:
        if self.supervised:
            return wrong_label_source(x, y, self.num_classes, self.seed, stream)
        from ffrun.core.trainer import FFData
        pos = FFData.from_numpy(x, y)     # negatives: the same images, scored on the other half
        return pos, lambda *key: FFData(pos.X, pos.y, pos.y_ff, positive=False)
