"""The benchmark runs end to end on a tiny configuration and writes every section.

Speed is not asserted: the numbers depend on the machine and on what else runs on it."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ffrun.core.flops import ff_epoch_flop

# benchmarks/ holds scripts, not a package: load bench.py by its path
_spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench"] = bench      # dataclasses look their module up while the class is made
_spec.loader.exec_module(bench)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


@pytest.mark.slow      # the whole benchmark, in-process: it trains every mode and the paper recipe
def test_bench_tiny_writes_all_sections(tmp_path):
    out = tmp_path / "bench.json"
    rc = bench.main(["--data", "digits", "--units", "32", "--batch-size", "64", "--reps", "1",
                     "--scaling", "16,32", "--modes", "unsup,sup", "--roofline-time", "0.02",
                     "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())

    assert res["machine"]["cores"] >= 1 and res["machine"]["tensorflow"]
    roof = res["roofline"]
    assert [(r["in"], r["out"]) for r in roof["shapes"]] == [(64, 32), (32, 32)]
    for row in roof["shapes"]:
        for p in ("fp32", "bf16"):
            assert _positive(row[p]["forward"]) and _positive(row[p]["weight_grad"])
    assert _positive(roof["model_gflops"]["fp32"]) and _positive(roof["model_gflops"]["bf16"])

    for mode in ("unsup", "sup"):
        ff = res["ff"][mode]
        assert ff["layers"] == [[64, 32], [32, 32], [32, 32], [32, 32]]
        # protocol split: every training image positive, the same images negative
        assert ff["protocol"] == "split"
        assert ff["samples_per_epoch"] == 2 * ff["train_images"]
        for key in ("median_epoch_s", "samples_per_s", "gflop_per_epoch", "gflops", "ratio_fp32_roofline"):
            assert _positive(ff[key]), (mode, key, ff[key])
        assert ff["retraces_while_timed"] == 0

    bp = res["backprop"]
    for key in ("median_epoch_s", "samples_per_s", "gflops"):
        assert _positive(bp[key]), key
    assert set(bp["ff_over_bp"]) == {"unsup", "sup"} and all(map(_positive, bp["ff_over_bp"].values()))

    ev = res["evaluation"]
    assert ev["labels"] == 10 and ev["images"] > 0
    for key in ("all_labels_s", "forward_x_labels_s", "all_labels_over_forward", "all_labels_gflops", "forward_gflops"):
        assert _positive(ev[key]), key

    paper = res["paper"]          # the paper recipe preset, timed on the same data
    assert paper["experiment"] == "paper_small" and paper["batch_size"] == 100
    assert paper["layers"] == [[64, 1000], [1000, 1000], [1000, 1000]]
    # positives and their negatives in one pass, then the neutral-label readout pass
    assert paper["samples_per_epoch"] == 3 * paper["train_images"]
    # the neutral-label readout pass runs the FF layers forward without training them
    assert paper["executed_gflop_per_epoch"] > paper["gflop_per_epoch"] > 0

    assert [r["units"] for r in res["scaling"]] == [16, 32]
    for row in res["scaling"]:
        assert _positive(row["median_epoch_s"]) and _positive(row["gflop_per_epoch"]) and _positive(row["gflops"])
    # FLOPs grow with width (time need not, at this size)
    assert res["scaling"][0]["gflop_per_epoch"] < res["scaling"][1]["gflop_per_epoch"]

    assert _positive(res["memory"]["peak_rss_mb"])


def test_executed_flops_halve_the_weight_gradient_under_half_split(cfg_factory):
    from ffrun.experiment.build import build_run
    from ffrun.core.trainer import TrainMgr

    counts = {}
    for split in ("true", "false"):
        cfg = cfg_factory(["debug=tiny", "protocol=split", "mode=unsup", "units=32",
                           f"model.split_gradient={split}"])
        run = build_run(cfg, keep_splits=True)
        TrainMgr(run.network.layers, run.network.seq, run.plan.train).build()
        counts[split] = ff_epoch_flop(run.network.layers, run.plan.train)
    n = len(run.splits.x_train)
    ff_macs = sum(k * m for k, m in bench.ff_shapes(run))
    counted, executed = counts["true"]
    assert ff_macs > 0 and counted > 0
    assert counts["false"] == (counted, counted)          # without it: every weight gradient is full
    # positives and negatives (n rows each) skip half of a 2 * in * out weight-gradient product
    assert counted - executed == 2 * n * ff_macs


def test_bench_conv_section_alone(tmp_path):
    """--conv with no Result-2 modes, paper preset or scaling: only the conv section runs (a tiny CwComp
    net on digits: 8 x 8 images, conv3 and conv4 shrunk by overrides)."""
    out = tmp_path / "bench.json"
    rc = bench.main(["--data", "digits", "--conv", "cwcomp_mnist", "--modes", "", "--paper", "", "--no-scaling",
                     "--reps", "1", "--roofline-time", "0.01", "--out", str(out),
                     "model.layers.conv3.filters=20", "model.layers.conv4.filters=40"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert not {"roofline", "ff", "backprop", "evaluation", "paper", "scaling"} & set(res)

    conv = res["conv"]
    assert conv["experiment"] == "cwcomp_mnist" and conv["batch_size"] == 128 and conv["image_shape"] == [8, 8, 1]
    assert "no input gradient" in conv["note"]
    roof = conv["roofline"]
    # each layer at its own shapes: pooled after conv2, grouped conv2 and conv4 (one group per class)
    assert [(r["layer"], r["input"], r["output"], r["groups"]) for r in roof["layers"]] == [
        ("conv1", [8, 8, 1], [8, 8, 20], 1), ("conv2", [8, 8, 20], [8, 8, 80], 10),
        ("conv3", [4, 4, 80], [4, 4, 20], 1), ("conv4", [4, 4, 20], [4, 4, 40], 10)]
    for r in roof["layers"]:
        assert r["batch"] == 128 and _positive(r["forward"]) and _positive(r["kernel_grad"])
    # 2 * N * Hout * Wout * k * k * (Cin / groups) * Cout
    assert roof["layers"][1]["gflop_per_batch"] == pytest.approx(2 * 128 * 8 * 8 * 9 * 2 * 80 / 1e9, rel=1e-3)
    assert _positive(roof["model_gflops"])

    ff, bp = conv["ff"], conv["backprop"]
    # protocol competitive: one TRAIN_POS pass, every training image once, every conv layer training
    assert ff["protocol"] == "competitive" and ff["samples_per_epoch"] == conv["train_images"] == bp["images"]
    assert ff["trained_conv"] == ["conv1", "conv2", "conv3", "conv4"] and ff["retraces_while_timed"] == 0
    per_image = sum(r["gflop_per_batch"] / 128 for r in roof["layers"])
    # FF: forward + kernel gradient of each conv; backprop also the input gradients, but not conv1's
    assert ff["executed_gflop_per_epoch"] == pytest.approx(2 * per_image * conv["train_images"], rel=1e-3)
    assert bp["gflop_per_epoch"] == pytest.approx(
        (3 * per_image - roof["layers"][0]["gflop_per_batch"] / 128) * conv["train_images"], rel=1e-3)
    for key in ("median_epoch_s", "samples_per_s", "executed_gflop_per_epoch", "executed_gflops", "ratio_roofline"):
        assert _positive(ff[key]), key
    for key in ("median_epoch_s", "samples_per_s", "gflop_per_epoch", "gflops", "ratio_roofline"):
        assert _positive(bp[key]), key
    assert conv["ff_over_bp"] == pytest.approx(ff["median_epoch_s"] / bp["median_epoch_s"], rel=1e-3)
    assert conv["meets_target"] == (conv["ff_over_bp"] <= conv["target_ff_over_bp"] == 1.2)
    assert _positive(res["memory"]["after"]["conv"])
