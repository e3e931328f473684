"""Image datasets as flat float32 arrays: MNIST (or any npz in its layout), Fashion-MNIST, CIFAR-10
and scikit-learn's 8x8 digits, each a :class:`Dataset` registered by name in :data:`DATASETS`
(``data=<name>``); a plugin registers its own the same way.

Loading order for MNIST: ``data.path``, then ``$FFRUN_DATA_DIR/mnist.npz``, then Keras' download
(only for users with internet). Fashion-MNIST and CIFAR-10 are read from the files Keras keeps in
its cache (``~/.keras/datasets/``), under the same names, so a copy of that cache works offline:
``data.path`` (the folder), else ``$FFRUN_DATA_DIR/fashion-mnist/`` or
``$FFRUN_DATA_DIR/cifar-10-batches-py/``, else Keras' download.
"""
from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Sequence

import numpy as np

from ffrun.errors import DataError
from ffrun.registry import Registry, subclass_problem

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DATA_DIR_ENV = "FFRUN_DATA_DIR"

# Keras' own names (keras/src/datasets/fashion_mnist.py): the cache subfolder, then per split
# (images, labels); gzipped IDX files.
FASHION_MNIST_DIR = "fashion-mnist"
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# IDX magic numbers: 0x0000 then the element type (0x08: uint8) and the number of dimensions.
IDX_LABELS_MAGIC = 2049     # 0x00000801: uint8, 1 dimension (N,)
IDX_IMAGES_MAGIC = 2051     # 0x00000803: uint8, 3 dimensions (N, H, W)

# The folder cifar-10-python.tar.gz extracts to (keras/src/datasets/cifar10.py). Keras 3 keeps it
# one level down, in ~/.keras/datasets/cifar-10-batches-py-target/ (older Keras: directly in datasets/).
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_KERAS_DIR = "cifar-10-batches-py-target"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_SIDE = 32


@dataclass
class ImageSplits:
    """Train / validation / test images, flattened to (N, D) float32, with int32 labels.

    D = H * W * channels, in the order (H, W, C): ``x.reshape(-1, H, W, channels)`` recovers the
    images (channels is 1 for MNIST-like data and digits, 3 for CIFAR-10)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, int]
    channels: int = 1

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])


#: where Keras downloads each dataset from (keras/src/datasets/*.py), named when a download fails
KERAS_ORIGINS = {"mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
                 "fashion_mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
                 "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"}


def data_dir(wanted: str) -> Path | None:
    """``$FFRUN_DATA_DIR`` as a folder, or None when unset. Set to a folder that does not exist is
    an error, not a silent fall-back to a download: ``wanted`` names what was looked for there."""
    raw = os.environ.get(DATA_DIR_ENV)
    if not raw:
        return None
    folder = Path(raw).expanduser().resolve()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{folder / wanted} cannot be read: the folder {folder} {what} ({DATA_DIR_ENV}={raw}); "
                        f"set {DATA_DIR_ENV} to the folder holding {wanted}, or data.path=...")
    return folder


def resolve_mnist_path(path: str | None) -> Path | None:
    """The local mnist.npz to read, or None to fall back to Keras' download."""
    if path:
        file = Path(path).expanduser().resolve()
        if file.is_dir():
            raise DataError(f"data.path={file} is a directory; this dataset is one npz file "
                            f"(e.g. data.path={file / 'mnist.npz'})")
        return file
    folder = data_dir("mnist.npz")
    return folder / "mnist.npz" if folder is not None else None


@dataclass
class DataPeek:
    """What the CLI's pre-check learns of a dataset without reading its pixels."""

    source: str
    image: tuple[int, int, int]        # (H, W, C) of one image
    train_images: int | None           # training images before the validation hold-out; None: unknown


