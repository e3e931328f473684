"""Image datasets as flat float32 arrays: MNIST (or any npz in its layout) and scikit-learn's 8x8 digits.

Loading order for MNIST: ``data.path``, then ``$FFRUN_DATA_DIR/mnist.npz``, then Keras' download
(only for users with internet).
"""
from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ffrun.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DATA_DIR_ENV = "FFRUN_DATA_DIR"


@dataclass
class ImageSplits:
    """Train / validation / test images, flattened to (N, D) float32, with int32 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, int]

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])


def resolve_mnist_path(path: str | None) -> Path | None:
    """The local mnist.npz to read, or None to fall back to Keras' download."""
    if path:
        return Path(path).expanduser().resolve()
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return (Path(data_dir).expanduser() / "mnist.npz").resolve()
    return None


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
                        f"set {DATA_DIR_ENV}=<folder with mnist.npz> or data.path=<file>") from None
    return x_train, y_train, x_test, y_test


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


def load_splits(name: str, path: str | None = None, val_size: int = 0, normalize: str = "none",
                train_size: int | None = None, test_size: int | None = None,
                num_classes: int | None = None) -> ImageSplits:
    """Load a dataset and hold out the LAST ``val_size`` training images for validation.

    ``num_classes`` (data.num_classes): labels must lie in [0, num_classes); None infers max label + 1.
    """
    if name == "digits":
        x_train, y_train, x_test, y_test = validate_arrays("scikit-learn digits", _load_digits(), num_classes)
        scale = 16.0
    elif name in ("mnist", "npz"):
        if name == "npz" and not path:
            raise DataError("data=npz needs data.path=<file.npz> with keys x_train, y_train, x_test, y_test")
        local = resolve_mnist_path(path)
        x_train, y_train, x_test, y_test = (load_npz(local, num_classes) if local
                                            else validate_arrays("Keras' MNIST download", _download_mnist(), num_classes))
        scale = 255.0 if x_train.dtype == np.uint8 or x_train.max() > 1.0 else 1.0
    else:
        raise DataError(f"unknown dataset {name!r}; choose mnist, npz or digits")
    image_shape = tuple(x_train.shape[1:3]) if x_train.ndim >= 3 else (int(x_train.shape[1]), 1)
    flat = lambda a: (np.asarray(a, np.float32).reshape(len(a), -1) / scale)
    x_train, x_test = flat(x_train), flat(x_test)
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
    return ImageSplits(name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes, image_shape)
