"""Data protocols, chosen by name from a registry: which samples are positive, how negatives are
made, and the passes of an epoch (``make_plan``). A protocol is one module: a Protocol subclass
with its config dataclass, registered with ``@PROTOCOLS.register()`` (a plugin's module the same
way). Importing this package registers the built-in ones; it does not import TensorFlow, so the
schema reads the registry in the checks that run before a run folder is made."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ffrun.errors import ConfigError
from ffrun.experiment.datasets import ImageSplits
from ffrun.experiment.protocols.base import (PROTOCOLS, NegLabels, Negatives, Plan, PerEpoch, Protocol,
                                             check_negatives, hard_wrong_labels, make_entries, neutral,
                                             wrong_labels, _eval_splits)
from ffrun.experiment.protocols.competitive import Competitive
from ffrun.experiment.protocols.five_digits import FiveDigits
from ffrun.experiment.protocols.hybrid import Hybrid, hybrid_images
from ffrun.experiment.protocols.split import Split, Splitting, routing_matrices
from ffrun.experiment.protocols.wrong_label import WrongLabel

if TYPE_CHECKING:
    from ffrun.core.network import Roles
    from ffrun.core.trainer import FFData

__all__ = ["PROTOCOLS", "Competitive", "FiveDigits", "Hybrid", "NegLabels", "Negatives", "Plan", "PerEpoch",
           "Protocol", "Split", "Splitting", "WrongLabel", "check_negatives", "hard_wrong_labels", "hybrid_images",
           "make", "make_entries", "make_plan", "neutral", "routing_matrices", "wrong_labels"]


def make(cfg: Any, splits: ImageSplits, *, supervised: bool, seed: int) -> Protocol:
    """The protocol ``cfg.name`` (its typed config, checked by the schema) on these splits."""
    return PROTOCOLS.get(str(cfg.name))(cfg, splits, supervised=supervised, seed=seed)


def make_plan(protocol: Protocol, roles: Roles, *, eval_on: str, pairing: str, readout_step: str = "separate",
              readout_probs: Callable[[FFData], np.ndarray] | None = None) -> Plan:
    """The passes of an epoch and of the final test. ``readout_probs`` (the network's neutral-label
    softmax) is needed for negatives=hard only."""
    import tensorflow as tf

    from ffrun.core.trainer import FFData
    paired = pairing == "same_step"
    if paired and not protocol.pairable:
        raise ConfigError(f"protocol {protocol.name} has unequal positive and negative sets: use pairing=separate")
    splits, seed = protocol.splits, protocol.seed
    pos, draw = protocol.source(splits.x_train, splits.y_train, 1)
    sets = _eval_splits(splits, eval_on)
    if not protocol.makes_negatives:
        parts = {name: protocol.source(*sets[key], stream)[0] for name, key, stream in (("val", "val", 2), ("test", "test", 3))}
        return Plan(protocol.num_classes, make_entries(roles, pos, None, paired=False, split="train"),
                    make_entries(roles, parts["val"], None, paired=False, split="val"),
                    make_entries(roles, parts["test"], None, paired=False, split="test"),
                    val_set="test" if eval_on == "test" else "validation",
                    info={"train_pos": len(pos), "val_pos": len(parts["val"]), "test_pos": len(parts["test"])})
    fresh = protocol.fresh_negatives
    negatives = getattr(protocol.cfg, "negatives", "uniform")
    check_negatives(negatives, pairing, bool(roles.softmax))   # the schema's rule, checked again on the built roles
    if negatives == "hard":
        if readout_probs is None:
            raise ConfigError("hard negatives need the network's softmax readout to draw from")
        y_np = pos.y.numpy()
        draw = lambda epoch: FFData(pos.X, pos.y, tf.constant(hard_wrong_labels(
            readout_probs(pos), y_np, np.random.default_rng([seed, 1, epoch]))), positive=False)
        fresh = True
    neg = PerEpoch(lambda epoch: draw(epoch)) if fresh else draw(0)
    val_pos, val_draw = protocol.source(*sets["val"], 2)
    test_pos, test_draw = protocol.source(*sets["test"], 3)
    return Plan(
        num_classes=protocol.num_classes,
        train=make_entries(roles, pos, neg, paired=paired, split="train", readout_in_step=readout_step == "same_step",
                           hard_from=roles.softmax[0] if negatives == "hard_batch" else None),
        val=make_entries(roles, val_pos, val_draw(0), paired=False, split="val"),
        test=make_entries(roles, test_pos, test_draw(0), paired=False, split="test"),
        val_set="test" if eval_on == "test" else "validation",
        info={"train_pos": len(pos), "val_pos": len(val_pos), "test_pos": len(test_pos)},
    )