def available_memory() -> int | None:
    """Bytes of memory a new process can use: /proc/meminfo's MemAvailable (which counts the page
    cache that would be freed), else the free physical pages; None where neither is known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each .npy member of an npz, from its header alone (a few hundred bytes
    each, whatever the array's size); members that cannot be read are left out: load_npz names them."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                try:
                    with archive.open(info) as f:
                        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                                  (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
                        if reader is None:
                            continue
                        shape, _, dtype = reader(f)
                except (ValueError, OSError, EOFError, zlib.error, NotImplementedError, SyntaxError):
                    continue
                out[info.filename[:-4]] = (tuple(int(d) for d in shape), np.dtype(dtype))
    except (OSError, zipfile.BadZipFile, zlib.error, NotImplementedError):
        return {}
    return out


def check_npz_memory(path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]],
                     available: int | None) -> None:
    """Refuse an npz whose arrays cannot fit in memory: loading holds every array as stored and
    the images again as float32 (4 bytes a pixel). This is a floor (training holds more), so a
    refused file could never have loaded."""
    if available is None:
        return
    sizes = {k: math.prod(shape) for k, (shape, _) in headers.items() if k in NPZ_KEYS}
    need = {k: sizes[k] * headers[k][1].itemsize + (4 * sizes[k] if k.startswith("x_") else 0) for k in sizes}
    if sum(need.values()) <= available:
        return
    key = max(need, key=need.get)
    shape, dtype = headers[key]
    raise DataError(f"{path}: {key}'s header claims shape {shape} of {dtype} ({sizes[key]:.3g} values); loading "
                    f"the file needs at least {format_bytes(sum(need.values()))} ({key}: {format_bytes(need[key])}, "
                    f"with its float32 copy), but {format_bytes(available)} of memory is available")


def peek_data(name: str, path: str | None, train_size: int | None = None,
              available: int | None = None) -> DataPeek | None:
    """A dataset's image shape and size, read cheaply before a run (its :meth:`Dataset.peek`),
    the training images capped at ``train_size``. None when the files will only be known at load
    (the loader then names any problem). Raises DataError for a path that cannot be right (a
    missing file or folder, a directory where a file is expected)."""
    peek = DATASETS.get(name)().peek(path, available)
    if peek is not None and train_size and peek.train_images is not None:
        peek.train_images = min(peek.train_images, train_size)
    return peek


def load_npz(path: Path, num_classes: int | None = None) -> tuple[np.ndarray, ...]:
    """Read x_train, y_train, x_test, y_test from an npz in Keras' mnist.npz layout, validated
    by :func:`validate_arrays` (labels come back 1-D)."""
    if not path.is_file():
        raise DataError(f"data file not found: {path} (set data.path=... or {DATA_DIR_ENV}=<folder with mnist.npz>)")
    # np.load tries a non-zip file as .npy, then as a pickle, and its error then suggests
    # allow_pickle=True, i.e. running code from the file: we stop before and say what we expect.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an npz archive (a zip of .npy arrays); "
                        f"expected keys {', '.join(NPZ_KEYS)} (Keras' mnist.npz layout)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks the key(s) {missing}; expected {list(NPZ_KEYS)} (Keras' mnist.npz layout)")
            arrays = tuple(_read_member(path, f, k) for k in NPZ_KEYS)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise DataError(f"cannot read {path} as an npz archive: {_one_line(exc)}") from None
    return validate_arrays(path, arrays, num_classes)


def _read_member(path: Path, f: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return f[key]
    except ValueError as exc:
        # numpy's own words here are "... when allow_pickle=False": an object array, whose
        # unpickling could run code from the file. ffrun never loads those; the fix is in the file.
        if "pickle" in str(exc).lower():
            raise DataError(f"{path}: {key} is a pickled object array; ffrun reads only plain numeric "
                            f"arrays (save it as e.g. np.asarray({key}, np.uint8))") from None
        raise DataError(f"{path}: {key} is not a readable .npy array: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # numpy's advice to load pickles is never ours to pass on (see load_npz).
    return "unreadable data" if "allow_pickle" in text else text


def validate_arrays(source: str | Path, arrays: tuple[np.ndarray, ...],
                    num_classes: int | None = None) -> tuple[np.ndarray, ...]:
    """Check (x_train, y_train, x_test, y_test) from ``source`` (a file, or a dataset's name) and
    return them with 1-D labels; a malformed set raises one :class:`DataError` line naming the
    source and the array, instead of a numpy traceback deep in training or a silent wrong run.

    One rule per check, all vectorized: on the full MNIST (uint8 pixels, so no non-finite scan)
    they cost ~0.03 ms; on the same images as float32 the NaN/Inf scan makes it ~50 ms.
    """
    src = str(source)
    x_train, y_train, x_test, y_test = (np.asarray(a) for a in arrays)
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, (int, np.integer)) or num_classes < 2):
        raise DataError(f"data.num_classes={num_classes!r} must be an integer >= 2 (or null to infer it)")
    xs = {"x_train": x_train, "x_test": x_test}
    ys = {"y_train": y_train, "y_test": y_test}
    for key, x in xs.items():
        # object / str / complex pixels would fail (or mean nothing) at the float32 cast.
        if x.dtype.kind not in "biuf":
            raise DataError(f"{src}: {key} has dtype {x.dtype}; expected numeric images (e.g. uint8 or float32)")
        if x.ndim < 2 or math.prod(x.shape[1:]) == 0:
            raise DataError(f"{src}: {key} has shape {x.shape}; expected (N, H, W) or (N, D) images "
                            f"with at least one pixel")
        if len(x) == 0:
            raise DataError(f"{src}: {key} holds 0 images; both splits need at least one")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{src}: x_train images have shape {x_train.shape[1:]} but x_test images "
                        f"{x_test.shape[1:]}; both splits must share one image shape")
    for key, y in ys.items():
        # 3.0 is a float label: the cast to int32 would truncate 2.7 silently; bool means 2 classes by accident.
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{src}: {key} has dtype {y.dtype}; labels must have an integer dtype "
                            f"(e.g. uint8, int64), not float or bool")
        # Keras' CIFAR-10 labels are (N, 1): a column of labels is still one label per image.
        if y.ndim == 2 and y.shape[1] == 1:
            ys[key] = y = y.ravel()
        if y.ndim != 1:
            raise DataError(f"{src}: {key} has shape {y.shape}; expected one label per image, (N,) or (N, 1)")
    for (xkey, x), (ykey, y) in zip(xs.items(), ys.items()):
        if len(x) != len(y):
            raise DataError(f"{src}: {xkey} has {len(x)} images but {ykey} has {len(y)} labels")
    # -1 is ffrun's neutral label (what readouts that must not see the class get): from a file it
    # would silently make images label-free; a label >= num_classes would index past the one-hot.
    allowed = (f"in [0, {num_classes}) (data.num_classes={num_classes})" if num_classes is not None
               else ">= 0 (data.num_classes unset: inferred as max label + 1)")
    for key, y in ys.items():
        if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
            bad = (y < 0) if num_classes is None else ((y < 0) | (y >= num_classes))
            raise DataError(f"{src}: {key} holds the label {int(y[np.argmax(bad)])} ({int(bad.sum())} of {len(y)} "
                            f"out of range); labels must be {allowed}; -1 is ffrun's neutral label, never a data label")
    for key, x in xs.items():
        # NaN / Inf pixels turn every goodness and loss into NaN several epochs later, silently.
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            n = int(x.size - np.count_nonzero(np.isfinite(x)))
            raise DataError(f"{src}: {key} holds {n} non-finite pixel value(s) (NaN or Inf) out of {x.size}")
    return x_train, ys["y_train"], x_test, ys["y_test"]


def _download_mnist() -> tuple[np.ndarray, ...]:
    import keras
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as exc:  # no internet, proxy, ...
        raise DataError(f"no local MNIST given and the download failed ({type(exc).__name__}); "
                        f"set {DATA_DIR_ENV}=<folder with mnist.npz> or data.path=<file>. "
                        f"{_download_said('mnist', exc)}") from None
    return x_train, y_train, x_test, y_test


def _download_keras(module: str, title: str, hint: str) -> tuple[np.ndarray, ...]:
    """keras.datasets.<module>.load_data() as (x_train, y_train, x_test, y_test); a failure is one
    DataError line saying where the local files go (these machines have no internet)."""
    import keras
    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, module).load_data()
    except Exception as exc:  # no internet, proxy, a hash mismatch, ...
        raise DataError(f"no local {title} found and the download failed ({type(exc).__name__}); {hint}. "
                        f"{_download_said(module, exc)}") from None
    # Keras hands colour images over in its configured layout: ffrun's order is (N, H, W, C).
    if x_train.ndim == 4 and keras.config.image_data_format() == "channels_first":
        x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)
    return x_train, y_train, x_test, y_test


def _download_said(dataset: str, exc: BaseException) -> str:
    """What a failed download said, with what it fetched: the cause (a proxy, DNS, a hash) is in
    the exception's text, which its class name alone does not give."""
    return f"Downloading keras.datasets.{dataset} from {KERAS_ORIGINS[dataset]} said: {_one_line(exc)[:300]}"


def resolve_dataset_dir(path: str | None, folders: tuple[str, ...], files: tuple[str, ...]) -> Path | None:
    """The local folder holding a dataset's ``files``, or None to fall back to Keras' download.

    Looked for in ``path`` (data.path), else in ``$FFRUN_DATA_DIR``: the folder itself or one of its
    subfolders ``folders`` (Keras' cache names), the first that holds any of ``files``. A folder
    holding only some of them is returned too: the reader then names the missing file, where a
    download would silently replace a broken copy. An explicit ``path`` never falls back."""
    if path:
        root = Path(path).expanduser().resolve()
        if root.is_file():
            raise DataError(f"data.path={root} is a file; this dataset is a folder of files "
                            f"({', '.join(files)}): set data.path to the folder (extract an archive first)")
    else:
        root = data_dir(f"{folders[0]}/")
        if root is None:
            return None
    for folder in (root, *(root / f for f in folders)):
        if any((folder / name).is_file() for name in files):
            return folder
    if path:
        raise DataError(f"{root} holds none of {', '.join(files)} (nor do its subfolders {', '.join(folders)})")
    return None


def _read_gzip(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise DataError(f"{what} file not found: {path} (a copy of Keras' files needs all of them)")
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a cut stream, EOFError
        raise DataError(f"cannot read {path} as a gzipped {what} file: {_one_line(exc)}") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """A gzipped IDX file (MNIST's format, big-endian header) as a uint8 array; ``magic`` is the
    expected magic number (:data:`IDX_LABELS_MAGIC` or :data:`IDX_IMAGES_MAGIC`)."""
    raw = _read_gzip(path, "IDX")
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)       # the magic number, then one uint32 per dimension
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header; the file is truncated")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        # images where labels are expected (2051 vs 2049), or not an IDX file at all
        raise DataError(f"{path}: IDX magic number {found}, expected {magic} "
                        f"({'labels' if magic == IDX_LABELS_MAGIC else 'images'}: uint8, {ndim}-D); wrong or damaged file")
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, too short for the {header}-byte IDX header; the file is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    size = len(raw) - header
    if size != math.prod(dims):
        # short: a cut copy; long: the header does not describe the data (both would misalign every image)
        raise DataError(f"{path}: header says {dims} = {math.prod(dims)} bytes of data but the file has {size}; "
                        f"the file is {'truncated' if size < math.prod(dims) else 'longer than its header says'}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_fashion_mnist_dir(folder: Path, num_classes: int | None = None) -> tuple[np.ndarray, ...]:
    """x_train, y_train, x_test, y_test from Keras' four Fashion-MNIST IDX files in ``folder``,
    validated by :func:`validate_arrays`."""
    arrays: list[np.ndarray] = []
    for images_name, labels_name in FASHION_MNIST_FILES.values():
        x = read_idx(folder / images_name, IDX_IMAGES_MAGIC)
        y = read_idx(folder / labels_name, IDX_LABELS_MAGIC)
        # a train-images file beside a t10k-labels file, say: counts that disagree mean mixed-up copies
        if len(x) != len(y):
            raise DataError(f"{folder / images_name} holds {len(x)} images but {folder / labels_name} "
                            f"holds {len(y)} labels; the two files of a split must agree")
        arrays += [x, y]
    return validate_arrays(folder, tuple(arrays), num_classes)


def _numpy_globals() -> dict[tuple[str, str], object]:
    # numpy 2 renamed numpy.core to numpy._core (the old name still imports, with a warning);
    # pickles name whichever the writer had, so both spellings map to the installed objects.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    found: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        found[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct   # protocols 2-4
        found[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer           # protocol 5 (pickle's default)
    return found


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for data files that resolves only the globals a dict of numpy arrays, lists and
    bytes needs; anything else (``os.system``, ``builtins.eval``, ...) raises :class:`DataError`
    before it is even looked up, so a tampered file cannot run code.

    ``source`` names the file in the error."""

    ALLOWED: dict[tuple[str, str], object] = {
        **_numpy_globals(),
        # Python 3 writes bytes at protocol <= 2 as _codecs.encode(str, "latin1"): a pure conversion.
        ("_codecs", "encode"): codecs.encode,
    }

    def __init__(self, file: BinaryIO, source: str | Path, **kwargs: object) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        # The table lookup is the whole resolution: no import runs for a name outside it.
        allowed = self.ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(f"{self.source}: refusing to unpickle {module}.{name}; a data file may hold only "
                            f"numpy arrays, lists, numbers and bytes (the file is damaged or was tampered with)")
        return allowed


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (a pickled dict with b"data", uint8 (N, 3072) channel-major, and
    b"labels", N ints) as images (N, 32, 32, 3) uint8 and labels (N,), through
    :class:`RestrictedUnpickler`."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch not found: {path} (the folder needs {', '.join(CIFAR10_TRAIN_FILES)} "
                        f"and {CIFAR10_TEST_FILE})")
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the original files come from Python 2, whose str keys stay bytes here
            batch = RestrictedUnpickler(f, path, encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle can fail with almost any exception type
        raise DataError(f"cannot read {path} as a CIFAR-10 python batch (a pickle): {_one_line(exc)}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a pickled {type(batch).__name__}; a CIFAR-10 batch is a dict "
                        f"with b'data' and b'labels'")
    # bytes keys in the original files, str keys if someone re-pickled them from Python 3
    batch = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{path} lacks the key(s) {missing}; a CIFAR-10 batch is a dict with b'data' and b'labels'")
    data = batch["data"]
    pixels = 3 * CIFAR10_SIDE * CIFAR10_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        what = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise DataError(f"{path}: b'data' is {what}; expected uint8 (N, {pixels}): per image 1024 red, "
                        f"then 1024 green, then 1024 blue values, row by row")
    try:
        labels = np.asarray(batch["labels"])
    except ValueError as exc:  # a ragged list
        raise DataError(f"{path}: b'labels' is not a flat list of ints: {_one_line(exc)}") from None
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: b'labels' has shape {labels.shape} for {len(data)} images; expected one label per image")
    # Channel-major rows (C, H, W) to ffrun's (H, W, C), so the flattening is (H, W, C) as for Keras.
    images = data.reshape(-1, 3, CIFAR10_SIDE, CIFAR10_SIDE).transpose(0, 2, 3, 1)
    return images, labels


def load_cifar10_dir(folder: Path, num_classes: int | None = None) -> tuple[np.ndarray, ...]:
    """x_train (N, 32, 32, 3), y_train, x_test, y_test from the cifar-10-batches-py folder
    (data_batch_1..5, test_batch), validated by :func:`validate_arrays`."""
    train = [read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    x_test, y_test = read_cifar_batch(folder / CIFAR10_TEST_FILE)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return validate_arrays(folder, (x_train, y_train, x_test, y_test), num_classes)


def _load_fashion_mnist(path: str | None, num_classes: int | None) -> tuple[np.ndarray, ...]:
    files = tuple(name for split in FASHION_MNIST_FILES.values() for name in split)
    folder = resolve_dataset_dir(path, (FASHION_MNIST_DIR,), files)
    if folder is not None:
        return load_fashion_mnist_dir(folder, num_classes)
    hint = (f"copy Keras' {FASHION_MNIST_DIR}/ folder ({', '.join(files)}) into ${DATA_DIR_ENV}, "
            f"or set data.path=<that folder>")
    return validate_arrays("Keras' Fashion-MNIST download",
                           _download_keras("fashion_mnist", "Fashion-MNIST", hint), num_classes)


def _load_cifar10(path: str | None, num_classes: int | None) -> tuple[np.ndarray, ...]:
    files = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    folder = resolve_dataset_dir(path, (CIFAR10_DIR, f"{CIFAR10_KERAS_DIR}/{CIFAR10_DIR}"), files)
    if folder is not None:
        return load_cifar10_dir(folder, num_classes)
    hint = (f"copy the {CIFAR10_DIR}/ folder ({', '.join(files)}; extracted from cifar-10-python.tar.gz) "
            f"into ${DATA_DIR_ENV}, or set data.path=<that folder>")
    return validate_arrays("Keras' CIFAR-10 download", _download_keras("cifar10", "CIFAR-10", hint), num_classes)


def _load_digits() -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data=digits needs scikit-learn: pip install 'ffrun[digits]'") from None
    d = load_digits()
    x, y = d.images, d.target
    # A fixed split: the first 80% train, the rest test (the file order is already mixed).
    cut = int(round(0.8 * len(x)))
    return x[:cut], y[:cut], x[cut:], y[cut:]


#: the largest |pixel| accepted once the images are scaled (to [0, 1] for image data): far beyond
#: any image, far below where float32 goodness (a sum of squares over a layer) overflows
MAX_PIXEL = 1.0e6


def pixel_scale(source: str, *images: np.ndarray) -> float:
    """What an npz's pixels are divided by to lie in [0, 1]: an integer dtype's range (uint8: 255,
    uint16: 65535, as 8- and 16-bit image files store them); other integer dtypes must hold 8-bit
    values (0..255); float images in [0, 1] stay, larger ones are taken as 0..255."""
    x = images[0]
    if x.dtype in (np.uint8, np.uint16):
        return float(np.iinfo(x.dtype).max)
    top = max(float(a.max()) for a in images)
    if x.dtype.kind in "iu":
        low = min(float(a.min()) for a in images)
        if top > 255 or low < 0:
            raise DataError(f"{source}: the images have {x.dtype} pixels in [{low:g}, {top:g}]; integer images must "
                            f"be uint8 (0..255), uint16 (0..65535) or hold 0..255 in another integer dtype")
        return 255.0
    return 255.0 if top > 1.0 else 1.0


def check_pixels(source: str, images: dict[str, np.ndarray], scale: float) -> None:
    """Scaled float32 images must be finite (a float64 pixel beyond float32's range, ~3.4e38, is Inf
    after the cast) and of an image's magnitude (|x| <= MAX_PIXEL): pixels of 1e12 are not an
    image, and would only show up later as a diverging loss."""
    for key, x in images.items():
        finite = np.isfinite(x)
        if not finite.all():
            raise DataError(f"{source}: {key} holds {x.size - int(np.count_nonzero(finite))} pixel value(s) that are "
                            f"not finite as float32 (NaN, Inf, or beyond float32's range of about 3.4e38)")
        top = float(np.abs(x).max())
        if top > MAX_PIXEL:
            raise DataError(f"{source}: {key} holds pixels of magnitude {top * scale:.3g} ({top:.3g} after dividing "
                            f"by {scale:g}); that is not image data: pixels must lie in [0, 1] or [0, 255] "
                            f"(at most {MAX_PIXEL:g} after scaling)")


def resize_images(images: np.ndarray, size: tuple[int, int], chunk: int = 10_000) -> np.ndarray:
    """(N, H, W[, C]) images resized to ``size`` = (height, width) by bilinear interpolation with
    half-pixel centres (PyTorch's ``interpolate(..., align_corners=False)``, torchvision's Resize of
    a tensor when it enlarges), as float32, ``chunk`` images at a time. Each pixel is a weighted mean
    of its neighbours, so the pixel range is kept."""
    import tensorflow as tf     # here: the CLI's pre-checks import this module without TensorFlow

    x = np.asarray(images)
    flat_channels = x.reshape(*x.shape[:3], -1)
    out = np.empty((len(x), *size, flat_channels.shape[-1]), np.float32)
    for start in range(0, len(x), chunk):
        batch = tf.convert_to_tensor(flat_channels[start:start + chunk], tf.float32)
        out[start:start + chunk] = tf.image.resize(batch, size, method="bilinear").numpy()
    return out[..., 0] if x.ndim == 3 else out


def load_splits(name: str, path: str | None = None, val_size: int = 0, normalize: str = "none",
                train_size: int | None = None, test_size: int | None = None,
                num_classes: int | None = None, resize: Sequence[int] | None = None) -> ImageSplits:
    """Load a dataset and hold out the LAST ``val_size`` training images for validation.

    ``num_classes`` (data.num_classes): labels must lie in [0, num_classes); None infers max label + 1.
    ``resize`` (data.resize): (height, width) every image is resized to first (``resize_images``).
    """
    dataset = DATASETS.get(name)()
    source = dataset.source(path)
    x_train, y_train, x_test, y_test = validate_arrays(source, dataset.load(path, num_classes), num_classes)
    scale = dataset.scale if dataset.scale is not None else pixel_scale(source, x_train, x_test)
    if resize is not None:
        if x_train.ndim < 3:
            raise DataError(f"data.resize needs images (N, H, W[, C]), but {source} holds rows of "
                            f"{x_train.shape[1]} values")
        size = (int(resize[0]), int(resize[1]))
        x_train, x_test = resize_images(x_train, size), resize_images(x_test, size)
    image_shape = tuple(x_train.shape[1:3]) if x_train.ndim >= 3 else (int(x_train.shape[1]), 1)
    # (N, H, W, C): C channels; every trailing axis counts, so that H * W * channels == input_dim always
    channels = math.prod(x_train.shape[3:]) if x_train.ndim >= 4 else 1
    # float64 pixels beyond float32's range become Inf in the cast: check_pixels says so, not numpy's warning
    with np.errstate(over="ignore"):
        flat = lambda a: (np.asarray(a, np.float32).reshape(len(a), -1) / scale)
        x_train, x_test = flat(x_train), flat(x_test)
    check_pixels(source, {"x_train": x_train, "x_test": x_test}, scale)
    y_train, y_test = np.asarray(y_train, np.int32).ravel(), np.asarray(y_test, np.int32).ravel()
    if train_size:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    if test_size:
        x_test, y_test = x_test[:test_size], y_test[:test_size]
    if not 0 <= val_size < len(x_train):
        raise DataError(f"data.val_size={val_size} must be in [0, {len(x_train)}) for {name}")
    cut = len(x_train) - val_size
    x_val, y_val = x_train[cut:], y_train[cut:]
    x_train, y_train = x_train[:cut], y_train[:cut]
    if normalize == "standard":
        # Statistics of the training images only (MNIST: 0.1307 / 0.3081, torchvision's Normalize).
        mean, std = float(x_train.mean()), float(x_train.std())
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
    elif normalize != "none":
        raise DataError(f"data.normalize must be none or standard, got {normalize!r}")
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    return ImageSplits(name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes, image_shape, channels)


class Dataset:
    """An image dataset ffrun loads by name (``data=<name>`` or ``data.name=<name>``).

    A subclass sets ``name``, defines :meth:`load`, and is registered with
    ``@DATASETS.register()``. :func:`load_splits` validates what ``load`` returns
    (:func:`validate_arrays`), scales the pixels to [0, 1], flattens the images and holds out the
    validation set. ``peek`` lets the CLI check shapes and memory before a run folder is made."""

    name: ClassVar[str]
    #: ``data.<key>`` values that ``data=<name>`` sets when conf/data/ has no YAML file for it
    defaults: ClassVar[dict[str, Any]] = {}
    #: what the pixels are divided by to lie in [0, 1]; None: from their dtype and range (:func:`pixel_scale`)
    scale: ClassVar[float | None] = None

    def load(self, path: str | None, num_classes: int | None) -> tuple[np.ndarray, ...]:
        """x_train, y_train, x_test, y_test: images (N, H, W[, C]) or (N, D), integer labels
        (``data.path`` and ``data.num_classes`` as given); a problem is a :class:`DataError`."""
        raise NotImplementedError

    def source(self, path: str | None) -> str:
        """What messages call the data (a file, a folder or the dataset's name)."""
        return str(path) if path else self.name

    def peek(self, path: str | None, available: int | None) -> DataPeek | None:
        """The image shape and training-set size without reading the pixels, or None when only
        loading can tell (``available``: bytes of memory, to refuse a file that cannot fit)."""
        return None


def _dataset_contract(name: str, cls: Any) -> str | None:
    problem = subclass_problem(name, cls, Dataset, {"load": "load(path, num_classes) -> (x_train, y_train, x_test, y_test)"})
    if problem:
        return problem
    if not isinstance(cls.defaults, dict) or "name" in cls.defaults or not all(isinstance(k, str) for k in cls.defaults):
        return f"its defaults must map data keys (not name) to values, got {cls.defaults!r}"
    return None


#: the datasets by name: ``data=<name>`` picks one
DATASETS: Registry[type[Dataset]] = Registry("dataset", contract=_dataset_contract)


@DATASETS.register()
class Mnist(Dataset):
    """``data.path``, else ``$FFRUN_DATA_DIR/mnist.npz``, else Keras' download."""

    name = "mnist"

    def source(self, path: str | None) -> str:
        local = self._file(path)
        return str(local) if local else "Keras' MNIST download"

    def _file(self, path: str | None) -> Path | None:
        return resolve_mnist_path(path)

    def load(self, path: str | None, num_classes: int | None) -> tuple[np.ndarray, ...]:
        local = self._file(path)
        return load_npz(local, num_classes) if local else _download_mnist()

    def peek(self, path: str | None, available: int | None) -> DataPeek | None:
        file = self._file(path)
        if file is None:
            return DataPeek("Keras' MNIST download", (28, 28, 1), 60000)
        if not file.is_file():
            raise DataError(f"data file not found: {file} (set data.path=... or {DATA_DIR_ENV}=<folder with mnist.npz>)")
        headers = npz_headers(file)
        check_npz_memory(file, headers, available)
        shape = headers.get("x_train", ((),))[0]
        if len(shape) >= 2 and all(d > 0 for d in shape[1:]):
            # as load_splits reads it: (N, D) is a D x 1 image; every axis after W is a channel
            return DataPeek(str(file), (shape[1], shape[2] if len(shape) >= 3 else 1, math.prod(shape[3:])), shape[0])
        return None


@DATASETS.register()
class Npz(Mnist):
    """Any npz in Keras' mnist.npz layout: ``data.path`` is required."""

    name = "npz"

    def _file(self, path: str | None) -> Path | None:
        if not path:
            raise DataError("data=npz needs data.path=<file.npz> with keys x_train, y_train, x_test, y_test")
        return resolve_mnist_path(path)


@DATASETS.register()
class Digits(Dataset):
    """scikit-learn's bundled 8x8 digits (pixels 0..16)."""

    name = "digits"
    scale = 16.0

    def source(self, path: str | None) -> str:
        return "scikit-learn digits"

    def load(self, path: str | None, num_classes: int | None) -> tuple[np.ndarray, ...]:
        return _load_digits()

    def peek(self, path: str | None, available: int | None) -> DataPeek | None:
        return DataPeek("scikit-learn digits", (8, 8, 1), 1438)


class _KerasCache(Dataset):
    """A dataset Keras keeps in its cache: ``data.path`` (the folder), else a copy of that cache's
    folder in ``$FFRUN_DATA_DIR``, else Keras' download. Its pixels are uint8 (checked by the
    readers; Keras' download is uint8 too)."""

    scale = 255.0
    folders: ClassVar[tuple[str, ...]]
    files: ClassVar[tuple[str, ...]]
    image: ClassVar[tuple[int, int, int]]
    train_images: ClassVar[int]

    def source(self, path: str | None) -> str:
        return self.name

    def peek(self, path: str | None, available: int | None) -> DataPeek | None:
        # a local copy may be a subset: its image size is fixed by the format, its count is not
        local = resolve_dataset_dir(path, self.folders, self.files) is not None
        return DataPeek(self.name, self.image, None if local else self.train_images)


@DATASETS.register()
class FashionMnist(_KerasCache):
    name = "fashion_mnist"
    folders = (FASHION_MNIST_DIR,)
    files = tuple(n for split in FASHION_MNIST_FILES.values() for n in split)
    image, train_images = (28, 28, 1), 60000

    def load(self, path: str | None, num_classes: int | None) -> tuple[np.ndarray, ...]:
        return _load_fashion_mnist(path, num_classes)


@DATASETS.register()
class Cifar10(_KerasCache):
    name = "cifar10"
    folders = (CIFAR10_DIR, f"{CIFAR10_KERAS_DIR}/{CIFAR10_DIR}")
    files = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    image, train_images = (32, 32, 3), 50000

    def load(self, path: str | None, num_classes: int | None) -> tuple[np.ndarray, ...]:
        return _load_cifar10(path, num_classes)
