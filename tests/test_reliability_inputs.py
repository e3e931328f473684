"""Bad input refused before Hydra makes a run folder (the CLI's pre-check: the schema, the graph,
the shapes, the data's paths and headers, memory), and data refused when it is loaded.

The CLI path (exit 2, ONE stderr line, no traceback, no run folder) runs on the installed script for
one case of each kind; the many values of one kind are checked in-process through the same
function the script calls first (``override_problem``), which costs a composition, not a process.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ffrun.errors import DataError
from tests.test_reliability import ffrun, one_line, write_npz

DECLARED = ("model.layers={d1: {type: dense, units: 16, inputs: [input]}, n1: {type: prenorm, inputs: [d1]}, "
            "softmax: {type: softmax, inputs: [n1], optimizer: {class_name: Adam, learning_rate: 0.001}}}")
CONV = ["experiment=conv_mnist", "data=digits", "data.val_size=100"]   # a conv graph on the 8x8 digits


def write_npz_claiming(path: Path, shape: tuple[int, ...]) -> Path:
    """An npz whose x_train header claims ``shape`` (uint8) but holds no pixels: what a corrupt or
    hostile file looks like to a loader that trusts the header."""
    write_npz(path)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist() if name != "x_train.npy"}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        with z.open("x_train.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return path


def problem(args: list[str]) -> str | None:
    from ffrun.app.overrides import override_problem
    return override_problem(args)


# --- in-process: every rule the pre-check runs, one line naming the key and what is allowed -------
@pytest.mark.parametrize("args, message", [
    # node values
    ([*CONV, "model.layers.conv1.filters=0"], "model.layers.conv1.filters must be an integer >= 1, got 0"),
    ([*CONV, "model.layers.conv1.kernel_size=0"], "model.layers.conv1.kernel_size must be an integer >= 1"),
    ([*CONV, "+model.layers.conv1.strides=0"], "model.layers.conv1.strides must be an integer >= 1"),
    ([*CONV, "+model.layers.conv1.padding=full"], "model.layers.conv1.padding must be one of same, valid, got 'full'"),
    ([*CONV, "model.layers.pool1.kind=min"], "model.layers.pool1.kind must be one of max, avg, got 'min'"),
    ([*CONV, "model.layers.pool1.size=0"], "model.layers.pool1.size must be an integer >= 1, got 0"),
    ([*CONV, "model.layers.norm1.kind=l1"], "model.layers.norm1.kind must be one of l2, rms, layernorm, class_groupnorm, got 'l1'"),
    ([*CONV, "model.layers.norm1.scope=row"], "model.layers.norm1.scope must be one of channels, map"),
    ([*CONV, "model.layers.overlay.mode=stamp"], "model.layers.overlay.mode must be one of add, replace, channels"),
    ([*CONV, "model.layers.conv1.th_pos=-1.0"], "model.layers.conv1.th_pos must be >= 0 (goodness"),
    # shapes, from the data's image shape (digits: 8x8x1)
    ([*CONV, "model.layers.pool2.size=5"], "model.layers.pool2.size=5 is larger than the 4x4 map it is fed"),
    ([*CONV, "+model.layers.conv1.strides=9"], "model.layers.conv1.strides=9 is larger than the 8x8 map it is fed"),
    ([*CONV, "+model.layers.conv1.padding=valid", "model.layers.conv1.kernel_size=9"],
     "model.layers.conv1.kernel_size=9 is larger than the 8x8 map it is fed (padding valid)"),
    ([*CONV, "+model.layers.conv2.pool=8"], "model.layers.conv2.pool=8 is larger than the 4x4 map its convolution gives"),
    # the model's keys
    (["model.layers={}"], "model.layers is empty: declare at least one FF layer and a readout"),
    (["~model"], "'~model' removes the config group 'model', which every run needs; choose one of its options "
                 "instead (model=ff)"),
    (["units=[32,32]"], "units has 2 values but the model has 4 FF layers"),
    (["model.th_pos=-0.5"], "model.th_pos must be >= 0 (goodness, a sum or mean of squares, is never negative), got -0.5"),
    (["model.th_neg=[0.1,0.1,-1,0.1]"], "model.th_neg must be >= 0"),
    # the run's keys
    (["seed=4294967296"], "seed must be in [0, 2**32 - 1 = 4294967295], got 4294967296"),
    (["epochs=0", "readout_epochs=0"], "epochs=0 and readout_epochs=0: the schedule [['all', 0], [['softmax'], 0]] "
                                       "trains for 0 epochs, so there is nothing to train"),
    (["schedule=[[all,1],[[dense9],1]]"], "schedule[1] names 'dense9', not a node of the network (its nodes: dense1,"),
    (["schedule=[[all]]"], "schedule[0] must be [layers, epochs], got ['all']"),
    (["data.val_size=1438"], "data.val_size=1438 must be in [0, 1438) for digits (scikit-learn digits: 1438 training images)"),
    (["data.train_size=100", "data.val_size=100"], "data.val_size=100 must be in [0, 100) for digits"),
    (["data.val_size=0"], "eval_on=validation needs data.val_size > 0 (or eval_on=test)"),
    (["data.resize=[0,32]"], "data.resize must be [height, width], two integers >= 1, got [0, 32]"),
    (["data.resize=[32]"], "data.resize must be [height, width], two integers >= 1, got [32]"),
    # the shapes through the network are those of the resized images (the digits are 8x8)
    ([*CONV, "data.resize=[2,2]"], "model.layers.pool2.size=2 is larger than the 1x1 map it is fed"),
    # graph and protocol rules the builder met only after the folder existed
    ([DECLARED.replace("d1: {type: dense, units: 16, inputs: [input]}, n1: {type: prenorm, inputs: [d1]}",
                       "n1: {type: prenorm, inputs: [input]}")],
     "the model declares no FF layer (a dense or conv2d node): FF has nothing to train"),
    ([DECLARED.replace("n1:", "input:").replace("[n1]", "[input]")],
     "model.layers.input: 'input' is the data; give the node another name"),
    (["~model.readouts.softmax", "schedule=[[all,1]]"], "the model declares no readout (a softmax, goodness or classes node)"),
    (["+model.readouts.g={type: goodness, inputs: [dense2..]}"], "readout g: a goodness readout needs the label overlaid (mode=sup)"),
    (["mode=sup", "protocol=wrong_label", "protocol.negatives=hard"],
     "protocol.negatives=hard draws wrong labels from the network's softmax readout: the model needs a softmax node"),
    (["mode=sup", "protocol=wrong_label", "protocol.negatives=hard_batch",
      "+model.readouts.sm={type: softmax, inputs: [norm2..], optimizer: {class_name: Adam}}"],
     "negatives=hard_batch draws each batch's wrong labels in the pos+neg step: it needs pairing=same_step"),
    ([*CONV, "protocol=split"], "protocol split routes the units of dense layers; a graph with conv layers cannot use it"),
    (["protocol=wrong_label"], "protocol wrong_label needs the label in the input: use mode=sup"),
    (["protocol.positive_classes=[0,12]"], "protocol.positive_classes must be classes of 0..9, got [0, 12]"),
    (["primary_readout=goodness"], "primary_readout 'goodness' is not a readout; readouts are ['softmax']"),
    (["mode=sup", "protocol=hybrid"], "protocol hybrid is the unsupervised recipe: use mode=unsup"),
    (["protocol=split", "splitting=none"], "splitting=none is supervised only"),
    (["mode=sup", "model.layers={d1: {type: dense, units: 8, loss: flipped, inputs: [input]}, "
      "d2: {type: dense, units: 8, inputs: [d1]}, goodness: {type: goodness, inputs: [d1, d2]}}"],
     "readout goodness: its inputs mix losses that point goodness opposite ways"),
    # memory: a floor of float32 weights and gradients against MemAvailable
    (["units=100000000"], "units=100000000: the network's 3e+16 weights (dense2: 1e+16) and the images need at least"),
    ([DECLARED.replace("units: 16", "units: 100000000000")], "model.layers.d1.units=100000000000: the network's"),
])
def test_refused_by_the_pre_check_in_one_line(args, message):
    found = problem(["debug=tiny", *args])
    assert found is not None and found.startswith(message), found
    assert "\n" not in found


def test_a_network_declared_on_the_command_line_composes_and_trains(train_tiny):
    assert problem(["debug=tiny", DECLARED]) is None
    results, run_dir = train_tiny(["epochs=1", "readout_epochs=1", "checkpoint.every=0", "tensorboard.enabled=false",
                                   DECLARED])
    assert results["status"] == "completed" and results["epochs"] == 2
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "d1/loss_pos" in header and "softmax/acc" in header and "dense1" not in header


def test_the_default_configs_pass_the_pre_check():
    """The rules must not refuse what runs: the default experiment and a conv preset on the digits."""
    assert problem(["debug=tiny"]) is None
    assert problem(CONV) is None
    assert problem([*CONV, "data.resize=[16,16]"]) is None


def test_data_paths_are_checked_before_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FFRUN_DATA_DIR", str(tmp_path / "no_such_dir"))
    assert problem([]) == (f"{tmp_path}/no_such_dir/mnist.npz cannot be read: the folder {tmp_path}/no_such_dir does "
                           f"not exist (FFRUN_DATA_DIR={tmp_path}/no_such_dir); set FFRUN_DATA_DIR to the folder "
                           f"holding mnist.npz, or data.path=...")
    assert "cifar-10-batches-py" in problem(["data=cifar10"]) and "does not exist" in problem(["data=cifar10"])
    monkeypatch.delenv("FFRUN_DATA_DIR")
    assert problem(["data=npz", f"data.path={tmp_path}"]) == (
        f"data.path={tmp_path} is a directory; this dataset is one npz file (e.g. data.path={tmp_path}/mnist.npz)")
    assert problem(["data=npz", f"data.path={tmp_path}/none.npz"]).startswith(f"data file not found: {tmp_path}/none.npz")
    # the npz's header gives the image shape: a pool larger than 3x3 images, and the data's size
    small = write_npz(tmp_path / "small.npz", x_train=np.zeros((60, 3, 3), np.uint8), x_test=np.zeros((20, 3, 3), np.uint8))
    assert problem(["experiment=conv_mnist", "data=npz", f"data.path={small}", "data.val_size=10"]).startswith(
        "model.layers.pool2.size=2 is larger than the 1x1 map it is fed")
    assert problem(["data=npz", f"data.path={small}", "data.val_size=60"]) == (
        f"data.val_size=60 must be in [0, 60) for npz ({small}: 60 training images)")
    colour = write_npz(tmp_path / "rgb.npz", x_train=np.zeros((60, 8, 8, 3), np.uint8), x_test=np.zeros((20, 8, 8, 3), np.uint8))
    assert problem(["protocol=hybrid", "data=npz", f"data.path={colour}", "data.val_size=10"]) == (
        f"protocol hybrid needs 2-D images (one channel); {colour} has 8x8x3 images")


def test_an_npz_header_claiming_more_than_memory_names_the_file_and_member(tmp_path):
    path = write_npz_claiming(tmp_path / "huge.npz", (10 ** 6, 1000, 1000))
    found = problem(["data=npz", f"data.path={path}", "data.val_size=10"])
    assert found.startswith(f"{path}: x_train's header claims shape (1000000, 1000, 1000) of uint8 (1e+12 values); "
                            f"loading the file needs at least 4.55 TiB"), found
    assert "of memory is available" in found


# --- data refused when it is loaded (the pixels are read only then) ---------------------------
def test_float64_pixels_beyond_float32_are_refused_after_the_cast_without_numpy_warnings(tmp_path):
    from ffrun.experiment.datasets import load_splits
    x = np.zeros((60, 8, 8))
    x[3, 2, 2] = 1e300                                   # finite in float64, Inf in float32
    path = write_npz(tmp_path / "big.npz", x_train=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # numpy's "overflow encountered in cast" would raise
        with pytest.raises(DataError) as info:
            load_splits("npz", str(path), val_size=10)
    assert str(info.value) == (f"{path}: x_train holds 1 pixel value(s) that are not finite as float32 "
                               f"(NaN, Inf, or beyond float32's range of about 3.4e38)")


def test_pixels_of_absurd_magnitude_are_named_as_the_data():
    from ffrun.experiment.datasets import check_pixels
    x = np.full((4, 64), 1e12 / 255, np.float32)
    with pytest.raises(DataError, match=r"^F: x_test holds pixels of magnitude 1e\+12 \(3.92e\+09 after dividing by "
                                        r"255\); that is not image data"):
        check_pixels("F", {"x_train": np.ones((4, 64), np.float32), "x_test": x}, 255.0)
    check_pixels("F", {"x_train": np.full((4, 64), 1e6, np.float32)}, 1.0)   # the limit itself passes


def test_integer_pixels_are_scaled_by_their_range(tmp_path):
    from ffrun.experiment.datasets import load_splits
    x16 = np.full((60, 8, 8), 65535, np.uint16)
    x16[:, 0, 0] = 32768
    s = load_splits("npz", str(write_npz(tmp_path / "u16.npz", x_train=x16, x_test=x16[:20])), val_size=10)
    assert s.x_train.max() == 1.0 and s.x_train[0, 0] == pytest.approx(32768 / 65535)
    # 8-bit values in a wider integer dtype are read as 0..255; larger ones are refused, not guessed
    x32 = np.full((60, 8, 8), 255, np.int32)
    assert load_splits("npz", str(write_npz(tmp_path / "i32.npz", x_train=x32, x_test=x32[:20])), val_size=10).x_train.max() == 1.0
    with pytest.raises(DataError, match=r"i12.npz: the images have int32 pixels in \[255, 4095\]; integer images must be uint8"):
        load_splits("npz", str(write_npz(tmp_path / "i12.npz", x_train=x32 * 0 + 4095, x_test=x32[:20])), val_size=10)


@pytest.mark.parametrize("labels, message", [
    (np.full(60, 3, np.uint8), "holds no image of the negative classes (the classes not in [0, 1, 2, 3, 4]); "
                               "it holds only the classes [3]"),
    (np.full(60, 7, np.uint8), "holds no image of the positive classes (protocol.positive_classes [0, 1, 2, 3, 4]); "
                               "it holds only the classes [7]"),
])
def test_five_digits_needs_positives_and_negatives(tmp_path, cfg_factory, labels, message):
    from ffrun.experiment.build import build_run
    path = write_npz(tmp_path / "one.npz", y_train=labels)
    with pytest.raises(DataError) as info:
        build_run(cfg_factory(["debug=tiny", "data=npz", f"data.path={path}", "data.val_size=10"]))
    assert str(info.value) == f"protocol five_digits: the training set (npz) {message}: FF needs positives and negatives"


def test_a_failed_download_names_the_dataset_the_url_and_the_cause(monkeypatch):
    import keras
    from ffrun.experiment.datasets import load_splits
    monkeypatch.delenv("FFRUN_DATA_DIR", raising=False)

    def offline():
        raise OSError("Temporary failure in name resolution")
    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError) as info:
        load_splits("mnist", val_size=10)
    assert str(info.value).endswith(
        "Downloading keras.datasets.mnist from https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz "
        "said: Temporary failure in name resolution")


# --- the installed script: exit 2, one line, no traceback, no run folder ----------------------
@pytest.mark.slow
@pytest.mark.parametrize("case, args, message", [
    ("node value", [*CONV, "model.layers.norm1.kind=l1"], "ffrun: model.layers.norm1.kind must be one of l2, rms"),
    ("shape", [*CONV, "model.layers.pool2.size=5"], "ffrun: model.layers.pool2.size=5 is larger than the 4x4 map"),
    ("schedule", ["schedule=[[all,1],[[dense9],1]]"], "ffrun: schedule[1] names 'dense9', not a node"),
    ("seed", ["seed=4294967296"], "ffrun: seed must be in [0, 2**32 - 1"),
    ("val_size", ["data.val_size=5000"], "ffrun: data.val_size=5000 must be in [0, 1438) for digits"),
    ("memory", ["units=100000000"], "ffrun: units=100000000: the network's 3e+16 weights"),
    ("empty layers", ["model.layers={}"], "ffrun: model.layers is empty"),
    ("removed group", ["~model"], "ffrun: '~model' removes the config group 'model'"),
    ("nothing to train", ["epochs=0", "readout_epochs=0"], "ffrun: epochs=0 and readout_epochs=0"),
    ("negative threshold", ["model.th_pos=-0.5"], "ffrun: model.th_pos must be >= 0"),
    ("no FF layer", [DECLARED.replace("d1: {type: dense, units: 16, inputs: [input]}, n1: {type: prenorm, inputs: [d1]}",
                                      "n1: {type: prenorm, inputs: [input]}")], "ffrun: the model declares no FF layer"),
    ("data directory", ["data=npz", "data.path=."], "ffrun: data.path="),
    ("missing data folder", ["data=mnist"], "ffrun: "),
    ("npz header", ["data=npz", "data.path=huge.npz", "data.val_size=10"], "ffrun: "),
])
def test_the_script_refuses_before_any_folder_is_made(tmp_path, monkeypatch, case, args, message):
    if case == "missing data folder":
        monkeypatch.setenv("FFRUN_DATA_DIR", str(tmp_path / "no_such_dir"))
    if case == "npz header":
        write_npz_claiming(tmp_path / "huge.npz", (10 ** 6, 1000, 1000))
    run_dir = tmp_path / "run"
    proc = ffrun(["debug=tiny", *args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith(message), line
    expected = {"data directory": "is a directory", "missing data folder": "no_such_dir does not exist",
                "npz header": "huge.npz: x_train's header claims shape (1000000, 1000, 1000)"}.get(case, "")
    assert expected in line
    assert not run_dir.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_the_script_refuses_float32_overflow_at_load(tmp_path):
    """Bad 6: float64 pixels of 1e300 became Inf in the cast and trained at chance with exit 0. The
    pixels are read only when the run loads them: the run's folder says failed and why."""
    import json
    x = np.zeros((60, 8, 8))
    x[0, 0, 0] = 1e300
    path = write_npz(tmp_path / "big.npz", x_train=x)
    run_dir = tmp_path / "run"
    proc = ffrun(["debug=tiny", "data=npz", f"data.path={path}", "data.val_size=10", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    reason = f"{path}: x_train holds 1 pixel value(s) that are not finite as float32"
    assert line.startswith(f"ffrun: {reason}") and "overflow" not in proc.stderr
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "failed" and saved["reason"].startswith(reason)
