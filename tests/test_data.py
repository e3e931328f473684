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


# --- Fashion-MNIST and CIFAR-10: small files in the real formats (Keras' names), never a download ---

import gzip  # noqa: E402
import pickle  # noqa: E402

from ffrun.experiment import datasets  # noqa: E402


def _write_idx(path, magic, array):
    """A gzipped IDX file: big-endian magic number, one uint32 per dimension, then the uint8 data."""
    array = np.asarray(array, np.uint8)
    header = np.array([magic, *array.shape], ">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.tobytes()))
    return path


def _fashion_dir(root, n_train=5, n_test=3):
    """Keras' fashion-mnist/ folder in root: 28x28 images, image i has the value 10 * i + 5 at
    (row i, column 2 * i), labels 9, 8, 7, ..."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            x[i, i, 2 * i] = 10 * i + 5
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", 2051, x)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", 2049, 9 - np.arange(n))
    return folder


def test_fashion_mnist_from_env_dir(tmp_path, monkeypatch):
    _fashion_dir(tmp_path)
    monkeypatch.setenv("FFRUN_DATA_DIR", str(tmp_path))
    s = load_splits("fashion_mnist", val_size=2, num_classes=10)
    assert s.x_train.shape == (3, 784) and s.x_val.shape == (2, 784) and s.x_test.shape == (3, 784)
    assert s.x_train.dtype == np.float32 and s.x_train.min() == 0.0 and s.x_train.max() <= 1.0
    assert s.image_shape == (28, 28) and s.channels == 1 and s.num_classes == 10
    assert list(s.y_train) == [9, 8, 7] and list(s.y_val) == [6, 5] and list(s.y_test) == [9, 8, 7]
    images = s.x_test.reshape(-1, 28, 28)
    for i in range(3):
        assert images[i, i, 2 * i] == pytest.approx((10 * i + 5) / 255) and np.count_nonzero(images[i]) == 1


def test_fashion_mnist_by_path_to_the_folder_or_its_parent(tmp_path):
    folder = _fashion_dir(tmp_path)
    for path in (folder, tmp_path):
        assert load_splits("fashion_mnist", str(path)).x_train.shape == (5, 784)


def _fashion_files(folder):
    return {p.name: p for p in folder.iterdir()}


def _cut_data(p):       # a gzip that is fine but whose IDX data stops short
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-10]))


def _cut_gzip(p):       # a copy interrupted mid-file: the gzip stream itself ends early
    p.write_bytes(p.read_bytes()[:-12])


def _wrong_magic(p):    # an images file where the labels file should be
    _write_idx(p, 2051, np.zeros((5, 28, 28)))


def _padded(p):
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()) + b"\0\0"))


# (case id, file to damage, damage, regex the message must match)
BAD_IDX = [
    ("truncated-data", "train-images-idx3-ubyte.gz", _cut_data, r"\(5, 28, 28\) = 3920 bytes .* has 3910; the file is truncated"),
    ("truncated-gzip", "t10k-labels-idx1-ubyte.gz", _cut_gzip, r"cannot read .* as a gzipped IDX file"),
    ("wrong-magic", "train-labels-idx1-ubyte.gz", _wrong_magic, r"magic number 2051, expected 2049"),
    ("bad-magic-images", "t10k-images-idx3-ubyte.gz", lambda p: p.write_bytes(gzip.compress(b"\x1f\x8b\x08\x00xx")),
     r"magic number \d+, expected 2051"),
    ("short-header", "t10k-images-idx3-ubyte.gz", lambda p: p.write_bytes(gzip.compress(b"\0\0\x08\x03\0\0")),
     r"too short for the 16-byte IDX header"),
    ("padded", "t10k-labels-idx1-ubyte.gz", _padded, r"longer than its header says"),
    ("missing", "t10k-images-idx3-ubyte.gz", lambda p: p.unlink(), r"IDX file not found"),
]


@pytest.mark.parametrize("name,damage,pattern", [c[1:] for c in BAD_IDX], ids=[c[0] for c in BAD_IDX])
def test_damaged_idx_is_one_line_naming_the_file(tmp_path, name, damage, pattern):
    folder = _fashion_dir(tmp_path)
    damage(folder / name)
    with pytest.raises(DataError) as info:
        load_splits("fashion_mnist", str(folder))
    msg = str(info.value)
    assert str(folder / name) in msg and "\n" not in msg, msg
    assert re.search(pattern, msg), msg


def test_idx_counts_of_a_split_must_agree(tmp_path):
    folder = _fashion_dir(tmp_path)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", 2049, np.arange(4))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz holds 5 images but .*train-labels-idx1-ubyte.gz holds 4"):
        load_splits("fashion_mnist", str(folder))


# CIFAR-10: per batch, image i's red (row 1, column 2) = 10 + i, green (3, 4) = 100 + i, blue (31, 0) = 200 + i.
_PIXELS = {0: (1, 2, 10), 1: (3, 4, 100), 2: (31, 0, 200)}


def _cifar_rows(n):
    data = np.zeros((n, 3072), np.uint8)
    for i in range(n):
        for channel, (row, col, value) in _PIXELS.items():
            data[i, channel * 1024 + row * 32 + col] = value + i    # channel-major, as in the real files
    return data


def _write_batch(path, n, first_label=0, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"testing", b"labels": [(first_label + i) % 10 for i in range(n)],
                     b"data": _cifar_rows(n), b"filenames": [b"x.png"] * n}, f, protocol=protocol)
    return path


def _cifar_dir(root, per_batch=2, n_test=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        _write_batch(folder / f"data_batch_{b}", per_batch, first_label=b)
    _write_batch(folder / "test_batch", n_test, first_label=7)
    return folder


def test_cifar10_from_env_dir(tmp_path, monkeypatch):
    _cifar_dir(tmp_path)
    monkeypatch.setenv("FFRUN_DATA_DIR", str(tmp_path))
    s = load_splits("cifar10", val_size=2, num_classes=10)
    assert s.x_train.shape == (8, 3072) and s.x_val.shape == (2, 3072) and s.x_test.shape == (3, 3072)
    assert s.x_train.dtype == np.float32 and s.x_train.min() == 0.0 and s.x_train.max() <= 1.0
    assert s.image_shape == (32, 32) and s.channels == 3 and s.num_classes == 10
    assert s.image_shape[0] * s.image_shape[1] * s.channels == s.input_dim
    assert list(s.y_train) == [1, 2, 2, 3, 3, 4, 4, 5] and list(s.y_val) == [5, 6] and list(s.y_test) == [7, 8, 9]
    images = s.x_test.reshape(-1, 32, 32, 3)           # (H, W, C) flatten order
    for i in range(3):
        for channel, (row, col, value) in _PIXELS.items():
            assert images[i, row, col, channel] == pytest.approx((value + i) / 255)
        assert np.count_nonzero(images[i]) == 3
    assert images[0, 1, 2, 1] == 0.0 and images[0, 2, 1, 0] == 0.0   # not in another channel, not transposed


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batch_every_pickle_protocol(tmp_path, protocol):
    x, y = datasets.read_cifar_batch(_write_batch(tmp_path / "b", 2, protocol=protocol))
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8 and list(y) == [0, 1] and x[1, 3, 4, 1] == 101


def test_cifar10_in_keras_3_cache_layout_and_by_path(tmp_path):
    folder = _cifar_dir(tmp_path / "cifar-10-batches-py-target")
    for path in (folder, tmp_path / "cifar-10-batches-py-target", tmp_path):
        assert load_splits("cifar10", str(path)).x_train.shape == (10, 3072)


class _Payload:
    """Unpickling this runs os.system: it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    folder = _cifar_dir(tmp_path)
    marker = tmp_path / "payload-ran"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
    with pytest.raises(DataError) as info:
        load_splits("cifar10", str(folder))
    msg = str(info.value)
    assert re.search(r"data_batch_3: refusing to unpickle (posix|nt|os)\.system", msg) and "\n" not in msg, msg
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtins(tmp_path):
    import io
    evil = pickle.dumps({b"data": eval, b"labels": []})       # a global: builtins.eval
    with pytest.raises(DataError, match=r"src: refusing to unpickle builtins\.eval"):
        datasets.RestrictedUnpickler(io.BytesIO(evil), "src").load()


MALFORMED_CIFAR = [
    ("not-a-dict", [1, 2], r"holds a pickled list"),
    ("no-labels", {b"data": np.zeros((2, 3072), np.uint8)}, r"lacks the key\(s\) \['labels'\]"),
    ("data-shape", {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"uint8 array of shape \(2, 1024\)"),
    ("data-float", {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"float32 array"),
    ("labels-count", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"shape \(1,\) for 2 images"),
]


@pytest.mark.parametrize("content,pattern", [c[1:] for c in MALFORMED_CIFAR], ids=[c[0] for c in MALFORMED_CIFAR])
def test_malformed_cifar_batch_is_one_line(tmp_path, content, pattern):
    folder = _cifar_dir(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(content))
    with pytest.raises(DataError) as info:
        load_splits("cifar10", str(folder))
    msg = str(info.value)
    assert str(folder / "test_batch") in msg and "\n" not in msg, msg
    assert re.search(pattern, msg), msg


def test_cifar10_labels_checked_by_validate_arrays(tmp_path):
    folder = _cifar_dir(tmp_path)      # training labels 1..6: 5 and 6 are out of [0, 5)
    with pytest.raises(DataError, match=r"cifar-10-batches-py: y_train holds the label 5 \(3 of 10 .*\[0, 5\)"):
        load_splits("cifar10", str(folder), num_classes=5)


def test_partial_copy_names_the_missing_file(tmp_path, monkeypatch):
    folder = _cifar_dir(tmp_path)
    (folder / "data_batch_4").unlink()
    monkeypatch.setenv("FFRUN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(datasets, "_download_keras", lambda *a: pytest.fail("must not download"))
    with pytest.raises(DataError, match=r"CIFAR-10 batch not found: .*data_batch_4"):
        load_splits("cifar10")


def test_data_path_must_be_a_folder_with_the_files(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"x")
    with pytest.raises(DataError, match=r"is a file; .*set data.path to the folder"):
        load_splits("cifar10", str(tmp_path / "cifar-10-python.tar.gz"))
    with pytest.raises(DataError, match=r"holds none of train-images-idx3-ubyte.gz"):
        load_splits("fashion_mnist", str(tmp_path))


def test_keras_fallback_column_labels_and_failed_download(tmp_path, monkeypatch):
    """Without local files: Keras' arrays (CIFAR labels (N, 1)) load; a failed download is one line
    saying where the files go. keras.datasets is stubbed: tests never download."""
    import keras
    empty = tmp_path / "only-mnist"
    empty.mkdir()
    monkeypatch.setenv("FFRUN_DATA_DIR", str(empty))
    rng = np.random.default_rng(0)
    fake = ((rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), np.arange(6, dtype=np.uint8).reshape(6, 1)),
            (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), np.arange(2, dtype=np.uint8).reshape(2, 1)))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: fake)
    s = load_splits("cifar10", val_size=1, num_classes=10)
    assert s.x_train.shape == (5, 3072) and s.y_train.shape == (5,) and list(s.y_test) == [0, 1] and s.channels == 3
    assert np.allclose(s.x_test.reshape(-1, 32, 32, 3), fake[1][0] / 255)

    def offline():
        raise OSError("no network")
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DataError) as info:
        load_splits("fashion_mnist")
    msg = str(info.value)
    assert "\n" not in msg and re.search(r"no local Fashion-MNIST found and the download failed \(OSError\); "
                                         r"copy Keras' fashion-mnist/ folder .* into \$FFRUN_DATA_DIR", msg), msg


