"""Frozen nodes' outputs kept on disk over a stage, for passes whose outputs do not fit the memory
budget: one file per output, rows in the data's order, written once in sequence and read back a
batch at a time.

Reads are explicit (``os.preadv`` into one batch buffer), not a memory map: the pages of a mapped
file that a process touches count in its resident memory, so mapping gigabytes of features would
grow the process's peak by their size, while a read leaves them in the kernel's page cache only.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

#: the hidden folder, inside a run folder, that holds a stage's feature files while it runs
HIDDEN_FOLDER = ".feature_cache"

#: free space a disk cache must leave on its file system: the checkpoints, metrics and
#: TensorBoard files written while the stage runs still need room
DISK_RESERVE_BYTES = 512 * 2 ** 20

#: buffers one ``preadv`` call may fill (Linux's IOV_MAX)
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 1024


def _read_into(fd: int, views: list[memoryview], offset: int) -> int:
    """Fill ``views`` in turn from the file's bytes at ``offset``; returns the bytes read."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, views, offset)
    got = 0   # platforms without preadv: one pread a row
    for view in views:
        data = os.pread(fd, len(view), offset + got)
        view[:len(data)] = data
        got += len(data)
    return got


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


class FeatureFiles:
    """The rows of a pass's kept outputs, one file per output name in ``folder``: ``append``
    batches in the data's order, ``finish``, then ``reader(rows)`` for batches in any order;
    ``close`` removes the files."""

    def __init__(self, folder: Path, prefix: str, rows: int, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]]):
        self.folder = Path(folder)
        self.rows = int(rows)
        self.shapes = {name: (tuple(int(d) for d in shape), np.dtype(dtype)) for name, (shape, dtype) in shapes.items()}
        self.row_bytes = {name: int(np.prod(shape)) * dtype.itemsize for name, (shape, dtype) in self.shapes.items()}
        self.paths = {name: self.folder / f"{prefix}-{i}.bin" for i, name in enumerate(self.shapes)}
        self.written = 0
        self._fds: dict[str, int] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writers = {name: open(path, "wb") for name, path in self.paths.items()}

    @property
    def nbytes(self) -> int:
        return self.rows * sum(self.row_bytes.values())

    def append(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Write the next rows of every output (the same number of rows for each)."""
        counts = {len(outputs[name]) for name in self.shapes}
        if len(counts) != 1:
            raise ValueError(f"outputs of different lengths {sorted(counts)}")
        for name, writer in self._writers.items():
            array = np.ascontiguousarray(outputs[name], self.shapes[name][1])
            if array.shape[1:] != self.shapes[name][0]:
                raise ValueError(f"{name}: rows of shape {array.shape[1:]}, expected {self.shapes[name][0]}")
            writer.write(memoryview(array.reshape(-1).view(np.uint8)))
        self.written += counts.pop()

    def finish(self) -> None:
        """Close the files for writing and open them for reading: every row must be there."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        if self.written != self.rows:
            raise ValueError(f"{self.written} rows written, {self.rows} expected")
        self._fds = {name: os.open(path, os.O_RDONLY) for name, path in self.paths.items()}

    def reader(self, batch_rows: int) -> "BatchReader":
        if not self._fds:
            raise RuntimeError("FeatureFiles.reader before finish")
        return BatchReader(self, batch_rows)

    def close(self) -> None:
        """Close and remove the files (safe to call more than once)."""
        for writer in self._writers.values():
            writer.close()
        for fd in self._fds.values():
            os.close(fd)
        self._writers, self._fds = {}, {}
        for path in self.paths.values():
            path.unlink(missing_ok=True)


class BatchReader:
    """Reads the rows of one batch into buffers of ``batch_rows`` rows, allocated once: what the
    reader holds is one batch, whatever the files' size. ``read(indices)`` returns views of the
    buffers (valid until the next read), rows in the order of ``indices``."""

    def __init__(self, files: FeatureFiles, batch_rows: int):
        self.files = files
        self.batch_rows = int(batch_rows)
        self.buffers = {name: np.empty((self.batch_rows, *shape), dtype) for name, (shape, dtype) in files.shapes.items()}
        # one writable byte view per buffer row: preadv fills a run of file rows into any slots
        self._slots = {name: [memoryview(row) for row in buf.reshape(self.batch_rows, -1).view(np.uint8)]
                       for name, buf in self.buffers.items()}

    @property
    def nbytes(self) -> int:
        return sum(buf.nbytes for buf in self.buffers.values())

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        n = len(indices)
        if n > self.batch_rows:
            raise ValueError(f"{n} rows asked of a reader of {self.batch_rows}")
        if n and (indices.min() < 0 or indices.max() >= self.files.rows):
            raise IndexError(f"row indices outside 0..{self.files.rows - 1}")
        # the file in increasing offset, each run of consecutive rows in one call, each row
        # straight into its slot: the batch comes out in the asked order, with no copy after
        slot_order = np.argsort(indices, kind="stable")
        rows = indices[slot_order]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts, ends = np.r_[0, breaks], np.r_[breaks, n]
        for name, fd in self.files._fds.items():
            slots, row_bytes = self._slots[name], self.files.row_bytes[name]
            for start, end in zip(starts.tolist(), ends.tolist()):
                for first in range(start, end, _IOV_MAX):
                    last = min(end, first + _IOV_MAX)
                    got = _read_into(fd, [slots[j] for j in slot_order[first:last].tolist()],
                                     int(rows[first]) * row_bytes)
                    if got != (last - first) * row_bytes:
                        raise OSError(f"{self.files.paths[name]}: read {got} bytes, expected {(last - first) * row_bytes}")
        return {name: buf[:n] for name, buf in self.buffers.items()}
