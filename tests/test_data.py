"""Loading: local npz (config key or FFRUN_DATA_DIR), its errors, splits, digits."""
import numpy as np
import pytest

from ffrun.data import load_splits
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
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="cannot read"):
        load_splits("npz", str(bad))
    np.savez(tmp_path / "keys.npz", x_train=np.zeros((2, 2)))
    with pytest.raises(DataError, match="lacks the key"):
        load_splits("npz", str(tmp_path / "keys.npz"))


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