def test_new_datasets_compose():
    from ffrun.app.overrides import override_problem
    assert override_problem(["data=cifar10"]) is None
    assert override_problem(["data=fashion_mnist", "data.val_size=100"]) is None


# --- data.resize ------------------------------------------------------------------------------
def test_resize_interpolates_between_pixel_centres(tmp_path):
    """A 2x2 image [[0, 255], [0, 255]] widened to 2x4: the new pixels' centres sit at 0.25, 0.75,
    1.25 and 1.75 old pixels, i.e. -0.25, 0.25, 0.75, 1.25 between the old centres 0 and 1, clamped at
    the edges (PyTorch's bilinear interpolate, align_corners=False): 0, 0.25, 0.75, 1."""
    image = np.array([[0, 255], [0, 255]], np.uint8)
    np.savez(tmp_path / "d.npz", x_train=np.stack([image] * 4), y_train=np.arange(4, dtype=np.uint8),
             x_test=np.stack([image] * 2), y_test=np.arange(2, dtype=np.uint8))
    s = load_splits("npz", str(tmp_path / "d.npz"), val_size=1, resize=[2, 4])
    assert s.image_shape == (2, 4) and s.input_dim == 8
    for x in (s.x_train, s.x_val, s.x_test):
        np.testing.assert_allclose(x, np.tile([0, 0.25, 0.75, 1.0], (len(x), 2)), atol=1e-6)


