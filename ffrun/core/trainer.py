"""TrainMgr: runs a dict of FF layers wired by a sequence function, one compiled graph per task.

The batch loop of a pass lives inside the graph and the data stays resident as tensors: a pass is
a few graph calls of about ``CALL_SECONDS`` of batches each, and the only per-epoch host work is
drawing a permutation. Between two calls a stop request (``stop_requested``: Ctrl-C, SIGTERM) ends
the pass at once (``PassStopped``), not at the epoch's end. Graphs are keyed by (task, polarity,
which layers are active) and built the first time they are needed, so N epochs of a stage trace
each task exactly once.

In a stage where a prefix of the network is frozen (every layer before the ones that train, e.g.
the blocks under a softmax readout that trains alone), the frozen nodes' outputs are the same in
every epoch of the stage: a pass whose data is fixed computes them once, keeps them per example
within ``feature_cache_mb``, and runs only the rest of the network on them in the epoch's order.
Outputs that do not fit in memory go to files within ``feature_cache_disk_mb`` (``feature_cache``),
read back a batch at a time, and removed when the stage ends, however it ends.
"""
from __future__ import annotations

import collections
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence, Union

import numpy as np
import tensorflow as tf

from ffrun.core.feature_cache import DISK_RESERVE_BYTES, FeatureFiles, free_bytes
from ffrun.core.layers import BaseFFLayer, Task, TRAIN_TASKS
from ffrun.core.network import Network, Node, SeqFn

log = logging.getLogger(__name__)

#: the ``first`` and ``last`` batch of a graph call of a pass
BATCH_RANGE = [tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)]

#: tasks whose data is an aligned (positives, negatives) pair, stepped on together
PAIRED_TASKS = (Task.TRAIN_PAIR, Task.TRAIN_PAIR_READOUT)


@dataclass
class FFData:
    """A resident dataset: images (N, D) float32, true labels y and FF labels y_ff (N,) int32.

    ``y_ff`` is the label the FF layers see (overlaid, or used for routing); for positives it is y,
    for negatives a wrong label, and -1 means the neutral label. ``positive`` tells EVAL passes
    which goodness statistics to update."""

    X: tf.Tensor
    y: tf.Tensor
    y_ff: tf.Tensor
    positive: bool = True

    @classmethod
    def from_numpy(cls, X: np.ndarray, y: np.ndarray, y_ff: np.ndarray | None = None,
                   positive: bool = True) -> "FFData":
        y_ff = y if y_ff is None else y_ff
        return cls(tf.constant(X, tf.float32), tf.constant(y, tf.int32), tf.constant(y_ff, tf.int32), positive)

    def __len__(self) -> int:
        return int(self.X.shape[0])


#: a dataset, a positive/negative pair of aligned datasets (TRAIN_PAIR), or a function of the
#: epoch returning either (negatives drawn afresh every epoch)
DataSource = Union[FFData, tuple, Callable[[int], Union[FFData, tuple]]]


@dataclass(eq=False)
class TaskEntry:
    """One pass of an epoch: run ``task`` over ``data``. ``layers`` restricts which layers do the
    task (the others only transform); None means every layer."""

    task: Task
    data: DataSource
    layers: tuple[str, ...] | None = None
    label: str = ""
    #: paired passes only: a softmax readout whose neutral-label prediction picks every batch's
    #: wrong labels afresh, just before the step (Hinton's code); the negatives' own y_ff is unused
    hard_from: str | None = None

    def resolve(self, epoch: int):
        return self.data(epoch) if callable(self.data) else self.data


class ProgressHook(Protocol):
    def start_pass(self, label: str, batches: int) -> None: ...
    def advance(self, batches_done: int) -> None: ...
    def end_pass(self) -> None: ...


