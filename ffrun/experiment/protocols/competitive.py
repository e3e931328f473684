"""Channel-wise competitive learning (CwComp, Papachristodoulou et al., AAAI 2024): every training
image is a positive of its own label and no negatives are made; each FF layer's units are split into
one group per class and the groups compete for the image through a class loss (cwc, pvn, cwg). The
label is never in the input, so every readout reads a plain forward pass."""
from __future__ import annotations

import numpy as np

from ffrun.core.trainer import FFData
from ffrun.experiment.protocols.base import Protocol, Source


class Competitive(Protocol):
    name = "competitive"
    pairable = False
    makes_negatives = False

    def source(self, x: np.ndarray, y: np.ndarray, stream: int) -> Source:
        return FFData.from_numpy(x, y), None
