"""Checkpoints: every layer's weights, every optimizer's state, the epoch and the best-epoch weights.

Shuffles and negatives are functions of (seed, epoch), so the epoch is all the RNG state a resumed
run needs to draw exactly what an uninterrupted run would.
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import tensorflow as tf

from ffrun.errors import CheckpointError, OutputError
from ffrun.core.layers import BaseFFLayer


class BestWeights:
    """A copy of every weight, taken at the best epoch; variables, so checkpoints carry it."""

    def __init__(self, layers: dict[str, BaseFFLayer]):
        self.layers = {n: l for n, l in layers.items() if l.layer is not None}
        self.copies = {n: [tf.Variable(w, trainable=False) for w in l.layer.weights] for n, l in self.layers.items()}
        self.taken = tf.Variable(False, trainable=False)

    def take(self) -> None:
        for name, layer in self.layers.items():
            for copy, w in zip(self.copies[name], layer.layer.weights):
                copy.assign(w)
        self.taken.assign(True)

    def restore(self) -> bool:
        if not bool(self.taken.numpy()):
            return False
        for name, layer in self.layers.items():
            for copy, w in zip(self.copies[name], layer.layer.weights):
                w.assign(copy)
        return True

    def trackables(self) -> dict:
        return {f"best_{n}": tf.train.Checkpoint(weights=c) for n, c in self.copies.items()} | {"best_taken": self.taken}


class Checkpointer:
    """tf.train.Checkpoint + CheckpointManager over the layers, optimizers, epoch and best weights."""

    def __init__(self, folder: Path, layers: dict[str, BaseFFLayer], best: BestWeights, keep: int = 2):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        objects = {"epoch": self.epoch, **best.trackables()}
        for name, layer in layers.items():
            if layer.layer is not None:
                objects[f"layer_{name}"] = layer.layer
            if layer.optimizer is not None:
                objects[f"opt_{name}"] = layer.optimizer
            if getattr(layer, "running_mean", None) is not None:
                objects[f"peer_{name}"] = layer.running_mean
        self.folder = folder
        self.ckpt = tf.train.Checkpoint(**objects)
        # the state at the end of the last finished epoch, in TF's in-process file system (keep_in_memory)
        self._memory_folder = f"ram://ffrun-{uuid.uuid4().hex}"
        self._memory: tuple[int, str] | None = None
        try:    # it reads the folder's index at once: an empty or damaged one raises here
            self.manager = tf.train.CheckpointManager(self.ckpt, str(folder), max_to_keep=keep)
        except (ValueError, tf.errors.OpError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"the checkpoint index {folder / 'checkpoint'} is unreadable ({first})") from None

    def save(self, epoch: int) -> str:
        """Write ckpt-<epoch>. TF writes it into a temporary folder and only then points the index at
        it, so a failed write (a full disk) leaves the previous checkpoint the latest and whole; the
        half-written temporary folder is removed and the failure is one line naming both."""
        self.epoch.assign(epoch)
        try:
            return self.manager.save(checkpoint_number=epoch)
        except (tf.errors.OpError, OSError) as exc:
            for partial in self.folder.glob(f"ckpt-{epoch}_temp*"):
                shutil.rmtree(partial, ignore_errors=True)
            cause = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
            cause = cause.rsplit(";", 1)[-1].split("[Op:")[0].strip() or type(exc).__name__
            latest = self.manager.latest_checkpoint
            kept = f"the latest complete checkpoint is {Path(latest).name}" if latest else "no checkpoint was written"
            raise OutputError(f"cannot write checkpoint ckpt-{epoch} in {self.folder} ({cause}); {kept}") from None

    def save_once(self, epoch: int) -> None:
        """Save ckpt-<epoch> unless it is already the latest (the end of a run, a stop request)."""
        if not self.is_latest(epoch):
            self.save(epoch)

    def is_latest(self, epoch: int) -> bool:
        latest = self.manager.latest_checkpoint
        return latest is not None and Path(latest).name == f"ckpt-{epoch}"

    def keep_in_memory(self, epoch: int) -> None:
        """Keep the state at the end of ``epoch`` in memory (the one before is dropped), to save it
        later when a stop leaves the next epoch unfinished (``save_from_memory``)."""
        self.drop_memory()
        self.epoch.assign(epoch)
        self._memory = (epoch, self.ckpt.write(f"{self._memory_folder}/epoch-{epoch}"))

    def memory_epoch(self) -> int | None:
        return self._memory[0] if self._memory is not None else None

    def save_from_memory(self) -> int:
        """Put the state kept in memory back into the variables and save it as its epoch's
        checkpoint; returns the epoch."""
        epoch, path = self._memory
        self.ckpt.read(path).assert_existing_objects_matched()
        self.save_once(epoch)
        self.drop_memory()
        return epoch

    def drop_memory(self) -> None:
        if self._memory is not None:
            tf.io.gfile.rmtree(self._memory_folder)
            self._memory = None

    def restore_latest(self, path: str | None = None) -> int:
        """Restore the newest checkpoint the index names (or the one at ``path``, a ``ckpt-N``
        prefix); returns its epoch. Every saved value must find its variable and fit its shape, or
        this raises CheckpointError (never a silent fresh start)."""
        path = path or self.manager.latest_checkpoint
        if path is None:
            raise CheckpointError(f"no checkpoint in {self.folder}")
        try:
            status = self.ckpt.restore(path)
            status.assert_existing_objects_matched()
            status.assert_consumed()
        except Exception as exc:  # noqa: BLE001 - TF raises many kinds for a bad file; all mean the same here
            first = str(exc).strip().splitlines()[0][:300]
            raise CheckpointError(f"checkpoint {path} is corrupt or does not match the configured network: {first}") from None
        return int(self.epoch.numpy())
