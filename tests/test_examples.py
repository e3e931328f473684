"""The worked examples of docs/extending.md (examples/*.py), each run end to end as a plugin through
the installed ``ffrun`` on tiny data. They run in subprocesses: a plugin's registration stays out of
the registries the other tests read."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FFRUN = shutil.which("ffrun") or str(Path(sys.executable).parent / "ffrun")
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(EXAMPLES)}


def _ffrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FFRUN, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def _completed(run: Path, proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed"
    return results


def test_every_example_is_at_most_about_forty_lines():
    lengths = {p.name: len(p.read_text().splitlines()) for p in EXAMPLES.glob("*.py")}
    assert len(lengths) >= 2 and max(lengths.values()) <= 45, lengths


@pytest.mark.slow
def test_protocol_example_draws_pixel_shuffles_of_each_image():
    """Its negatives hold each positive's pixel values, moved: the same ink, other strokes."""
    script = ("import numpy as np\n"
              "from protocol_shuffled_pixels import ShuffledPixels, ShuffledPixelsConfig\n"
              "from ffrun.api import ImageSplits\n"
              "x = np.random.default_rng(0).random((6, 16), dtype=np.float32); y = np.arange(6) % 3\n"
              "splits = ImageSplits('t', x, y, x[:0], y[:0], x, y, 3, (4, 4))\n"
              "p = ShuffledPixels(ShuffledPixelsConfig(fraction=0.5), splits, supervised=False, seed=1)\n"
              "pos, draw = p.source(x, y, 1)\n"
              "a, b = draw(0).X.numpy(), draw(0).X.numpy()\n"
              "print(np.array_equal(np.sort(a, 1), np.sort(x, 1)), np.array_equal(a, b),\n"
              "      int((a != x).sum(1).max()), int(((draw(1).X.numpy() != a).sum())) > 0)\n")
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same_values, repeatable, most_moved, new_each_epoch = proc.stdout.split()
    assert same_values == "True" and repeatable == "True" and new_each_epoch == "True"
    assert 0 < int(most_moved) <= 8          # fraction=0.5 of 16 pixels


@pytest.mark.slow
def test_protocol_example_trains_through_ffrun(tmp_path):
    run = tmp_path / "run"
    proc = _ffrun(["plugins=[protocol_shuffled_pixels]", "protocol=shuffled_pixels", "protocol.fraction=0.5",
                   "debug=tiny", f"hydra.run.dir={run}"], tmp_path)
    results = _completed(run, proc)
    assert "name: shuffled_pixels" in (run / ".hydra" / "config.yaml").read_text()
    assert results["data"]["train_pos"] == 1438 - 300           # every training image of digits is a positive
    evaluated = subprocess.run([str(Path(FFRUN).with_name("ffrun-eval")), str(run)], cwd=tmp_path, env=ENV,
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]     # ffrun-eval loads the run's plugins too
    bad = _ffrun(["plugins=[protocol_shuffled_pixels]", "protocol=shuffled_pixels", "protocol.fraction=0",
                  "debug=tiny", f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "ffrun: protocol.fraction must be in (0, 1], got 0.0"]
    assert not (tmp_path / "bad").exists()


def _png_folder(root: Path, per_class: dict[str, int]) -> Path:
    """train/<digitN>/*.png and test/<digitN>/*.png from scikit-learn's 8x8 digits, as 8-bit PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    start = 0
    for split, count in per_class.items():
        for c in range(10):
            folder = root / split / f"digit{c}"
            folder.mkdir(parents=True)
            for i, image in enumerate(digits.images[digits.target == c][start:start + count]):
                Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
        start += count
    return root


@pytest.mark.slow
def test_dataset_example_trains_on_a_folder_of_pngs(tmp_path):
    folder = _png_folder(tmp_path / "pngs", {"train": 20, "test": 5})
    run = tmp_path / "run"
    proc = _ffrun(["plugins=[dataset_image_folder]", "debug=tiny", "data=image_folder", f"data.path={folder}",
                   f"hydra.run.dir={run}"], tmp_path)
    results = _completed(run, proc)
    info = results["data"]
    assert info["name"] == "image_folder"
    # five_digits: the digits 0-4 of the 200 training images less the 10 held out (data.val_size from its defaults)
    assert 90 <= info["train_pos"] <= 100 and info["test_pos"] == 25


@pytest.mark.slow
def test_dataset_example_refuses_a_folder_without_images_before_any_run_folder(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    proc = _ffrun(["plugins=[dataset_image_folder]", "debug=tiny", "data=image_folder",
                   f"data.path={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ffrun: data.path={tmp_path / 'empty'}: expected train/<class>/*.png and test/<class>/*.png images"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_loss_example_trains_on_aligned_pairs_and_logs_its_metric(tmp_path):
    run = tmp_path / "run"
    proc = _ffrun(["plugins=[loss_contrastive]", "model.loss=contrastive", "pairing=same_step", "mode=sup",
                   "protocol=wrong_label", "debug=tiny", f"hydra.run.dir={run}"], tmp_path)
    _completed(run, proc)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "dense1/loss_pair" in header and "dense1/loss_pos" not in header      # its train_metrics
    bad = _ffrun(["plugins=[loss_contrastive]", "model.loss=contrastive", "debug=tiny",
                  f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "pairing=same_step" in bad.stderr
    assert not (tmp_path / "bad").exists()


CONV_POOL = ("model.layers={c1: {type: conv_pool, filters: 8, inputs: [input]}, flat: {type: flatten, inputs: [c1]}, "
             "softmax: {type: softmax, inputs: [flat], optimizer: {class_name: Adam}}}")


@pytest.mark.slow
def test_conv_block_example_trains_and_its_keys_are_checked(tmp_path):
    run = tmp_path / "run"
    proc = _ffrun(["plugins=[node_conv_pool]", "debug=tiny", CONV_POOL, f"hydra.run.dir={run}"], tmp_path)
    _completed(run, proc)
    assert "c1/loss_pos" in (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for wrong, line in ((CONV_POOL.replace("filters: 8", "filters: 0"), "model.layers.c1.filters must be an integer >= 1"),
                        (CONV_POOL.replace("filters: 8", "filters: 8, kernel: 3"), "unknown key(s) ['kernel']")):
        bad = _ffrun(["plugins=[node_conv_pool]", "debug=tiny", wrong, f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and line in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()
