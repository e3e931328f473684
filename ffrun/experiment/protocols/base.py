"""What every protocol shares: the Protocol interface, the Plan it yields, and the passes of a split.

A protocol says which samples are positive and how negatives are made; ``make_plan`` (in the
package) turns that into a ``Plan``: the (task, dataset) passes TrainMgr runs every epoch (training +
validation) and the passes of the final test. Negatives drawn afresh every epoch are functions of
the epoch, seeded by (seed, epoch), so a resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from ffrun.errors import ConfigError
from ffrun.experiment.datasets import ImageSplits
from ffrun.registry import Registry, subclass_problem

if TYPE_CHECKING:   # TensorFlow is imported where a protocol runs, not where its config is checked
    from ffrun.core.network import Roles
    from ffrun.core.trainer import FFData, TaskEntry

#: a source of one split: the positives, and draw(*key) -> the negatives of that draw
Source = tuple["FFData", Callable[..., "FFData"]]


class NegLabels(StrEnum):
    once = "once"
    every_epoch = "every_epoch"


class Negatives(StrEnum):
    uniform = "uniform"
    hard = "hard"
    hard_batch = "hard_batch"


class Protocol:
    """Positives, negatives and the label space of one data protocol, from its typed config.

    A subclass sets ``name`` and ``config`` (its config's dataclass, whose ``name`` field defaults
    to the protocol's name), is registered with ``@PROTOCOLS.register()``, and overrides what
    differs: ``source`` (always), ``num_classes``, ``routing``, ``check`` (what it needs of the
    built data), ``check_config`` (what it needs of the run, checked before a run folder is made),
    ``fresh_negatives``, ``baseline_classes``."""

    name: ClassVar[str]
    #: the protocol's keys (``protocol.<key>``), typed and range-checked like every config key
    config: ClassVar[type]
    #: positives and negatives are aligned one to one, so one step can take both (pairing=same_step)
    pairable: ClassVar[bool] = True
    #: negatives may be drawn from the network's own softmax (negatives=hard / hard_batch)
    takes_hard_negatives: ClassVar[bool] = False
    #: False: positives only (``source`` gives no draw), the layers learn from the labels
    makes_negatives: ClassVar[bool] = True

    def __init__(self, cfg: Any, splits: ImageSplits, *, supervised: bool, seed: int):
        self.cfg, self.splits, self.supervised, self.seed = cfg, splits, supervised, seed
        self.check()

    def check(self) -> None:
        """Raise ConfigError when the protocol cannot run in this mode or on this data (the rules
        of ``check_config``, which the CLI checks before a run folder is made, then those that
        need the loaded data)."""
        self.check_config(self.cfg, supervised=self.supervised, num_classes=self.splits.num_classes)

    @classmethod
    def check_config(cls, cfg: Any, *, supervised: bool, num_classes: int | None = None, pairing: str = "separate",
                     convolutional: bool = False, has_softmax: bool | None = None) -> None:
        """Raise ConfigError when the protocol cannot run with this config: ``cfg`` its typed
        config, ``num_classes`` the data's (None: inferred at load), ``pairing`` the run's; of the
        network, whether it has conv or pool nodes and whether a softmax readout (None: not known
        yet). Runs before a run folder is made, without TensorFlow."""
        if pairing == "same_step" and not cls.pairable:
            why = "has unequal positive and negative sets" if cls.makes_negatives else "has no negatives to pair"
            raise ConfigError(f"protocol {cls.name} {why}: use pairing=separate")
        negatives = getattr(cfg, "negatives", Negatives.uniform)
        if has_softmax is not None:
            check_negatives(negatives, pairing, has_softmax)

    @classmethod
    def check_image(cls, cfg: Any, image: tuple[int, int, int], source: str) -> None:
        """Raise ConfigError when the protocol cannot use images of ``image`` (H, W, C) from ``source``."""

    @classmethod
    def network_classes(cls, cfg: Any, data_classes: int | None) -> int | None:
        """The classes of the network's label overlay and readouts (``num_classes`` once built)."""
        return data_classes

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    def routing(self, units: list[int]) -> tuple[list[np.ndarray] | None, str]:
        """Per FF layer a (classes x units) 0/1 routing matrix or None, and how negatives are routed."""
        return None, "same"

    @property
    def fresh_negatives(self) -> bool:
        """Whether the negatives are drawn afresh every epoch."""
        return getattr(self.cfg, "neg_labels", "once") == "every_epoch"

    def source(self, x: np.ndarray, y: np.ndarray, stream: int) -> Source:
        raise NotImplementedError

    def baseline_classes(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels a same-architecture backprop baseline is scored on."""
        return x, y


def check_negatives(negatives: str, pairing: str, has_softmax: bool) -> None:
    """Hard negatives are drawn from the network's own softmax readout; per batch only in a paired
    step. Only protocols whose config has the key ``negatives`` (wrong_label) draw them."""
    if negatives != Negatives.uniform and not has_softmax:
        raise ConfigError(f"protocol.negatives={negatives} draws wrong labels from the network's softmax "
                          f"readout: the model needs a softmax node (model.readouts or model.layers)")
    if negatives == Negatives.hard_batch and pairing != "same_step":
        raise ConfigError("negatives=hard_batch draws each batch's wrong labels in the pos+neg step: it needs "
                          "pairing=same_step")


def _protocol_contract(name: str, cls: Any) -> str | None:
    """What a registered protocol must have: a Protocol subclass named ``name``, its own ``source``,
    and a ``config`` dataclass whose ``name`` field defaults to ``name`` (so that ``protocol=<name>``
    composes without a YAML file)."""
    problem = subclass_problem(name, cls, Protocol, {"source": "source(x, y, stream) -> (positives, draw of negatives)"})
    if problem:
        return problem
    config = getattr(cls, "config", None)
    if not (isinstance(config, type) and is_dataclass(config)):
        return "needs a config dataclass (class attribute config) for its keys"
    default = next((f.default for f in fields(config) if f.name == "name"), None)
    if default != name:
        return f"its config {config.__qualname__} needs a field name: str = {name!r}"
    return None


#: the data protocols by name: ``protocol=<name>`` picks one
PROTOCOLS: Registry[type[Protocol]] = Registry("protocol", contract=_protocol_contract)


@dataclass
class Plan:
    num_classes: int
    train: list[TaskEntry]
    val: list[TaskEntry]
    test: list[TaskEntry]
    val_set: str                     # "validation" or "test": where the per-epoch figures come from
    info: dict = field(default_factory=dict)


class PerEpoch:
    """A dataset drawn afresh each epoch by ``make(epoch)``; cached so passes of one epoch agree."""

    def __init__(self, make: Callable[[int], FFData | tuple]):
        self.make = make
        self._epoch, self._value = None, None

    def __call__(self, epoch: int):
        if epoch != self._epoch:
            # Let go of the last epoch's set before drawing the next: two 50k-image sets at once
            # were the peak of an unsupervised run.
            self._epoch, self._value = None, None
            self._epoch, self._value = epoch, self.make(epoch)
        return self._value


def neutral(data: FFData) -> FFData:
    """The same images with the neutral label (-1): for readouts that must not see the true label."""
    import tensorflow as tf

    from ffrun.core.trainer import FFData
    return FFData(data.X, data.y, tf.fill(tf.shape(data.y), -1), positive=True)


def wrong_labels(y: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A label drawn uniformly from the classes other than y (never equal to y)."""
    return ((y + rng.integers(1, num_classes, size=len(y))) % num_classes).astype(np.int32)


def wrong_label_source(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, stream: int) -> Source:
    """Positives: images with their true label; negatives: the same images with a wrong label."""
    import tensorflow as tf

    from ffrun.core.trainer import FFData
    pos = FFData.from_numpy(x, y)
    y_np = y.astype(np.int32)
    draw = lambda *key: FFData(pos.X, pos.y, tf.constant(
        wrong_labels(y_np, num_classes, np.random.default_rng([seed, stream, *key]))), positive=False)
    return pos, draw


def hard_wrong_labels(probs: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wrong label per row, drawn in proportion to the model's own class probabilities with the
    true class masked out (Hinton's "hard" negatives)."""
    p = np.array(probs, np.float64)
    p[np.arange(len(y)), y] = 0.0
    p += 1e-12                                   # a row that puts all mass on the truth: uniform
    p[np.arange(len(y)), y] = 0.0
    cdf = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
    labels = (cdf < rng.random(len(y))[:, None]).sum(1)
    return np.minimum(labels, p.shape[1] - 1).astype(np.int32)


def make_entries(roles: Roles, pos: FFData, neg: FFData | PerEpoch | None, *, paired: bool, split: str,
                 readout_in_step: bool = False, hard_from: str | None = None) -> list[TaskEntry]:
    """The passes for one split. ``split='train'`` gives training passes, else evaluation passes.
    Positives are fixed; negatives may be drawn afresh every epoch.

    Without negatives (``neg`` None: protocol competitive) there is one pass, of every layer.
    Supervised nets see the label in the input, so their softmax readouts are trained and scored
    only on neutral-label inputs: a readout that saw the true label would be leaky. They train in
    a pass of their own after the FF pass, or (``readout_in_step``, paired only) in the FF step
    itself on a neutral-label copy of the positives, as Hinton's code does. ``hard_from`` (paired
    only) names the softmax readout that picks every batch's wrong labels inside the step."""
    from ffrun.core.layers import Task
    from ffrun.core.trainer import TaskEntry
    ff, sm, sup = roles.ff, roles.softmax, roles.supervised
    entries: list[TaskEntry] = []
    if neg is None:   # no negatives: every layer trains (or is scored) on the labelled positives, in one pass
        return [TaskEntry(Task.TRAIN_POS if split == "train" else Task.EVAL, pos, None, split)]
    if split == "train":
        if paired:
            pair = (lambda epoch: (pos, neg(epoch))) if callable(neg) else (pos, neg)
            if sup and sm and readout_in_step:
                return [TaskEntry(Task.TRAIN_PAIR_READOUT, pair, ff + sm, "train pos+neg+readout", hard_from)]
            entries.append(TaskEntry(Task.TRAIN_PAIR, pair, ff if sup else None, "train pos+neg", hard_from))
        else:
            entries.append(TaskEntry(Task.TRAIN_POS, pos, ff if sup else None, "train pos"))
            entries.append(TaskEntry(Task.TRAIN_NEG, neg, ff, "train neg"))
        if sup and sm:
            entries.append(TaskEntry(Task.TRAIN_POS, neutral(pos), sm, "train readout"))
        return entries
    entries.append(TaskEntry(Task.EVAL, pos, ff if sup else None, f"{split} pos"))
    entries.append(TaskEntry(Task.EVAL, neg, ff, f"{split} neg"))
    if sup and roles.goodness:
        entries.append(TaskEntry(Task.EVAL_ALL_LABELS, pos, roles.goodness, f"{split} all labels"))
    if sup and sm:
        entries.append(TaskEntry(Task.EVAL, neutral(pos), sm, f"{split} readout"))
    return entries


def _eval_splits(splits: ImageSplits, eval_on: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-epoch evaluation set and final test set. ``eval_on=test`` is the reference implementation's practice
    (evaluate on the test set every epoch); results then say the figures come from the test set."""
    if eval_on == "test":
        return {"val": (splits.x_test, splits.y_test), "test": (splits.x_test, splits.y_test)}
    if eval_on != "validation":
        raise ConfigError(f"eval_on must be validation or test, got {eval_on!r}")
    if len(splits.x_val) == 0:
        raise ConfigError("eval_on=validation needs data.val_size > 0")
    return {"val": (splits.x_val, splits.y_val), "test": (splits.x_test, splits.y_test)}


