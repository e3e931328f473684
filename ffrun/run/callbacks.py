"""What happens at the end of every epoch of an FF run, one callback per job: the test set scored
beside the validation set, the metrics.csv row, the best epoch, the log line and the live bar,
TensorBoard, checkpoints, and the stop policy (Ctrl-C, SIGTERM, ``stop_after_epoch``).

The loop calls them in order with the epoch's row; a callback may add columns to the row (the ones
before the CSV writer) or raise ``StopTraining`` (the last one).
"""
from __future__ import annotations

import logging
import signal
import statistics
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

from ffrun.core.checkpoints import BestWeights, Checkpointer
from ffrun.core.network import Network
from ffrun.core.trainer import EpochResult, PassStopped
from ffrun.run import outputs

log = logging.getLogger("ffrun")
Row = dict[str, float]


class Callback:
    def on_epoch_end(self, result: EpochResult, row: Row) -> None:
        pass

    def close(self) -> None:
        pass


class StopTraining(Exception):
    """Raised by StopPolicy after the checkpoint: the run ends ``interrupted``, resumable."""


class TestTracker(Callback):
    """``track_test``: score the test set at every evaluation epoch (test/<readout>/acc columns), the
    best-test-epoch figure rmwkwok's implementation reports, beside the validation-chosen one. It
    never picks the epoch."""

    def __init__(self, evaluate_test: Callable[[], Mapping[str, float]], acc_keys: Sequence[str], primary: str):
        self.evaluate_test, self.acc_keys, self.primary = evaluate_test, acc_keys, primary

    def on_epoch_end(self, result: EpochResult, row: Row) -> None:
        if self.primary in row:
            test = self.evaluate_test()
            row.update({f"test/{k}": test[f"test/{k}"] for k in self.acc_keys if f"test/{k}" in test})


class CSVWriter(Callback):
    """metrics.csv: one row per epoch, flushed at once (a crash keeps every finished epoch)."""

    def __init__(self, path: Path, columns: Sequence[str], rows: list[Row], append: bool):
        self.out = outputs.MetricsCSV(path, columns, append=append)
        self.rows = rows

    def on_epoch_end(self, result: EpochResult, row: Row) -> None:
        self.out.write(row)
        self.rows.append(row)

    def close(self) -> None:
        self.out.close()


class BestEpoch(Callback):
    """Every readout's final and best accuracy; the weights of the primary readout's best epoch."""

    def __init__(self, keys: Sequence[str], primary: str, best_weights: BestWeights):
        self.keys, self.primary, self.best_weights = list(keys), primary, best_weights
        self.best = {k: (-1.0, 0) for k in keys}
        self.final: dict[str, float] = {}

    def update(self, row: Row, take_snapshot: bool = True) -> None:
        for k in self.keys:
            if k in row:
                self.final[k] = row[k]
                if row[k] > self.best[k][0]:
                    self.best[k] = (row[k], int(row["epoch"]))
                    if k == self.primary and take_snapshot:
                        self.best_weights.take()

    def on_epoch_end(self, result: EpochResult, row: Row) -> None:
        self.update(row)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def epoch_line(result: EpochResult, total: int, acc_keys: Sequence[str], ff_names: Sequence[str],
               eta_seconds: float | None = None) -> str:
    m = result.metrics
    parts = [f"epoch {result.epoch}/{total}", f"{result.seconds:.1f}s"]
    parts += [f"{k.split('/')[0]} acc {m[k]:.4f}" for k in acc_keys if k in m]
    losses = [m[f"{n}/{k}"] for n in ff_names for k in ("loss_pos", "loss_neg", "loss_pair", "loss") if f"{n}/{k}" in m]
    if losses:
        parts.append(f"ff loss {sum(losses) / len(losses):.4f}")
    seps = [m[f"{n}/separation"] for n in ff_names if f"{n}/separation" in m]
    if seps:
        parts.append(f"sep {min(seps):.3f}-{max(seps):.3f}")
    if eta_seconds is not None and result.epoch < total:
        parts.append(f"eta {_duration(eta_seconds)}")
    return "  ".join(parts)


class EpochLog(Callback):
    """A log line per epoch ending with the time left, and the live bar when there is one."""

    def __init__(self, total: int, acc_keys: Sequence[str], primary: str, ff_names: Sequence[str],
                 progress: outputs.RichProgress | None):
        self.total, self.acc_keys, self.primary, self.ff_names = total, acc_keys, primary, ff_names
        self.progress = progress
        self.seconds: list[float] = []

    def on_epoch_end(self, result: EpochResult, row: Row) -> None:
        # the time left from this process's epochs (a resumed run's earlier epochs may have run on
        # another machine or load); evaluation epochs and plain ones average out
        self.seconds.append(result.seconds)
        eta = statistics.fmean(self.seconds) * (self.total - result.epoch)
        log.info(epoch_line(result, self.total, self.acc_keys, self.ff_names, eta))
        if self.progress is not None:
            name = self.primary.split("/")[0]
            self.progress.end_epoch(result.epoch, f"{name} {row[self.primary]:.4f}" if self.primary in row else "")


