"""A negative-data protocol: every training image is a positive; its negative is the same image with
its pixels shuffled, so a negative keeps the positive's ink (its pixel histogram) but loses its
strokes. A layer can then only tell them apart by spatial structure.

    ffrun plugins=[protocol_shuffled_pixels] protocol=shuffled_pixels debug=tiny
"""
from dataclasses import dataclass

import numpy as np

from ffrun.api import PROTOCOLS, ConfigError, FFData, Protocol


@dataclass
class ShuffledPixelsConfig:          # its keys: protocol.<key>=..., typed and checked like ffrun's own
    name: str = "shuffled_pixels"
    fraction: float = 1.0            # share of each image's pixels that are shuffled

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"protocol.fraction must be in (0, 1], got {self.fraction!r}")


@PROTOCOLS.register()
class ShuffledPixels(Protocol):
    name = "shuffled_pixels"
    config = ShuffledPixelsConfig

    def source(self, x: np.ndarray, y: np.ndarray, stream: int):
        positives = FFData.from_numpy(x, y)

        def negatives(*key: int) -> FFData:    # key: the epoch when drawn afresh; seeded, so a resume redraws them
            rng = np.random.default_rng([self.seed, stream, *key])
            moved = rng.choice(x.shape[1], int(round(self.cfg.fraction * x.shape[1])), replace=False)
            shuffled = x.copy()
            shuffled[:, moved] = x[:, rng.permutation(moved)]
            return FFData.from_numpy(shuffled, y, positive=False)
        return positives, negatives
