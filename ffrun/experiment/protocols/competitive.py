"""Channel-wise competitive learning (CwComp, Papachristodoulou et al., AAAI 2024): every training
image is a positive of its own label and no negatives are made; each FF layer's units are split into
one group per class and the groups compete for the image through a class loss (cwc, pvn, cwg). The
label is never in the input, so every readout reads a plain forward pass."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ffrun.experiment.protocols.base import PROTOCOLS, Protocol, Source


@dataclass
class CompetitiveConfig:
    name: str = "competitive"


@PROTOCOLS.register()
class Competitive(Protocol):
    name = "competitive"
    config = CompetitiveConfig
    pairable = False
    makes_negatives = False

    def source(self, x: np.ndarray, y: np.ndarray, stream: int) -> Source:
        from ffrun.core.trainer import FFData
        return FFData.from_numpy(x, y), None