class TensorBoard(Callback):
    """Per-epoch scalars in <run>/tb; activation and goodness histograms every ``histogram_every``."""

    def __init__(self, folder: Path, network: Network, histogram_data: Callable[[int], Any], histogram_every: int):
        self.writer = tf.summary.create_file_writer(str(folder))
        self.network, self.histogram_data, self.every = network, histogram_data, histogram_every

    def on_epoch_end(self, result: EpochResult, row: Row) -> None:
        with self.writer.as_default(step=result.epoch):
            for key, value in row.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        if self.every and result.epoch % self.every == 0:
            self.histograms(self.histogram_data(result.epoch), result.epoch)
        self.writer.flush()

    #: values per activation histogram. tf.summary.histogram builds a (values x buckets) matrix: the
    #: 32M activations of one conv map of 512 images (28 x 28 x 80) took its peak to 9.8 GB (measured);
    #: an evenly strided sample of 2^18 values draws the same histogram for ~60 MB.
    MAX_VALUES = 1 << 18

    #: images per forward pass of the histograms: all 512 at once took a CwComp run's peak up by
    #: 490-620 MB (every map of every block held together); the sample is the same
    CHUNK = 64

    def histograms(self, data, epoch: int, n: int = 512) -> None:
        n = min(n, len(data))
        values = {name: [] for name in self.network.ff_names}
        goodness = {name: [] for name in self.network.ff_names}
        for start in range(0, n, self.CHUNK):
            end = min(start + self.CHUNK, n)
            outs = self.network.transform(data.X[start:end], data.y[start:end], tf.maximum(data.y_ff[start:end], 0))
            for name in self.network.ff_names:
                h = tf.cast(outs[name], tf.float32)
                flat = tf.reshape(h, [tf.shape(h)[0], -1])       # a conv map: one row per image
                size = int(flat.shape[1])
                stride = max(1, -(-n * size // self.MAX_VALUES))    # ceil: at most MAX_VALUES in all
                # every stride-th value of the n images' values, as one strided slice of them all
                values[name].append(tf.reshape(flat, [-1])[(-start * size) % stride::stride])
                goodness[name].append(tf.reduce_sum(tf.square(flat), -1))
            del outs
        with self.writer.as_default(step=epoch):
            for name in self.network.ff_names:
                tf.summary.histogram(f"{name}/activations", tf.concat(values[name], 0))
                tf.summary.histogram(f"{name}/goodness", tf.concat(goodness[name], 0))

    def close(self) -> None:
        self.writer.close()


class PeriodicCheckpoint(Callback):
    def __init__(self, checkpointer: Checkpointer, every: int):
        self.checkpointer, self.every = checkpointer, every

    def on_epoch_end(self, result: EpochResult, row: Row) -> None:
        if self.every and result.epoch % self.every == 0:
            self.checkpointer.save(result.epoch)


class StopPolicy(Callback):
    """SIGINT/SIGTERM ask training to stop, as does ``stop_after_epoch`` (at that epoch's end); a
    checkpoint follows, then StopTraining. A second Ctrl-C aborts at once.

    A signal stops the run inside an epoch, within about a second (the trainer asks ``stop_now``
    between the graph calls of a pass), when the run can go back to the end of the last finished
    epoch: it is the latest checkpoint, or it was kept in memory (an epoch of at least
    ``in_memory_after_s`` seconds), or no epoch has finished yet. That epoch is saved and the
    unfinished one runs again on resume. Otherwise, with short epochs, the epoch finishes first."""

    def __init__(self, checkpointer: Checkpointer, stop_after: int | None, in_memory_after_s: float = 30.0):
        self.checkpointer, self.stop_after = checkpointer, stop_after
        self.in_memory_after_s = in_memory_after_s
        self.reason: str | None = None
        self.last_epoch: int | None = None     # the last epoch this process finished
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        when = "now" if self._can_go_back() else "after this epoch"
        log.warning("%s received: stopping %s and writing a checkpoint (Ctrl-C again to abort now)", self.reason, when)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self.checkpointer.drop_memory()

    def _can_go_back(self) -> bool:
        return (self.last_epoch is None or self.checkpointer.is_latest(self.last_epoch)
                or self.checkpointer.memory_epoch() == self.last_epoch)

    def stop_now(self) -> bool:
        """Whether a stop was asked for and the unfinished epoch may be dropped."""
        return self.reason is not None and self._can_go_back()

    def stopped_inside(self, exc: PassStopped) -> StopTraining:
        """The trainer stopped inside an epoch: save the last finished epoch (from memory if need
        be; its weights go back into the layers) and say so."""
        if self.last_epoch is not None and not self.checkpointer.is_latest(self.last_epoch):
            self.checkpointer.save_from_memory()
        return StopTraining(f"{self.reason} {exc}, which runs again on resume")

    def on_epoch_end(self, result: EpochResult, row: Row) -> None:
        self.last_epoch = result.epoch
        if self.reason is None and self.stop_after and result.epoch >= self.stop_after:
            self.reason = f"stop_after_epoch={self.stop_after}"
        if self.reason is not None:
            self.checkpointer.save_once(result.epoch)
            raise StopTraining(self.reason)
        if self.checkpointer.is_latest(result.epoch) or result.seconds < self.in_memory_after_s:
            self.checkpointer.drop_memory()
        else:
            self.checkpointer.keep_in_memory(result.epoch)
