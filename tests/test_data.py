"""Loading: local npz (config key or FFRUN_DATA_DIR), its errors, splits, digits."""
import re

import numpy as np
import pytest

from ffrun.experiment.datasets import load_splits
from ffrun.errors import DataError


def _write_npz(path, n_train=50, n_test=20):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train, dtype=np.uint8),
             x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             y_test=np.arange(n_test, dtype=np.uint8) % 10)
    return path


def test_npz_by_path_with_validation_split(tmp_path):
    s = load_splits("npz", str(_write_npz(tmp_path / "d.npz")), val_size=10)
    assert s.x_train.shape == (40, 784) and s.x_val.shape == (10, 784) and s.x_test.shape == (20, 784)
    assert s.x_train.dtype == np.float32 and 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0
    assert s.num_classes == 10 and s.image_shape == (28, 28)


def test_mnist_from_env_dir(tmp_path, monkeypatch):
    _write_npz(tmp_path / "mnist.npz")
    monkeypatch.setenv("FFRUN_DATA_DIR", str(tmp_path))
    assert load_splits("mnist", None, val_size=5).x_val.shape[0] == 5


def test_missing_file_names_path_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FFRUN_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere/mnist.npz.*FFRUN_DATA_DIR"):
        load_splits("mnist")


def test_malformed_files(tmp_path):
    np.savez(tmp_path / "keys.npz", x_train=np.zeros((2, 2)))
    with pytest.raises(DataError, match="lacks the key"):
        load_splits("npz", str(tmp_path / "keys.npz"))


def _arrays(**override):
    """A valid 10-class set in Keras' layout (8 train, 4 test images of 3x3), with keys replaced."""
    a = {"x_train": np.zeros((8, 3, 3), np.uint8), "y_train": np.arange(8, dtype=np.uint8),
         "x_test": np.zeros((4, 3, 3), np.uint8), "y_test": np.arange(4, dtype=np.int64)}
    return {**a, **override}


_NAN = np.zeros((4, 3, 3), np.float32)
_NAN[0, 0, :2] = np.nan
_NAN[1, 1, 1] = np.inf
# (case id, arrays to save (None: a text file), array the message must name, regex it must match)
MALFORMED = [
    ("label-42", _arrays(y_train=np.array([0, 1, 2, 42, 4, 5, 6, 7])), "y_train", r"label 42 .*\[0, 10\)"),
    ("label-negative", _arrays(y_test=np.array([0, -1, 2, 3])), "y_test", r"label -1 .*\[0, 10\)"),
    ("label-float", _arrays(y_train=np.arange(8, dtype=np.float64)), "y_train", r"dtype float64.*integer"),
    ("label-float-3.0", _arrays(y_test=np.full(4, 3.0, np.float32)), "y_test", r"dtype float32"),
    ("label-bool", _arrays(y_test=np.ones(4, bool)), "y_test", r"dtype bool"),
    ("x-train-empty", _arrays(x_train=np.zeros((0, 3, 3), np.uint8), y_train=np.zeros(0, np.uint8)),
     "x_train", r"0 images"),
    ("x-test-empty", _arrays(x_test=np.zeros((0, 3, 3), np.uint8), y_test=np.zeros(0, np.uint8)), "x_test", r"0 images"),
    ("x-nan", _arrays(x_test=_NAN), "x_test", r"3 non-finite"),
    ("len-mismatch", _arrays(y_train=np.arange(7)), "y_train", r"x_train has 8 images but y_train has 7 labels"),
    ("y-2d", _arrays(y_test=np.zeros((4, 2), np.int64)), "y_test", r"shape \(4, 2\)"),
    ("image-shapes", _arrays(x_test=np.zeros((4, 2, 3), np.uint8)), "x_test", r"\(3, 3\).*\(2, 3\)"),
    ("x-1d", _arrays(x_train=np.zeros(8, np.uint8)), "x_train", r"shape \(8,\)"),
    ("x-str", _arrays(x_train=np.full((8, 3, 3), "a")), "x_train", r"dtype <U1"),
    ("x-object-pickled", _arrays(x_train=np.full((8, 3, 3), None, object)), "x_train", r"pickled object array"),
    ("text-file", None, "x_train, y_train, x_test, y_test", r"is not an npz archive"),
]


@pytest.mark.parametrize("arrays,array,pattern", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_data_is_one_clear_line(tmp_path, arrays, array, pattern):
    path = tmp_path / "x.npz"
    if arrays is None:
        path.write_text("x_train,y_train\n0,1\n")
    else:
        np.savez(path, **arrays)  # object arrays go in pickled: np.savez allows it when writing
    with pytest.raises(DataError) as info:
        load_splits("npz", str(path), num_classes=10)
    msg = str(info.value)
    assert str(path) in msg and array in msg and "\n" not in msg, msg
    assert re.search(pattern, msg), msg
    assert "allow_pickle" not in msg


def test_labels_uint8_int64_and_column_load(tmp_path):
    for i, (y_train, y_test) in enumerate([(np.arange(8, dtype=np.uint8), np.arange(4, dtype=np.uint8)),
                                           (np.arange(8, dtype=np.int64), np.arange(4, dtype=np.int64)),
                                           (np.arange(8).reshape(8, 1), np.arange(4, dtype=np.uint8).reshape(4, 1))]):
        np.savez(tmp_path / f"{i}.npz", **_arrays(y_train=y_train, y_test=y_test))
        s = load_splits("npz", str(tmp_path / f"{i}.npz"), val_size=2, num_classes=10)
        assert s.y_train.shape == (6,) and s.y_val.shape == (2,) and s.y_test.shape == (4,)
        assert s.y_train.dtype == np.int32 and list(s.y_val) == [6, 7]
        assert s.num_classes == 10 and s.x_train.shape == (6, 9)
    # without num_classes: inferred as max label + 1, as before
    assert load_splits("npz", str(tmp_path / "0.npz")).num_classes == 8


def test_real_mnist_slice(mnist_dir):
    s = load_splits("mnist", str(mnist_dir / "mnist.npz"), val_size=10000)
    assert s.x_train.shape == (50000, 784) and s.x_val.shape == (10000, 784) and s.x_test.shape == (10000, 784)
    # the shared file's documented statistics
    full = np.concatenate([s.x_train, s.x_val])
    assert full.mean() == pytest.approx(0.1307, abs=1e-4)


def test_digits_and_standardization():
    s = load_splits("digits", val_size=100, normalize="standard")
    assert s.input_dim == 64 and s.num_classes == 10 and len(s.x_val) == 100
    assert abs(float(s.x_train.mean())) < 1e-4
    with pytest.raises(DataError):
        load_splits("digits", val_size=10**6)
    # the same checks as for files: here the 10-class set against a wrong class count
    with pytest.raises(DataError, match=r"scikit-learn digits: y_train holds the label 5 .*\[0, 5\)"):
        load_splits("digits", num_classes=5)


def test_negative_label_rejected_without_num_classes(tmp_path):
    np.savez(tmp_path / "n.npz", **_arrays(y_test=np.array([0, -1, 2, 3])))
    with pytest.raises(DataError, match=r"n.npz: y_test holds the label -1 .*>= 0"):
        load_splits("npz", str(tmp_path / "n.npz"))