def buffered_shuffle(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order of ``tf.data.Dataset.shuffle(buffer)`` over 0..n-1 (its algorithm, numpy's random
    stream): fill a buffer with the first ``buffer`` items; each step emits a uniformly chosen one and
    refills its slot with the next item; at the end the buffer drains in random order. An item can
    leave at most ``buffer - 1`` places before its index, so the order stays local."""
    out = np.empty(n, np.int32)
    slots = list(range(min(buffer, n)))
    upcoming = len(slots)
    draws = rng.random(n)
    for i in range(n):
        j = int(draws[i] * len(slots))
        out[i] = slots[j]
        if upcoming < n:
            slots[j] = upcoming
            upcoming += 1
        else:
            slots[j] = slots[-1]
            slots.pop()
    return out


#: seconds of batches per graph call of a pass. A stop request waits at most about this long (a
#: scheduler's grace period between SIGTERM and SIGKILL is 30 s by default in SLURM, and a
#: DeeperForward epoch takes 4 minutes), and a call's own cost, well under a millisecond, is lost in it
CALL_SECONDS = 1.0


class PassStopped(Exception):
    """A stop request ended a pass between two graph calls: the epoch is unfinished and the layers
    may hold part of its updates."""

    def __init__(self, epoch: int, label: str, done: int, batches: int):
        super().__init__(f"inside epoch {epoch} (its {label} pass at batch {done} of {batches})")
        self.epoch, self.label, self.done, self.batches = epoch, label, done, batches


class TrainingDiverged(RuntimeError):
    """A loss or metric became NaN or Inf, or a training loss exceeded the bound (``max_loss``)."""


#: at most this many MB of node outputs per evaluation batch. A pass holds about twice its nodes'
#: outputs at once: cwcomp_mnist's (0.48 MB a row) took an evaluation pass 1060 MB above the memory
#: before it at 1000 rows, 357 MB at this bound's 267 rows (peak RSS, a fresh process, random
#: 28 x 28 images)
EVAL_BATCH_MB = 128

def _as_entry(t) -> TaskEntry:
    if isinstance(t, TaskEntry):
        return t
    return TaskEntry(*t)


@dataclass
class EpochResult:
    epoch: int
    stage: int
    seconds: float
    train_samples: int
    metrics: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float]:
        return {"epoch": self.epoch, "stage": self.stage, "seconds": round(self.seconds, 4),
                "samples_per_s": round(self.train_samples / max(self.seconds, 1e-9), 1), **self.metrics}


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized array whose data starts on a 64-byte boundary, as TensorFlow's kernels
    need of a buffer they share (``shared_tensor``)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + 64, np.uint8)
    start = (-buf.ctypes.data) % 64
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def shared_tensor(array: np.ndarray) -> tf.Tensor:
    """A tensor on the buffer of an ``aligned_empty`` array, without a copy (DLPack). Converting a
    381 MB float32 array with ``tf.convert_to_tensor`` took the process 782 MB more, through DLPack
    0 MB; dtypes DLPack does not carry (bfloat16) are copied."""
    try:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    except (TypeError, ValueError, BufferError, tf.errors.InvalidArgumentError):
        return tf.convert_to_tensor(array)


@dataclass(eq=False)
class PassCache:
    """What a pass reuses over the epochs of a stage: the outputs of the frozen nodes it reads
    (``reads``), per example in the data's order, in memory (``features``) or in ``files``; the
    nodes it still runs on them, and the metric variables of the frozen nodes it scores, before
    and after one pass over the data."""

    nodes: list[Node]
    reads: tuple[str, ...]
    features: dict[str, tf.Tensor]
    metrics: list[tuple[tf.Variable, np.ndarray, np.ndarray]]
    nbytes: int
    files: FeatureFiles | None = None
    uses: int = 0

    def replay_metrics(self) -> None:
        """The frozen nodes' metrics as one pass over the data would leave them: they score the
        same outputs every epoch."""
        for var, before, after in self.metrics:
            now = np.asarray(var.numpy())
            var.assign(after if np.array_equal(now, before) else now + (after - before))


@dataclass(eq=False)
class StageCache:
    """The frozen nodes of a stage and the passes that reuse their outputs (None: the pass runs
    the whole network, as it cannot or may not reuse them)."""

    fixed: frozenset[str]
    budget: int
    #: bytes of outputs the stage may keep in files in ``folder`` (0 or no folder: none)
    disk_budget: int = 0
    folder: Path | None = None
    passes: dict[TaskEntry, PassCache | None] = field(default_factory=dict)
    #: every file set opened in the stage, kept or not (one whose writing stopped half-way too)
    opened: list[FeatureFiles] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.passes.values() if p is not None and p.files is None)

    @property
    def disk_nbytes(self) -> int:
        return sum(p.nbytes for p in self.passes.values() if p is not None and p.files is not None)

    def close(self) -> None:
        """Remove the stage's files and their folder."""
        for files in self.opened:
            files.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class TrainMgr:
    """Trains ``layers`` (a dict name -> BaseFFLayer) wired by ``seq(X, y, y_ff)``.

    ``tasks`` is the list of (task, dataset) passes run in order every epoch, e.g. unsup:
    [(TRAIN_POS, pos), (TRAIN_NEG, neg), (EVAL, val_pos), (EVAL, val_neg)].
    """

    def __init__(self, layers: Mapping[str, BaseFFLayer] | Network, seq: SeqFn | None = None,
                 tasks: Sequence[TaskEntry | tuple] = (), *, batch_size: int = 128,
                 eval_batch_size: int | None = None, seed: int = 0, shuffle: bool = True,
                 lr_multiplier: Callable[[int], float] | None = None,
                 progress: ProgressHook | None = None, max_loss: float = math.inf,
                 shuffle_buffer: int | None = None, drop_last: bool = False, same_order: bool = False,
                 augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
                 feature_cache_mb: float = 0, eval_batch_mb: float = EVAL_BATCH_MB,
                 feature_cache_disk_mb: float = 0, feature_cache_dir: Path | str | None = None,
                 stop_requested: Callable[[], bool] | None = None):
        self.network = layers if isinstance(layers, Network) else Network(dict(layers), seq)
        self.layers = self.network.layers
        self.seq = self.network.seq
        self.tasks = [_as_entry(t) for t in tasks]
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or max(batch_size, 1000))
        # rows per evaluation batch: eval_batch_size, fewer when the nodes' outputs of that many
        # rows would exceed eval_batch_mb (set by build, which sees the outputs' sizes)
        self.eval_rows = self.eval_batch_size
        self.eval_batch_bytes = int(eval_batch_mb * 2 ** 20)
        self.seed = int(seed)
        self.shuffle = shuffle
        # rmwkwok's tf.data pipeline, when asked for: a shuffle buffer, no partial last batch,
        # one order for the positive and the negative pass
        self.shuffle_buffer, self.drop_last, self.same_order = shuffle_buffer, bool(drop_last), bool(same_order)
        self.lr_multiplier = lr_multiplier
        # augment(images, seed) -> images, applied to the images of training passes only
        self.augment = augment
        self.progress = progress
        # asked between the graph calls of a pass: True ends the pass with PassStopped
        self.stop_requested = stop_requested
        self.current_epoch = 0
        self.max_loss = float(max_loss)
        self.trace_counts: collections.Counter = collections.Counter()
        self._graphs: dict[tuple, tf.types.experimental.GenericFunction] = {}
        self._built = False
        self._base_lr = {}
        # frozen nodes' outputs kept over a stage's epochs, at most this many bytes (0: never)
        self.feature_cache_bytes = int(feature_cache_mb * 2 ** 20)
        # and those that do not fit, in files in this folder of their own (removed at the start of
        # fit and at every stage's end), at most this many bytes (0 or no folder: never)
        self.feature_cache_dir = Path(feature_cache_dir) if feature_cache_dir is not None else None
        self.feature_cache_disk_bytes = int(feature_cache_disk_mb * 2 ** 20) if self.feature_cache_dir else 0
        self._stage_cache: StageCache | None = None
        #: passes run on kept outputs of frozen nodes, by pass label
        self.cached_passes: collections.Counter = collections.Counter()


    # --- building ------------------------------------------------------------------------
    def build(self, sample: FFData | None = None) -> None:
        """Build every Keras layer and optimizer eagerly (no variables may be born in a graph)."""
        if self._built:
            return
        sample = sample if sample is not None else self._first_data()
        n = min(2, len(sample))
        outs = self.network.transform(sample.X[:n], sample.y[:n], tf.maximum(sample.y_ff[:n], 0))
        outs = outs if isinstance(outs, dict) else {}   # a hand-written sequence may return nothing
        row_bytes = sum(int(np.prod(t.shape[1:])) * t.dtype.size for t in outs.values() if isinstance(t, tf.Tensor))
        self.eval_rows = max(1, min(self.eval_batch_size, self.eval_batch_bytes // max(row_bytes, 1)))
        if self.eval_rows < self.eval_batch_size:
            log.info("evaluation batches of %d rows: the nodes' outputs of eval_batch_size=%d rows would hold %.0f MB",
                     self.eval_rows, self.eval_batch_size, self.eval_batch_size * row_bytes / 2 ** 20)
        for layer in self.layers.values():
            layer.build_optimizer()
            if layer.optimizer is not None:
                self._base_lr[layer.name] = float(np.asarray(layer.optimizer.learning_rate))
        self._built = True

    def _first_data(self) -> FFData:
        # Prefer a fixed dataset: drawing a per-epoch one may need the network built already.
        entries = sorted(self.tasks, key=lambda e: callable(e.data))
        for entry in entries:
            data = entry.resolve(1)
            return data[0] if isinstance(data, tuple) else data
        raise ValueError("TrainMgr has no tasks to build from")

    def resolve_layers(self, names: str | Iterable[str]) -> frozenset[str]:
        if names == "all" or (not isinstance(names, str) and list(names) == ["all"]):
            return frozenset(self.layers)
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.layers]
        if unknown:
            raise KeyError(f"unknown layer(s) {unknown} in schedule; layers are {sorted(self.layers)}")
        return frozenset(names)

    # --- graphs --------------------------------------------------------------------------
    def _active(self, entry: TaskEntry, trainable: frozenset[str]) -> frozenset[str]:
        listed = frozenset(entry.layers) if entry.layers is not None else frozenset(self.layers)
        if entry.task in TRAIN_TASKS:
            return frozenset(n for n in listed & trainable if entry.task in self.layers[n].trains_on)
        if entry.task == Task.EVAL_ALL_LABELS:
            return frozenset(self.layers)   # the overlay must duplicate, whoever scores
        return listed

    def hard_labels(self, X: tf.Tensor, y: tf.Tensor, readout: str, seed: tf.Tensor) -> tf.Tensor:
        """A wrong label per row, drawn from ``readout``'s softmax on the neutral-label input with
        the true class masked out (a plain forward inside the step; the layers' tasks are left as
        they were)."""
        logits = tf.cast(self.network.transform(X, y, tf.fill(tf.shape(y), -1))[readout], tf.float32)
        # a diverged readout must not draw labels out of range (the routing gather would raise
        # before the NaN reaches the loss check): non-finite logits draw uniformly
        logits = tf.where(tf.math.is_finite(logits), logits, 0.0)
        masked = logits - 1e9 * tf.one_hot(y, tf.shape(logits)[1])
        return tf.cast(tf.random.stateless_categorical(masked, 1, seed)[:, 0], tf.int32)

    def _graph(self, key: tuple, entry: TaskEntry, active: frozenset[str], positive: bool, batch_size: int):
        fn = self._graphs.get(key)
        if fn is not None:
            return fn
        task = entry.task
        paired = task in PAIRED_TASKS
        with_neutral = task == Task.TRAIN_PAIR_READOUT
        hard_from = entry.hard_from if paired else None
        augment = self.augment if task in TRAIN_TASKS else None

        def one_pass(X, y, y_ff, perm, Xn, yn, y_ffn, rng, first, last):
            self.trace_counts[key] += 1       # runs only while tracing

            def step(i, idx):
                xb, yb, yffb = tf.gather(X, idx), tf.gather(y, idx), tf.gather(y_ff, idx)
                batch_seed = tf.stack([rng[0], rng[1] + tf.cast(i, tf.int64)])
                xnb = tf.gather(Xn, idx) if paired else None
                if augment is not None:   # a positive and its aligned negative get the same shift
                    aug_seed = tf.random.experimental.stateless_fold_in(batch_seed, 1)
                    xb = augment(xb, aug_seed)
                    xnb = augment(xnb, aug_seed) if paired else None
                if paired:   # positives then their aligned negatives, one step for both
                    yffn_b = tf.gather(y_ffn, idx)
                    if hard_from is not None:   # this batch's wrong labels from the current softmax
                        yffn_b = self.hard_labels(xb, yb, hard_from, batch_seed)
                    xs, ys, yffs = [xb, xnb], [yb, tf.gather(yn, idx)], [yffb, yffn_b]
                    if with_neutral:   # and the positives again, neutral label, for the readouts
                        xs, ys, yffs = xs + [xb], ys + [yb], yffs + [tf.fill(tf.shape(yb), -1)]
                    xb, yb, yffb = tf.concat(xs, 0), tf.concat(ys, 0), tf.concat(yffs, 0)
                self.seq(xb, yb, yffb)
            return self._batch_loop(perm, batch_size, step, first, last)

        spec = [tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)]
        fn = tf.function(one_pass, input_signature=spec + spec[:3] + [tf.TensorSpec([2], tf.int64)] + BATCH_RANGE)
        self._graphs[key] = fn
        return fn

    def _batch_loop(self, perm: tf.Tensor, batch_size: int, step: Callable[[tf.Tensor, tf.Tensor], None],
                    first: tf.Tensor, last: tf.Tensor) -> tf.Tensor:
        """In a graph: ``step(i, indices)`` for batches ``first`` to ``last - 1`` of ``perm``, in
        order; returns the number of batches run."""
        n = tf.shape(perm)[0]
        for i in tf.range(first, last):
            step(i, perm[i * batch_size: tf.minimum((i + 1) * batch_size, n)])
        return last - first

    def _run_in_calls(self, fn, args: tuple, batches: int, label: str) -> None:
        """Every batch of a pass through ``fn(*args, first, last)``, in calls of about
        ``CALL_SECONDS`` each (the first is one batch: it traces the graph). What a batch computes
        does not depend on the call it runs in: its draws are keyed by its index in the pass."""
        done, size = 0, 1
        while done < batches:
            self._check_stop(label, done, batches)
            n = min(size, batches - done)
            t0 = time.perf_counter()
            fn(*args, tf.constant(done, tf.int32), tf.constant(done + n, tf.int32))
            seconds = time.perf_counter() - t0
            done += n
            if self.progress is not None:
                self.progress.advance(done)
            # at most 4x the last call: one fast call of noise must not make the next one minutes long
            size = max(1, min(4 * n, round(n * CALL_SECONDS / max(seconds, 1e-6))))

    def _check_stop(self, label: str, done: int, batches: int) -> None:
        if self.stop_requested is not None and self.stop_requested():
            raise PassStopped(self.current_epoch, label, done, batches)

    def _cached_graph(self, key: tuple, cache: PassCache, batch_size: int):
        """The graph of a pass on kept frozen outputs: the batches of ``perm`` gathered from them,
        and the nodes after them run as in ``seq``."""
        fn = self._graphs.get(key)
        if fn is not None:
            return fn
        names = cache.reads

        def cached_pass(features, y, y_ff, perm, first, last):
            self.trace_counts[key] += 1       # runs only while tracing

            def step(i, idx):
                outs = {name: tf.gather(f, idx) for name, f in zip(names, features)}
                self.network.run_from(outs, cache.nodes, tf.gather(y, idx), tf.gather(y_ff, idx))
            return self._batch_loop(perm, batch_size, step, first, last)

        spec = tuple(tf.TensorSpec([None, *f.shape[1:]], f.dtype) for f in cache.features.values())
        fn = tf.function(cached_pass, input_signature=[spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
                                                       tf.TensorSpec([None], tf.int32)] + BATCH_RANGE)
        self._graphs[key] = fn
        return fn

    def _file_batch_graph(self, key: tuple, cache: PassCache):
        """The graph of one batch of a pass on frozen outputs read from files: the nodes after
        them run as in ``seq`` (the batch loop is in Python, one read per batch)."""
        fn = self._graphs.get(key)
        if fn is not None:
            return fn
        names = cache.reads

        def file_batch(features, y, y_ff):
            self.trace_counts[key] += 1       # runs only while tracing
            self.network.run_from(dict(zip(names, features)), cache.nodes, y, y_ff)

        spec = tuple(tf.TensorSpec([None, *shape], tf.as_dtype(dtype)) for shape, dtype in cache.files.shapes.values())
        fn = tf.function(file_batch, input_signature=[spec, tf.TensorSpec([None], tf.int32),
                                                      tf.TensorSpec([None], tf.int32)])
        self._graphs[key] = fn
        return fn

    def _run_from_files(self, key: tuple, cache: PassCache, data: FFData, perm: np.ndarray, batch_size: int,
                        label: str = "") -> None:
        """A pass on frozen outputs kept in files: every batch of ``perm`` in order, its rows read
        into one batch buffer, then the rest of the network on them."""
        fn = self._file_batch_graph(key, cache)
        reader = cache.files.reader(batch_size)
        y, y_ff = data.y.numpy(), data.y_ff.numpy()
        batches = math.ceil(len(perm) / batch_size)
        every = max(batches // 50, 1)   # the bar moves ~50 times a pass
        for i in range(batches):
            self._check_stop(label, i, batches)
            idx = perm[i * batch_size:(i + 1) * batch_size]
            rows = reader.read(idx)
            fn(tuple(rows[name] for name in cache.reads), y[idx], y_ff[idx])
            if self.progress is not None and ((i + 1) % every == 0 or i + 1 == batches):
                self.progress.advance(i + 1)

    def run_task(self, entry: TaskEntry, trainable: frozenset[str], epoch: int, index: int = 0) -> int:
        """Run one pass; returns the number of samples processed (0 if nothing was active)."""
        active = self._active(entry, trainable)
        if not active:
            return 0
        data = entry.resolve(epoch)
        paired = entry.task in PAIRED_TASKS
        pos, neg = data if paired else (data, data)
        if paired and len(pos) != len(neg):
            raise ValueError(f"{entry.task.name} needs aligned datasets, got {len(pos)} and {len(neg)} samples")
        training = entry.task in TRAIN_TASKS
        n = len(pos)
        perm = self.order(n, epoch, index) if training else np.arange(n, dtype=np.int32)
        bs = self.batch_size if training else self.eval_rows
        if training and self.drop_last and n >= bs:
            perm = perm[: n - n % bs]     # rmwkwok's tf.data batching: no partial last batch
        if entry.task == Task.EVAL_ALL_LABELS:
            # eval_batch_size counts rows: an all-labels pass makes one row per (image, label), and
            # 1000 images x 10 labels would hold ~0.6 GB more activations at 4 x 2000.
            bs = max(1, bs // self.network.all_label_rows)
        key = (entry.task, pos.positive, active, bs, entry.hard_from if paired else None)
        label = entry.label or entry.task.value
        cache = self._pass_cache(entry, active, pos) if self._stage_cache is not None else None
        self.network.set_tasks(active, entry.task, pos.positive)
        if cache is None:
            fn = self._graph(key, entry, active, pos.positive, bs)
            # in-graph draws (hard labels) are keyed by (seed, epoch, pass, batch): a resumed run redraws the same
            rng = tf.constant([self.seed, (epoch * 64 + index) * 1_000_000], tf.int64)
            args = (pos.X, pos.y, pos.y_ff, tf.constant(perm), neg.X, neg.y, neg.y_ff, rng)
        else:
            if cache.uses:     # the pass that kept the outputs scored the frozen nodes itself
                cache.replay_metrics()
            cache.uses += 1
            self.cached_passes[entry.label or entry.task.value] += 1
            kept_key = key + (tuple(n.name for n in cache.nodes), cache.reads)
            if cache.files is None:
                fn = self._cached_graph(("kept",) + kept_key, cache, bs)
                args = (tuple(cache.features.values()), pos.y, pos.y_ff, tf.constant(perm))
            else:
                fn, args = self._run_from_files, (("kept in files",) + kept_key, cache, pos, perm, bs, label)
        batches = math.ceil(len(perm) / bs)
        if self.progress is not None:
            self.progress.start_pass(label, batches)
        if cache is not None and cache.files is not None:
            fn(*args)
        else:
            self._run_in_calls(fn, args, batches, label)
        if self.progress is not None:
            self.progress.end_pass()
        return len(perm) * (2 if paired else 1) if training else 0

    # --- frozen outputs kept over a stage --------------------------------------------------
    def _stage_cache_for(self, trainable: frozenset[str], epochs_left: int) -> StageCache | None:
        """The frozen nodes of a stage in which ``trainable`` train, when keeping their outputs
        can pay: a budget, two epochs or more left, and a frozen layer with weights (one without
        costs little to recompute)."""
        if not (self.feature_cache_bytes or self.feature_cache_disk_bytes) or epochs_left < 2:
            return None
        changing = frozenset().union(*(self._active(e, trainable) for e in self.tasks if e.task in TRAIN_TASKS))
        fixed = self.network.fixed_nodes(changing)
        if not any(self.layers[name].trainable_variables for name in fixed):
            return None
        return StageCache(fixed, self.feature_cache_bytes, self.feature_cache_disk_bytes, self.feature_cache_dir)

    def _pass_cache(self, entry: TaskEntry, active: frozenset[str], data: FFData) -> PassCache | None:
        """The kept frozen outputs of this pass in the current stage, computed at its first run;
        None when the pass must run the whole network: its data changes between epochs (negatives
        drawn afresh, augmented training images), it is paired or all-labels, or its outputs fit
        neither what is left of the memory budget nor the disk budget and the disk's free space."""
        stage = self._stage_cache
        if entry in stage.passes:
            return stage.passes[entry]
        stage.passes[entry] = None
        training = entry.task in TRAIN_TASKS
        if callable(entry.data) or entry.task not in (Task.TRAIN_POS, Task.EVAL) or (training and self.augment is not None):
            return None
        nodes, reads = self.network.needed_nodes(active, stage.fixed)
        if "input" in reads:
            return None
        reads = tuple(sorted(reads))
        probe = self.network.transform(data.X[:1], data.y[:1], tf.maximum(data.y_ff[:1], 0))
        shapes = {r: (tuple(probe[r].shape[1:]), np.dtype(probe[r].dtype.as_numpy_dtype)) for r in reads}
        nbytes = len(data) * sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in shapes.values())
        label = entry.label or entry.task.value
        in_files = self._keep_in_files(stage, label, nbytes, reads)
        if in_files is None:
            return None
        files = None
        if in_files:
            try:
                files = FeatureFiles(stage.folder, f"pass{len(stage.passes)}", len(data), shapes)
                stage.opened.append(files)
            except OSError as exc:
                log.warning("feature cache: %s cannot write files in %s (%s): its frozen layers run every epoch",
                            label, stage.folder, exc)
                return None
        cache = self._fill_cache(entry, active, data, nodes, reads, files)
        if cache is None:
            return None
        stage.passes[entry] = cache
        log.info("feature cache: %s keeps %.1f MB of frozen outputs (%s) for the stage%s", label, nbytes / 2 ** 20,
                 ", ".join(reads) or "scores only", " in files" if in_files else "")
        return cache

    @staticmethod
    def _keep_in_files(stage: StageCache, label: str, nbytes: int, reads: tuple[str, ...]) -> bool | None:
        """Where a pass keeps ``nbytes`` of outputs: in memory (False) while the memory budget
        lasts, else in files (True) while the disk budget lasts and the disk keeps
        ``DISK_RESERVE_BYTES`` free; None (one log line): nowhere, it recomputes them."""
        left = stage.budget - stage.nbytes
        if nbytes <= left:
            return False
        would = f"feature cache: {label} would keep {nbytes / 2 ** 20:.1f} MB of frozen outputs ({', '.join(reads)})"
        if not stage.disk_budget:
            log.info("%s, %.1f MB of feature_cache_mb are left: its frozen layers run every epoch", would, left / 2 ** 20)
            return None
        disk_left = stage.disk_budget - stage.disk_nbytes
        if nbytes > disk_left:
            log.info("%s, %.1f MB of feature_cache_mb and %.1f MB of feature_cache_disk_mb are left: its frozen layers "
                     "run every epoch", would, left / 2 ** 20, disk_left / 2 ** 20)
            return None
        free = free_bytes(stage.folder)
        if nbytes + DISK_RESERVE_BYTES > free:
            log.info("%s, more than feature_cache_mb, and the disk of %s has %.1f MB free (%.0f MB must stay free): its "
                     "frozen layers run every epoch", would, stage.folder, free / 2 ** 20, DISK_RESERVE_BYTES / 2 ** 20)
            return None
        return True

    def _fill_cache(self, entry: TaskEntry, active: frozenset[str], data: FFData, nodes: list[Node],
                    reads: tuple[str, ...], files: FeatureFiles | None = None) -> PassCache | None:
        """One pass of the frozen nodes over ``data`` in its order, in batches of the evaluation
        size (an evaluation pass's own batches, so its frozen nodes score exactly as before): keeps
        the outputs in ``reads`` per example, in memory or written to ``files``, and the metric
        variables of the frozen nodes it scores before and after. None when the files cannot be
        written (the scores are put back as they were, the files removed)."""
        scoring = active & self._stage_cache.fixed if entry.task == Task.EVAL else frozenset()
        variables = [v for name in sorted(scoring) for v in self.layers[name].metric_variables()]
        before = [np.array(v.numpy()) for v in variables]
        self.network.set_tasks(scoring, entry.task, data.positive)
        key = ("frozen outputs", entry.task, data.positive, scoring, reads)
        fn = self._graphs.get(key)
        if fn is None:
            def frozen_outputs(X, y, y_ff):
                # the nodes after the frozen ones only transform here, and their unused outputs are
                # pruned from the graph; a graph with no output at all did not update the scores
                outs = self.seq(X, y, y_ff)
                return (tf.shape(X)[0], *(outs[r] for r in reads))

            fn = tf.function(frozen_outputs, input_signature=[tf.TensorSpec([None, None], tf.float32),
                                                              tf.TensorSpec([None], tf.int32),
                                                              tf.TensorSpec([None], tf.int32)])
            self._graphs[key] = fn
        n, bs = len(data), self.eval_rows
        label = entry.label or entry.task.value
        kept: dict[str, np.ndarray] = {}
        if self.progress is not None:
            self.progress.start_pass(f"{label}: frozen layers", math.ceil(n / bs))
        try:
            for start in range(0, n, bs):
                self._check_stop(f"{label} (frozen layers)", start // bs, math.ceil(n / bs))
                outs = fn(data.X[start:start + bs], data.y[start:start + bs], data.y_ff[start:start + bs])
                batch = {name: out.numpy() for name, out in zip(reads, outs[1:])}
                if files is not None:
                    files.append(batch)
                else:
                    for name, out in batch.items():
                        if name not in kept:
                            kept[name] = aligned_empty((n, *out.shape[1:]), out.dtype)
                        kept[name][start:start + bs] = out
                if self.progress is not None:
                    self.progress.advance(start // bs + 1)
            if files is not None:
                files.finish()
        except OSError as exc:   # the disk filled up or went away after the free-space check
            if files is None:
                raise
            files.close()
            for var, value in zip(variables, before):
                var.assign(value)
            log.warning("feature cache: %s could not write its frozen outputs (%s): its frozen layers run every epoch",
                        label, exc)
            return None
        finally:
            if self.progress is not None:
                self.progress.end_pass()
        metrics = list(zip(variables, before, [np.array(v.numpy()) for v in variables]))
        features = {name: shared_tensor(kept.pop(name)) for name in list(kept)}
        nbytes = files.nbytes if files is not None else sum(int(np.prod(f.shape)) * f.dtype.size for f in features.values())
        return PassCache(nodes, reads, features, metrics, nbytes, files)

    def order(self, n: int, epoch: int, index: int) -> np.ndarray:
        """The order of a training pass: a function of (seed, epoch, pass) only, so a resumed run
        sees the same order. ``same_order``: every training pass of an epoch gets the same order
        (rmwkwok's Result 2 shuffles positives and negatives together); ``shuffle_buffer``: the
        order a tf.data ``shuffle(buffer)`` gives, local instead of a full permutation."""
        if not self.shuffle:
            return np.arange(n, dtype=np.int32)
        rng = np.random.default_rng([self.seed, epoch, 0 if self.same_order else index])
        if self.shuffle_buffer:
            return buffered_shuffle(n, self.shuffle_buffer, rng)
        return rng.permutation(n).astype(np.int32)

    # --- epochs --------------------------------------------------------------------------
    def reset_metrics(self) -> None:
        for layer in self.layers.values():
            layer.reset_metrics()

    def metric_results(self, prefix: str = "") -> dict[str, float]:
        out = {}
        for name, layer in self.layers.items():
            for key, value in layer.metric_results().items():
                out[f"{prefix}{name}/{key}"] = value
        return out

    def set_learning_rates(self, epoch: int) -> None:
        if self.lr_multiplier is None:
            return
        mult = float(self.lr_multiplier(epoch))
        for layer in self.layers.values():
            if layer.name in self._base_lr:
                layer.optimizer.learning_rate = self._base_lr[layer.name] * mult

    def run_epoch(self, epoch: int, trainable: frozenset[str] | None = None, stage: int = 0,
                  evaluate: bool = True) -> EpochResult:
        """One epoch of every pass; ``evaluate=False`` runs only the training passes."""
        trainable = frozenset(self.layers) if trainable is None else trainable
        self.build()
        self.current_epoch = epoch
        self.set_learning_rates(epoch)
        self.reset_metrics()
        t0 = time.perf_counter()
        samples = sum(self.run_task(entry, trainable, epoch, i) for i, entry in enumerate(self.tasks)
                      if evaluate or entry.task in TRAIN_TASKS)
        seconds = time.perf_counter() - t0
        result = EpochResult(epoch, stage, seconds, samples, self.metric_results())
        self.check_losses(result)
        return result

    def check_losses(self, result: EpochResult) -> None:
        """Raise TrainingDiverged when a metric of the epoch is NaN/Inf or a training loss exceeds
        ``max_loss``: a run whose losses reach 1e22 learns nothing and must not look completed."""
        # one pass in layer order: the first layer that went wrong is the one named. A layer names
        # its training losses (an FF layer: its loss's train_metrics, as the loss registered them)
        for key, value in result.metrics.items():
            if not math.isfinite(value):
                raise TrainingDiverged(f"{key} became {value} in epoch {result.epoch}")
            layer, _, metric = key.rpartition("/")
            if layer in self.layers and metric in self.layers[layer].training_losses and value > self.max_loss:
                raise TrainingDiverged(f"{key} reached {value:.3g} in epoch {result.epoch}, above max_loss="
                                       f"{self.max_loss:g}: training diverged (lower the learning rate?)")

    def evaluate(self, tasks: Sequence[TaskEntry | tuple], prefix: str = "") -> dict[str, float]:
        """Run evaluation passes with fresh metrics and return their results."""
        self.build()
        self.reset_metrics()
        for entry in map(_as_entry, tasks):
            self.run_task(entry, frozenset(), 0)
        return self.metric_results(prefix)

    def fit(self, schedule: Sequence[tuple], *, start_epoch: int = 0,
            on_epoch_end: Callable[[EpochResult], None] | None = None, eval_every: int = 1) -> list[EpochResult]:
        """Run the stage schedule [(layer names or "all", epochs), ...]; layers outside a stage's
        list only transform. Epochs are numbered from 1 across stages; epochs up to
        ``start_epoch`` are skipped (resume). The evaluation passes run every ``eval_every``
        epochs and always in the last one."""
        results, epoch = [], 0
        last = sum(int(n) for _, n in schedule)
        if self.feature_cache_dir is not None:   # files of a process that was killed: never trusted
            shutil.rmtree(self.feature_cache_dir, ignore_errors=True)
        for stage, (names, n_epochs) in enumerate(schedule):
            trainable = self.resolve_layers(names)
            self._stage_cache = self._stage_cache_for(trainable, epoch + int(n_epochs) - max(epoch, start_epoch))
            try:
                for _ in range(int(n_epochs)):
                    epoch += 1
                    if epoch <= start_epoch:
                        continue
                    evaluate = eval_every <= 1 or epoch % eval_every == 0 or epoch == last
                    result = self.run_epoch(epoch, trainable, stage, evaluate)
                    results.append(result)
                    if on_epoch_end is not None:   # (a test pass here may reuse the stage's kept outputs)
                        on_epoch_end(result)
            finally:   # the next stage trains other layers, and a caller may restore other weights
                if self._stage_cache is not None:   # its files go with it, whatever ended the stage
                    self._stage_cache.close()
                self._stage_cache = None
        return results