def test_resize_of_mnist_keeps_the_pixel_range(mnist_dir):
    s = load_splits("mnist", str(mnist_dir / "mnist.npz"), val_size=100, train_size=600, test_size=50,
                    resize=[32, 32])
    assert s.image_shape == (32, 32) and s.x_train.shape == (500, 1024) and s.x_test.shape == (50, 1024)
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0
    # enlarging keeps the mean ink of an image to within the edge pixels' share (MNIST's are blank)
    plain = load_splits("mnist", str(mnist_dir / "mnist.npz"), val_size=100, train_size=600, test_size=50)
    np.testing.assert_allclose(s.x_train.mean(1), plain.x_train.mean(1), rtol=0.02, atol=1e-3)


def test_resize_refuses_rows_that_are_not_images(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "flat.npz", x_train=rng.random((6, 16)), y_train=np.arange(6) % 2,
             x_test=rng.random((2, 16)), y_test=np.arange(2))
    with pytest.raises(DataError, match=r"^data.resize needs images \(N, H, W\[, C\]\), but .*flat.npz holds rows of 16 values$"):
        load_splits("npz", str(tmp_path / "flat.npz"), resize=[4, 4])


def test_a_conv_network_is_built_on_the_resized_images():
    from ffrun.experiment.build import build_run
    from tests.conftest import compose_config
    cfg = compose_config(["experiment=conv_mnist", "data=digits", "data.val_size=100", "data.resize=[16,16]"])
    run = build_run(cfg, keep_splits=True)
    assert run.splits.image_shape == (16, 16) and run.splits.input_dim == 256
    out = run.network.transform(run.splits.x_train[:2], run.splits.y_train[:2], run.splits.y_train[:2])
    # conv_mnist pools by 2 after each conv: 16 -> 8 -> 4 (the 8x8 digits give 8 -> 4 -> 2)
    assert tuple(out["conv2"].shape[1:3]) == (8, 8) and tuple(out["pool2"].shape[1:3]) == (4, 4)
