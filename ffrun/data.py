"""Image datasets as flat float32 arrays: MNIST (or any npz in its layout) and scikit-learn's 8x8 digits.

Loading order for MNIST: ``data.path``, then ``$FFRUN_DATA_DIR/mnist.npz``, then Keras' download
(only for users with internet).
"""
from __future__ import annotations

import os
import zipfile
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


def load_npz(path: Path) -> tuple[np.ndarray, ...]:
    """Read x_train, y_train, x_test, y_test from an npz in Keras' mnist.npz layout."""
    if not path.is_file():
        raise DataError(f"data file not found: {path} (set data.path=... or {DATA_DIR_ENV}=<folder with mnist.npz>)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks the key(s) {missing}; expected {list(NPZ_KEYS)} (Keras' mnist.npz layout)")
            arrays = tuple(f[k] for k in NPZ_KEYS)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path} as an npz file: {exc}") from None
    x_train, y_train, x_test, y_test = arrays
    if len(x_train) != len(y_train) or len(x_test) != len(y_test) or x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{path}: images and labels disagree in shape "
                        f"(x_train {x_train.shape}, y_train {y_train.shape}, x_test {x_test.shape}, y_test {y_test.shape})")
    return arrays


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
                train_size: int | None = None, test_size: int | None = None) -> ImageSplits:
    """Load a dataset and hold out the LAST ``val_size`` training images for validation."""
    if name == "digits":
        x_train, y_train, x_test, y_test = _load_digits()
        scale = 16.0
    elif name in ("mnist", "npz"):
        if name == "npz" and not path:
            raise DataError("data=npz needs data.path=<file.npz> with keys x_train, y_train, x_test, y_test")
        local = resolve_mnist_path(path)
        x_train, y_train, x_test, y_test = load_npz(local) if local else _download_mnist()
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
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return ImageSplits(name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes, image_shape)
