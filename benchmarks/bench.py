"""How fast is FF training on this machine, and how close to the hardware?

One process measures, on the current machine:

1. roofline: TF matmul GFLOP/s at the model's own layer shapes (forward and weight-gradient
   products), fp32 and bf16, in a graph loop after warm-up;
2. FF training epochs (Result 2 of rmwkwok's implementation: protocol split, unsup and sup) built from the project's own
   Hydra configs: seconds, samples/s, achieved GFLOP/s from counted FLOPs, share of the roofline;
3. the same MLP trained by backprop with Keras ``model.fit`` on the same images;
4. evaluation: the all-labels (10x duplicated) pass of the sup net vs ten plain forward passes;
5. peak resident memory;
6. scaling: seconds per epoch against width, so one can see time follow FLOPs;
7. optional (``--conv PRESET``, e.g. cwcomp_mnist): a conv FF epoch (the preset's first stage, every
   conv layer training) as a share of the conv roofline (tf.nn.conv2d forward and kernel gradient at
   each layer's shapes, groups split as GroupedConv2D splits them), and against a Keras ``model.fit``
   epoch of the same CNN trained by backprop (the project's target: FF <= 1.2x backprop).

Run:  python benchmarks/bench.py --out bench.json          (full benchmark: ~20 min on 2 idle cores)
      python benchmarks/bench.py --data digits --units 32 --scaling 16,32 --reps 1   (seconds)
      python benchmarks/bench.py --conv cwcomp_mnist --modes '' --paper '' --no-scaling --out bench_conv.json
                                                           (the conv section alone)
Extra ``key=value`` arguments are Hydra overrides passed to every FF run, the conv preset's included
(e.g. pairing=same_step; model.layers.conv3.filters=20 with --modes '' for a smaller conv net).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ffrun import _import_tensorflow_quietly

_import_tensorflow_quietly()  # before TF loads: keep its start-up banner off the console
import keras
import numpy as np
import tensorflow as tf
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ffrun.run import outputs
from ffrun.experiment.build import Run, build_run
from ffrun.core.layers import FFConv2D, Task, relu_full_grad
from ffrun.core.flops import dense_shape, ff_epoch_flop, forward_flop
from ffrun.core.trainer import FFData, TrainMgr

GIGA = 1e9


# --------------------------------------------------------------------------------------------
# machine

def machine_info() -> dict[str, Any]:
    """What the numbers depend on: cores, CPU, TF, and how busy the machine was when we started."""
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        cpu = platform.processor() or "unknown"
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        # where TF runs: a GPU when one is visible, else the CPU
        "device": (tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("CPU"))[0].name,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_1m_at_start": sig(os.getloadavg()[0]),
    }


def cpu_kind(m: dict[str, Any]) -> str:
    """The CPU features the roofline depends on, as the docs' per-machine tables name them."""
    if m.get("amx_bf16"):
        return "AVX-512 + AVX-512-BF16 + AMX"
    if m.get("avx512_bf16"):
        return "AVX-512 + AVX-512-BF16"
    if m.get("avx512f"):
        return "AVX-512"
    return "AVX2" if m.get("avx2") else "no AVX2"


def bf16_note(m: dict[str, Any]) -> str | None:
    """Say when bf16 cannot pay off: without native bf16 (AVX-512-BF16 or AMX) oneDNN converts to fp32,
    and bf16 matmuls measured no faster than fp32 on the AVX2-only machines."""
    if m.get("device", "").find("GPU") >= 0 or m.get("avx512_bf16") or m.get("amx_bf16"):
        return None
    return "this CPU has no native bf16 (AVX-512-BF16/AMX): model.precision=bf16 will not be faster than fp32"


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cores_usable']}/{m['cores']} cores, {m['cpu']} ({cpu_kind(m)}), device {m.get('device', '?')}, "
            f"TF {m['tensorflow']}, Keras {m['keras']}, {m['date']}, load {m['load_avg_1m_at_start']}")


def sig(x: float, digits: int = 4) -> float:
    """Round to significant digits: the same rule serves 0.004 s and 4,000 GFLOP."""
    return float(f"{x:.{digits}g}")


# --------------------------------------------------------------------------------------------
# roofline: what a bare TF matmul achieves at the shapes the model multiplies

@tf.function
def _matmul_loop(a: tf.Variable, b: tf.Variable, iters: tf.Tensor, transpose_a: bool) -> tf.Tensor:
    # The operands are variables read inside the loop and every product feeds the result, so
    # Grappler can neither hoist the matmul out of the loop nor prune it.
    acc = tf.constant(0.0)
    for _ in tf.range(iters):
        c = tf.matmul(a, b, transpose_a=transpose_a)
        acc += tf.cast(tf.reduce_sum(c), tf.float32)
    return acc


def matmul_gflops(m: int, k: int, n: int, dtype: tf.DType, weight_grad: bool,
                  target_s: float, reps: int) -> float:
    """GFLOP/s of an (m x k) @ (k x n) product repeated in a graph loop; median of ``reps``.

    ``weight_grad``: the shape of a dense layer's kernel gradient, x^T @ dh = (m x k)^T @ (m x n),
    which oneDNN runs at a different speed than the forward product."""
    rng = np.random.default_rng(0)
    a = tf.Variable(tf.cast(rng.standard_normal((m, k), np.float32) * 0.01, dtype))
    b = tf.Variable(tf.cast(rng.standard_normal((m, n) if weight_grad else (k, n), np.float32) * 0.01, dtype))
    return loop_gflops(lambda iters: _matmul_loop(a, b, iters, weight_grad), 2.0 * m * k * n, target_s, reps)


def loop_gflops(loop: Callable[[tf.Tensor], tf.Tensor], flop: float, target_s: float, reps: int) -> float:
    """GFLOP/s of ``loop(iters)``, a graph loop doing ``flop`` FLOPs per iteration: traced and warmed
    up, then sized to take about ``target_s`` seconds; median of ``reps`` timed calls."""
    loop(tf.constant(2)).numpy()          # trace + warm oneDNN's kernels
    t0 = time.perf_counter()
    loop(tf.constant(3)).numpy()
    per_iter = max((time.perf_counter() - t0) / 3, 1e-7)
    iters = tf.constant(int(min(max(target_s / per_iter, 3), 1e6)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        loop(iters).numpy()
        times.append(time.perf_counter() - t0)
    return flop * int(iters) / statistics.median(times) / GIGA


def roofline(shapes: list[tuple[int, int]], batch: int, target_s: float, reps: int) -> dict[str, Any]:
    """Per distinct (in, out) layer shape: forward and weight-gradient GFLOP/s in fp32 and bf16,
    and the model's roofline: its FLOPs divided by the time those products would take at the
    measured rates (a FLOP-weighted harmonic mean, since the big layers dominate)."""
    rows = []
    for k, n in dict.fromkeys(shapes):    # distinct, in order
        row = {"batch": batch, "in": k, "out": n}
        for name, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
            row[name] = {"forward": sig(matmul_gflops(batch, k, n, dtype, False, target_s, reps)),
                         "weight_grad": sig(matmul_gflops(batch, k, n, dtype, True, target_s, reps))}
        rows.append(row)
    by_shape = {(r["in"], r["out"]): r for r in rows}
    model = {}
    for name in ("fp32", "bf16"):
        # per row: each layer does one forward and one weight-gradient product of 2*k*n FLOPs
        products = [(2 * k * n, by_shape[(k, n)][name][kind]) for k, n in shapes for kind in ("forward", "weight_grad")]
        model[name] = sig(sum(f for f, _ in products) / sum(f / g for f, g in products))
    return {"shapes": rows, "model_gflops": model}


def conv_gflops(s: ConvShape, batch: int, dtype: tf.DType, kernel_grad: bool, target_s: float, reps: int) -> float:
    """GFLOP/s of one conv layer as it computes, in a graph loop: ``groups`` tf.nn.conv2d calls of
    (cin/groups -> cout/groups) channels (GroupedConv2D's split), or with ``kernel_grad`` the
    kernel gradients of those convolutions taken by a tape, as an FF step takes them (the input is
    not watched: Conv2DBackpropFilter only). Median of ``reps``."""
    g, (ho, wo) = s.groups, s.out_hw
    rng = np.random.default_rng(0)

    def var(shape: tuple[int, ...], trainable: bool) -> tf.Variable:
        return tf.Variable(tf.cast(rng.standard_normal(shape, np.float32) * 0.01, dtype), trainable=trainable)

    xs = [var((batch, s.h, s.w, s.cin // g), False) for _ in range(g)]
    ks = [var((s.kernel, s.kernel, s.cin // g, s.cout // g), True) for _ in range(g)]
    dys = [var((batch, ho, wo, s.cout // g), False) for _ in range(g)] if kernel_grad else [None] * g
    strides, padding = s.stride, s.padding.upper()

    @tf.function
    def loop(iters: tf.Tensor) -> tf.Tensor:
        # as _matmul_loop: variables read inside the loop, every result feeds the sum (one element of
        # it: a reduction would add a pass over the output, comparable to conv1's own work)
        acc = tf.constant(0.0)
        for _ in tf.range(iters):
            for x, k, dy in zip(xs, ks, dys):
                if kernel_grad:
                    with tf.GradientTape() as tape:
                        out = tf.nn.conv2d(x, k, strides, padding)
                    out = tape.gradient(out, k, output_gradients=dy)
                else:
                    out = tf.nn.conv2d(x, k, strides, padding)
                acc += tf.cast(out[0, 0, 0, 0], tf.float32)
        return acc
    return loop_gflops(loop, s.flop(batch), target_s, reps)


def conv_roofline(shapes: list[ConvShape], batch: int, dtype: tf.DType, target_s: float, reps: int) -> dict[str, Any]:
    """Per conv layer: forward and kernel-gradient GFLOP/s at its own shapes; and the net's conv
    roofline, FLOP-weighted over the layers as ``roofline`` does: what an FF step executes per trained
    layer (forward + kernel gradient, the same FLOPs each)."""
    rows = []
    for s in shapes:
        ho, wo = s.out_hw
        rows.append({"layer": s.name, "batch": batch, "input": [s.h, s.w, s.cin], "output": [ho, wo, s.cout],
                     "kernel": s.kernel, "stride": s.stride, "groups": s.groups,
                     "gflop_per_batch": sig(s.flop(batch) / GIGA),
                     "forward": sig(conv_gflops(s, batch, dtype, False, target_s, reps)),
                     "kernel_grad": sig(conv_gflops(s, batch, dtype, True, target_s, reps))})
    products = [(s.flop(batch), r[kind]) for s, r in zip(shapes, rows) for kind in ("forward", "kernel_grad")]
    return {"dtype": dtype.name, "layers": rows,
            "model_gflops": sig(sum(f for f, _ in products) / sum(f / g for f, g in products))}


# --------------------------------------------------------------------------------------------
# FLOP counting

@dataclass(frozen=True)
class ConvShape:
    """A conv layer of the FF net: input (h, w, cin) -> cout channels, square kernel, ``groups``."""
    name: str
    h: int
    w: int
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: str
    groups: int

    @property
    def out_hw(self) -> tuple[int, int]:
        span = (self.h, self.w) if self.padding == "same" else (self.h - self.kernel + 1, self.w - self.kernel + 1)
        return -(-span[0] // self.stride), -(-span[1] // self.stride)

    def flop(self, images: int) -> float:
        """Forward FLOPs for ``images`` images, 2 * N * Hout * Wout * k * k * (cin / groups) * cout;
        the kernel gradient and the input gradient multiply as many."""
        ho, wo = self.out_hw
        return 2.0 * images * ho * wo * self.kernel ** 2 * (self.cin // self.groups) * self.cout


# --------------------------------------------------------------------------------------------
# building runs from the project's own configs

@dataclass
class Bench:
    args: argparse.Namespace
    console: Console
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.console.log(f"[yellow]note:[/] {text}")

    def overrides(self, mode: str, units: int) -> list[str]:
        a = self.args
        # eval_on=test: with data.val_size=0 (all 60k images train) there is no validation set.
        base = {"protocol": "split", "mode": mode, "units": str(units),
                "batch_size": str(a.batch_size), "data": a.data, "data.val_size": "0", "eval_on": "test",
                "model.precision": a.precision, "progress": "false"}
        if a.train_size:
            base["data.train_size"] = str(a.train_size)
        for item in a.overrides:                 # the user's overrides win
            key, _, value = item.partition("=")
            base[key] = value
        return [f"{k}={v}" for k, v in base.items()]

    def preset(self, experiment: str) -> list[str]:
        """Overrides of a timed experiment preset on the benchmark's data, precision and train size."""
        a = self.args
        overrides = [f"experiment={experiment}", f"data={a.data}", "progress=false", f"model.precision={a.precision}"]
        if a.data == "digits":
            overrides += ["data.val_size=300"]
        if a.train_size:
            overrides.append(f"data.train_size={a.train_size}")
        return overrides

    def compose(self, overrides: list[str]) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
            return compose("config", overrides=overrides)

    def build(self, mode: str, units: int) -> tuple[DictConfig, Run, TrainMgr, float]:
        """Compose and build an FF run (protocol split unless the user overrides it) and trace its
        training graphs with a warm-up epoch. Returns (cfg, run, mgr, warm-up seconds)."""
        return self._build(self.overrides(mode, units))

    def _build(self, overrides: list[str], first_stage: bool = False) -> tuple[DictConfig, Run, TrainMgr, float]:
        """``first_stage``: the warm-up epoch trains the layers of the schedule's first stage (else all)."""
        cfg = self.compose(overrides)
        # As loop.train does: no names or graphs leak from the previous run; same seed, same weights.
        keras.backend.clear_session()
        keras.utils.set_random_seed(int(cfg.seed))
        run = build_run(cfg, keep_splits=True)
        # Only the training passes are timed; evaluation is measured on its own.
        mgr = TrainMgr(run.network.layers, run.network.seq, run.plan.train, batch_size=int(cfg.batch_size),
                       eval_batch_size=int(cfg.eval_batch_size), seed=int(cfg.seed), shuffle=bool(cfg.shuffle))
        warm = mgr.run_epoch(1, first_stage_layers(run, mgr) if first_stage else None).seconds
        return cfg, run, mgr, warm


def first_stage_layers(run: Run, mgr: TrainMgr) -> frozenset[str]:
    """The layers that train in the first stage of the run's schedule (every layer without one)."""
    return mgr.resolve_layers(run.schedule[0][0] if run.schedule else "all")


def time_epochs(mgr: TrainMgr, reps: int, first_epoch: int = 2,
                trainable: frozenset[str] | None = None) -> tuple[list[float], int, int]:
    """Seconds of ``reps`` training epochs after warm-up (``trainable``: the layers that train, default
    all); also samples per epoch and the number of graph traces during the timed epochs (should be 0)."""
    traces = sum(mgr.trace_counts.values())
    seconds, samples = [], 0
    for e in range(first_epoch, first_epoch + reps):
        r = mgr.run_epoch(e, trainable)
        seconds.append(r.seconds)
        samples = r.train_samples
    return seconds, samples, sum(mgr.trace_counts.values()) - traces


def ff_shapes(run: Run) -> list[tuple[int, int]]:
    return [dense_shape(run.network.layers[n]) for n in run.network.ff_names]


def summarize_ff(mode: str, cfg: DictConfig, run: Run, mgr: TrainMgr, warm: float, seconds: list[float],
                 samples: int, retraces: int, roof: dict[str, float] | None) -> dict[str, Any]:
    med = statistics.median(seconds)
    flop, executed = ff_epoch_flop(run.network.layers, mgr.tasks)
    gflops = flop / med / GIGA
    out = {
        "mode": mode, "protocol": cfg.protocol.name, "data": run.splits.name,
        "layers": [list(s) for s in ff_shapes(run)], "batch_size": int(cfg.batch_size),
        "precision": cfg.model.precision, "train_images": len(run.splits.x_train),
        "samples_per_epoch": samples, "warmup_epoch_s": sig(warm),
        "epoch_s": [sig(s) for s in seconds], "median_epoch_s": sig(med),
        "samples_per_s": sig(samples / med), "gflop_per_epoch": sig(flop / GIGA),
        "gflops": sig(gflops), "executed_gflop_per_epoch": sig(executed / GIGA),
        "executed_gflops": sig(executed / med / GIGA), "retraces_while_timed": retraces,
    }
    if roof:
        out["ratio_fp32_roofline"] = sig(gflops / roof["fp32"])
        out["ratio_bf16_roofline"] = sig(gflops / roof["bf16"])
        out["executed_ratio_fp32_roofline"] = sig(executed / med / GIGA / roof["fp32"])
        out["executed_ratio_bf16_roofline"] = sig(executed / med / GIGA / roof["bf16"])
    return out


# --------------------------------------------------------------------------------------------
# evaluation: all labels at once vs plain forward passes

def make_forward_pass(transform: Callable, batch_size: int) -> Callable:
    """One graph call = one plain forward pass (every layer TRANSFORM) over a dataset.

    TrainMgr's own TRANSFORM pass cannot serve as the baseline: nothing consumes its outputs, so
    TF prunes the whole computation and the pass takes ~1 ms. Here every output feeds a sum."""
    spec = [tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=spec)
    def forward(X, y):
        n = tf.shape(X)[0]
        total = tf.constant(0.0)
        for i in tf.range((n + batch_size - 1) // batch_size):
            lo, hi = i * batch_size, tf.minimum((i + 1) * batch_size, n)
            outs = transform(X[lo:hi], y[lo:hi], y[lo:hi])
            total += tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32)) for k, v in outs.items() if k != "input"])
        return total
    return forward


def time_call(fn: Callable[[], Any], reps: int) -> float:
    fn()                                   # trace + warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_eval(run: Run, mgr: TrainMgr, cfg: DictConfig, reps: int) -> dict[str, Any]:
    """The sup net's all-labels evaluation on the test images (EVAL_ALL_LABELS: each image once per
    label, scored by FFGoodness) against one plain forward pass per label (ten for MNIST) over
    the same images: the same matmul FLOPs, so the ratio is the cost of duplicating."""
    all_labels = next(e for e in run.plan.test if e.task == Task.EVAL_ALL_LABELS)
    data: FFData = all_labels.resolve(0)
    c = run.plan.num_classes
    eval_bs = int(cfg.eval_batch_size)
    t_all_labels = time_call(lambda: mgr.run_task(all_labels, frozenset(), 0), reps)

    forward = make_forward_pass(run.network.transform, eval_bs)   # every layer TRANSFORM while it traces
    t_fwd = time_call(lambda: [forward(data.X, data.y).numpy() for _ in range(c)], reps)

    n = len(data)
    flop = forward_flop(ff_shapes(run), n * c)
    return {
        "images": n, "labels": c, "eval_batch_size": eval_bs,
        "all_labels_s": sig(t_all_labels), "forward_x_labels_s": sig(t_fwd),
        "all_labels_over_forward": sig(t_all_labels / t_fwd),
        "gflop": sig(flop / GIGA),
        "all_labels_gflops": sig(flop / t_all_labels / GIGA), "forward_gflops": sig(flop / t_fwd / GIGA),
        "all_labels_images_per_s": sig(n / t_all_labels),
    }


# --------------------------------------------------------------------------------------------
# backprop baseline

class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t0)


def bench_backprop(x: np.ndarray, y: np.ndarray, units: list[int], num_classes: int, batch_size: int,
                   precision: str, reps: int, seed: int) -> dict[str, Any]:
    """The same widths as one MLP with a softmax head, trained end to end by Adam via model.fit.

    jit_compile=False: Keras 3 turns XLA on by default ("auto"), the FF graphs do not use it,
    and the comparison should be between the algorithms, not the compilers."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    dtype = "mixed_bfloat16" if precision == "bf16" else None
    model = keras.Sequential([keras.Input((x.shape[1],))]
                             + [keras.layers.Dense(u, activation="relu", dtype=dtype) for u in units]
                             + [keras.layers.Dense(num_classes, activation="softmax", dtype="float32")])
    dims = [x.shape[1], *units, num_classes]
    # forward + weight gradient + input gradient (none for the first layer): 6 - 2 = 4 for layer 1
    flop = len(x) * sum((6.0 if i else 4.0) * dims[i] * dims[i + 1] for i in range(len(dims) - 1))
    return {"layers": [[dims[i], dims[i + 1]] for i in range(len(dims) - 1)], "precision": precision,
            **fit_epochs(model, x, y, batch_size, reps, flop)}


def fit_epochs(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int, reps: int,
               flop: float) -> dict[str, Any]:
    """Compile ``model`` (Adam, no XLA) and time ``model.fit`` epochs: the first traces the train step,
    the next ``reps`` are timed (median). ``flop``: the FLOPs of one epoch."""
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", jit_compile=False)
    timer = _EpochTimer()
    model.fit(x, y, batch_size=batch_size, epochs=1 + reps, shuffle=True, verbose=0, callbacks=[timer])
    med = statistics.median(timer.seconds[1:])
    return {
        "images": len(x), "batch_size": batch_size, "jit_compile": False,
        "warmup_epoch_s": sig(timer.seconds[0]), "epoch_s": [sig(s) for s in timer.seconds[1:]],
        "median_epoch_s": sig(med), "samples_per_s": sig(len(x) / med),
        "gflop_per_epoch": sig(flop / GIGA), "gflops": sig(flop / med / GIGA),
    }


# --------------------------------------------------------------------------------------------
# conv: an FF conv epoch (e.g. CwComp) against the conv roofline and a backprop epoch of the same CNN

#: the project's target: an FF conv epoch within 1.2x a backprop epoch of the same CNN
CONV_TARGET_FF_OVER_BP = 1.2
CONV_NOTE = ("FF executes forward + kernel gradient per trained conv layer (no input gradient: no gradient "
             "crosses blocks); backprop also computes input gradients (except the first layer). Counted: conv "
             "FLOPs only (not the readout, ReLU, pooling, BatchNorm or the optimizer)")


def conv_blocks(run: Run) -> list[tuple[ConvShape, list[keras.layers.Layer]]]:
    """The FF net's conv blocks in order: each one's shape (its input seen in a forward pass of one
    image) and its Keras layers (conv, then pool and BatchNorm when it has them). The backprop CNN is
    these blocks in a chain, so they must be the net's only FF layers, each reading the one before."""
    x, y = tf.constant(run.splits.x_train[:1]), tf.constant(run.splits.y_train[:1], tf.int32)
    outs = run.network.transform(x, y, y)
    inputs = {node.name: node.inputs for node in run.network.nodes}
    blocks, previous = [], "input"
    for name in run.network.ff_names:
        layer = run.network.layers[name]
        if not isinstance(layer, FFConv2D) or inputs.get(name) != (previous,):
            raise ValueError(f"--conv needs a chain of conv2d blocks from the input; FF layer {name} "
                             f"({type(layer).__name__}) reads {inputs.get(name)}")
        keras_layers = list(layer.layer.layers) if isinstance(layer.layer, keras.Sequential) else [layer.layer]
        conv = keras_layers[0]
        _, h, w, c = outs[previous].shape
        blocks.append((ConvShape(name, int(h), int(w), int(c), conv.filters, conv.kernel_size[0], conv.strides[0],
                                 conv.padding, conv.groups), keras_layers))
        previous = name
    if not blocks:
        raise ValueError("--conv: the preset has no conv2d layers")
    return blocks


def backprop_cnn(blocks: list[list[keras.layers.Layer]], image_shape: tuple[int, ...], num_classes: int,
                 precision: str) -> keras.Model:
    """The FF net's conv blocks (fresh copies of the same Keras layers: GroupedConv2D where the FF net
    has groups, ReLU, pool, BatchNorm), then flatten and a softmax Dense, for end-to-end backprop."""
    layers = []
    for block in blocks:
        for layer in block:
            config = layer.get_config()
            if getattr(layer, "activation", None) is relu_full_grad:
                config["activation"] = "relu"     # an FF training device; backprop uses the plain ReLU
            layers.append(type(layer).from_config(config))
    dtype = "mixed_bfloat16" if precision == "bf16" else None
    return keras.Sequential([keras.Input(image_shape), *layers, keras.layers.Flatten(dtype=dtype),
                             keras.layers.Dense(num_classes, activation="softmax", dtype="float32")])


def bench_conv(bench: Bench) -> dict[str, Any]:
    """1. the conv roofline at the preset's layer shapes; 2. FF training epochs of its first stage
    (every conv layer training); 3. model.fit epochs of the same CNN trained by backprop."""
    a, log = bench.args, bench.console.log
    log(f"conv: experiment={a.conv}: building and tracing (warm-up epoch) ...")
    cfg, run, mgr, warm = bench._build(bench.preset(a.conv) + a.overrides, first_stage=True)
    trainable = first_stage_layers(run, mgr)
    batch, seed, classes = int(cfg.batch_size), int(cfg.seed), run.splits.num_classes
    blocks = conv_blocks(run)
    shapes = [s for s, _ in blocks]

    log("conv roofline: tf.nn.conv2d forward and kernel gradient at each layer's shapes ...")
    roof = conv_roofline(shapes, batch, tf.bfloat16 if a.precision == "bf16" else tf.float32, a.roofline_time, a.reps)

    log(f"conv FF: timing {a.reps} epochs ...")
    seconds, samples, retraces = time_epochs(mgr, a.reps, trainable=trainable)
    med = statistics.median(seconds)
    layers = run.network.layers
    trained = [n for n in layers if n in trainable and layers[n].optimizer is not None
               and any(e.task in layers[n].trains_on for e in mgr.tasks)]
    # every training row runs each conv forward, and each trained conv's kernel gradient
    executed = sum(s.flop(samples) * (2 if s.name in trained else 1) for s in shapes)
    ff = {"protocol": cfg.protocol.name, "trained": trained,
          "trained_conv": [s.name for s in shapes if s.name in trained],
          "samples_per_epoch": samples, "warmup_epoch_s": sig(warm), "epoch_s": [sig(t) for t in seconds],
          "median_epoch_s": sig(med), "samples_per_s": sig(samples / med),
          "executed_gflop_per_epoch": sig(executed / GIGA), "executed_gflops": sig(executed / med / GIGA),
          "ratio_roofline": sig(executed / med / GIGA / roof["model_gflops"]), "retraces_while_timed": retraces}
    if retraces:
        bench.note(f"conv FF: {retraces} graph trace(s) during the timed epochs")
    x = run.splits.x_train.reshape(-1, *run.splits.image_shape, run.splits.channels)
    y = run.splits.y_train
    out = {"experiment": a.conv, "data": run.splits.name, "train_images": len(x), "image_shape": list(x.shape[1:]),
           "batch_size": batch, "precision": cfg.model.precision, "note": CONV_NOTE, "roofline": roof, "ff": ff}
    log("conv backprop: model.fit of the same CNN ...")
    keras.backend.clear_session()          # the copies get the FF layers' names: free them first
    keras.utils.set_random_seed(seed)
    model = backprop_cnn([block for _, block in blocks], x.shape[1:], classes, a.precision)
    del run, mgr, blocks, layers
    gc.collect()
    # per conv: forward + kernel gradient + input gradient, none for the first layer (the images)
    flop = sum(s.flop(len(x)) * (3 if i else 2) for i, s in enumerate(shapes))
    bp = fit_epochs(model, x, y, batch, a.reps, flop)
    bp["ratio_roofline"] = sig(bp["gflops"] / roof["model_gflops"])
    out["backprop"] = bp
    # the FF epoch (the preset's first-stage training passes) over the backprop epoch (the images once)
    ratio = ff["median_epoch_s"] / bp["median_epoch_s"]
    out["ff_over_bp"] = sig(ratio)
    out["target_ff_over_bp"] = CONV_TARGET_FF_OVER_BP
    out["meets_target"] = bool(ratio <= CONV_TARGET_FF_OVER_BP)
    return out


# --------------------------------------------------------------------------------------------
# report

def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def results_table(res: dict[str, Any]) -> Table:
    """Every section in one table: a row per measurement, the same units in every column."""
    t = Table(title=f"ffrun bench: {machine_line(res['machine'])}", title_justify="left")
    for col in ("measurement", "s", "samples/s", "GFLOP", "GFLOP/s", "% fp32 roof"):
        t.add_column(col, justify="left" if col == "measurement" else "right")
    t.add_column("note")

    roof = res.get("roofline")
    if roof:
        for r in roof["shapes"]:
            for p in ("fp32", "bf16"):
                t.add_row(f"matmul {p} {r['batch']}x{r['in']}x{r['out']}", "", "", "",
                          f"{_num(r[p]['forward'])} / {_num(r[p]['weight_grad'])}", "", "forward / weight grad")
        m = roof["model_gflops"]
        t.add_row("roofline of the model", "", "", "", f"{_num(m['fp32'])} / {_num(m['bf16'])}", "100%",
                  "fp32 / bf16, FLOP-weighted")
        t.add_section()
    for mode, r in res.get("ff", {}).items():
        width = "x".join(str(s[1]) for s in r["layers"])
        t.add_row(f"FF {mode} epoch", _num(r["median_epoch_s"]), _num(r["samples_per_s"]), _num(r["gflop_per_epoch"]),
                  _num(r["gflops"]), _pct(r.get("ratio_fp32_roofline")),
                  f"{r['protocol']} {width} {r['precision']} batch {r['batch_size']}: {r['samples_per_epoch']:,} "
                  f"pos+neg samples, median of {len(r['epoch_s'])}, warm-up {_num(r['warmup_epoch_s'])} s"
                  + (f", {_pct(r.get('ratio_bf16_roofline'))} of bf16 roof" if r["precision"] == "bf16" else "")
                  + (f"; executed {_num(r['executed_gflop_per_epoch'])} GFLOP = {_num(r['executed_gflops'])} GFLOP/s"
                     f" ({_pct(r.get('executed_ratio_fp32_roofline'))})"
                     if r.get("executed_gflop_per_epoch") != r["gflop_per_epoch"] else ""))
    bp = res.get("backprop")
    if bp:
        ratios = ", ".join(f"FF {m}/BP {v:.2f}x" for m, v in bp.get("ff_over_bp", {}).items())
        t.add_row("backprop epoch (fit)", _num(bp["median_epoch_s"]), _num(bp["samples_per_s"]),
                  _num(bp["gflop_per_epoch"]), _num(bp["gflops"]), _pct(bp.get("ratio_fp32_roofline")),
                  f"{bp['images']:,} images, Adam; {ratios}")
    ev = res.get("evaluation")
    if ev:
        t.add_section()
        t.add_row("eval all labels", _num(ev["all_labels_s"]), _num(ev["all_labels_images_per_s"]), _num(ev["gflop"]),
                  _num(ev["all_labels_gflops"]), "",
                  f"EVAL_ALL_LABELS, {ev['images']:,} images x {ev['labels']}; {ev['all_labels_over_forward']:.2f}x the forwards")
        t.add_row(f"eval {ev['labels']} forward passes", _num(ev["forward_x_labels_s"]), "", _num(ev["gflop"]),
                  _num(ev["forward_gflops"]), "", f"TRANSFORM, batch {ev['eval_batch_size']}")
    pr = res.get("paper")
    if pr:
        t.add_section()
        width = "x".join(str(s[1]) for s in pr["layers"])
        p = "bf16" if pr["precision"] == "bf16" else "fp32"
        t.add_row(f"paper recipe epoch ({pr['experiment']})", _num(pr["median_epoch_s"]), _num(pr["samples_per_s"]),
                  _num(pr["gflop_per_epoch"]), _num(pr["gflops"]), _pct(pr.get("ratio_fp32_roofline")),
                  f"{width} {pr['precision']} batch {pr['batch_size']}: training passes only, "
                  f"{pr['samples_per_epoch']:,} rows (pos+neg, then neutral for the readout); executed "
                  f"{_num(pr['executed_gflop_per_epoch'])} GFLOP = {_pct(pr.get(f'executed_ratio_{p}_roofline'))} of its "
                  f"own {p} roofline {_num(pr['roofline_gflops'][p])} GFLOP/s")
    if res.get("scaling"):
        t.add_section()
        for r in res["scaling"]:
            t.add_row(f"scaling unsup {r['units']}", _num(r["median_epoch_s"]), _num(r["samples_per_s"]),
                      _num(r["gflop_per_epoch"]), _num(r["gflops"]), _pct(r.get("ratio_fp32_roofline")),
                      "same as FF unsup above" if r.get("reused") else f"median of {len(r['epoch_s'])}")
    cv = res.get("conv")
    if cv:
        t.add_section()
        roof = cv["roofline"]
        for r in roof["layers"]:
            h, w, c = r["input"]
            t.add_row(f"conv {roof['dtype']} {r['layer']} {r['batch']}x{h}x{w}x{c}->{r['output'][2]}", "", "", "",
                      f"{_num(r['forward'])} / {_num(r['kernel_grad'])}", "",
                      f"forward / kernel grad, k{r['kernel']}" + (f", {r['groups']} groups" if r["groups"] > 1 else "")
                      + (f", stride {r['stride']}" if r["stride"] > 1 else ""))
        t.add_row("conv roofline of the net", "", "", "", _num(roof["model_gflops"]), "100%",
                  f"{roof['dtype']}, FLOP-weighted over forward + kernel grad (what an FF step runs)")
        ff, bp = cv["ff"], cv["backprop"]
        t.add_row(f"FF conv epoch ({cv['experiment']})", _num(ff["median_epoch_s"]), _num(ff["samples_per_s"]),
                  _num(ff["executed_gflop_per_epoch"]), _num(ff["executed_gflops"]), _pct(ff["ratio_roofline"]),
                  f"{ff['protocol']}, first stage ({', '.join(ff['trained'])} train), batch {cv['batch_size']}: "
                  f"{ff['samples_per_epoch']:,} samples, median of {len(ff['epoch_s'])}, warm-up "
                  f"{_num(ff['warmup_epoch_s'])} s; conv forward + kernel grad only")
        t.add_row("backprop CNN epoch (fit)", _num(bp["median_epoch_s"]), _num(bp["samples_per_s"]),
                  _num(bp["gflop_per_epoch"]), _num(bp["gflops"]), _pct(bp["ratio_roofline"]),
                  f"same conv blocks + flatten + Dense softmax, Adam, {bp['images']:,} images; + input grads; "
                  f"FF/BP {cv['ff_over_bp']:.2f}x (target <= {cv['target_ff_over_bp']}x: "
                  f"{'met' if cv['meets_target'] else 'not met'})")
    t.add_section()
    mem = res["memory"]
    first = next((k for k in ("ff_unsup", "ff_sup") if k in mem.get("after", {})), None)
    one_run = (f"; {mem['after'][first]:,.0f} MB after the first FF run ({first[3:]}: data, one network, "
               f"its graphs)") if first else ""
    t.add_row("peak resident memory", "", "", "", "", "",
              f"{mem['peak_rss_mb']:,.0f} MB for the whole benchmark (ru_maxrss){one_run}")
    return t


# --------------------------------------------------------------------------------------------
# main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every FF run, e.g. pairing=same_step")
    p.add_argument("--units", type=int, default=2000, help="units per FF layer")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--train-size", type=int, default=None, help="keep the first N training images (data.train_size)")
    p.add_argument("--data", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="model.precision (FF and backprop)")
    p.add_argument("--modes", default="unsup,sup",
                   help="FF modes to time, comma-separated ('' for none: no Result-2 runs, MLP backprop or evaluation)")
    p.add_argument("--reps", type=int, default=3, help="timed epochs (median) after one warm-up epoch")
    p.add_argument("--scaling", default="500,1000,2000,4000", help="unsup widths for the scaling sweep")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--scaling-reps", type=int, default=1, help="timed epochs per scaling width")
    p.add_argument("--skip-bp", action="store_true",
                   help="skip the MLP backprop baseline (the --conv section always runs its own CNN baseline)")
    p.add_argument("--paper", default="paper_small",
                   help="experiment preset whose training epoch is timed too ('' to skip): Hinton's paper recipe")
    p.add_argument("--conv", default="",
                   help="conv experiment preset (e.g. cwcomp_mnist) whose FF epoch is timed against the conv roofline "
                        "and a Keras backprop epoch of the same CNN ('' to skip); with --modes '' --paper '' "
                        "--no-scaling only this section runs")
    p.add_argument("--roofline-time", type=float, default=0.5, help="seconds per timed matmul or conv repetition")
    p.add_argument("--out", type=Path, default=Path("bench.json"))
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in ("unsup", "sup")]
    if bad:
        p.error(f"--modes takes unsup and/or sup, got {args.modes}")
    if args.reps < 1 or args.scaling_reps < 1:
        p.error("--reps and --scaling-reps must be >= 1")
    args.scaling = [] if args.no_scaling else [int(u) for u in args.scaling.split(",") if u.strip()]
    if any("=" not in o for o in args.overrides):
        p.error("extra arguments must be Hydra overrides key=value")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Every build makes fresh TrainMgr graphs from the same code, which TF reports as "excessive
    # retracing"; the retraces that matter (inside timed epochs) are counted and reported instead.
    tf.get_logger().setLevel(logging.ERROR)
    console = outputs.make_console()
    if not console.is_terminal:
        console.width = 150      # piped to a file or CI: rich would wrap the table at 80 columns
    bench = Bench(args, console)
    res: dict[str, Any] = {"machine": machine_info(), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                 for k, v in vars(args).items()}}
    console.log(machine_line(res["machine"]))
    if res["machine"]["load_avg_1m_at_start"] > 0.5:
        bench.note(f"load average {res['machine']['load_avg_1m_at_start']} at start: other processes share "
                   f"the cores, so timings are pessimistic")
    if bf16_note(res["machine"]) and (args.precision == "bf16" or "bf16" in str(args)):
        bench.note(bf16_note(res["machine"]))
    res["machine"]["bf16_note"] = bf16_note(res["machine"])
    memory: dict[str, float] = {}

    def save() -> None:
        # written after every section, so a long run that dies keeps what it measured
        res["memory"] = {"peak_rss_mb": outputs.peak_memory_mb(), "after": memory}
        res["notes"] = bench.notes
        order = ("machine", "args", "roofline", "ff", "backprop", "evaluation", "paper", "scaling", "conv",
                 "memory", "notes")
        outputs.write_json(args.out, {k: res[k] for k in order if k in res})

    # 1 + 2 + 4: FF epochs per mode; the roofline at the first run's shapes; the sup net's evaluation
    if args.modes:
        res["ff"] = {}
    roof_model = None
    reuse = None          # the main unsup timing, when the scaling sweep includes the main width
    bp_data = None        # images, labels, widths, classes, batch, seed of the first run, for backprop
    for mode in args.modes:
        console.log(f"FF {mode}: building and tracing (warm-up epoch) ...")
        cfg, run, mgr, warm = bench.build(mode, args.units)
        if "roofline" not in res:
            console.log("roofline: matmul at the model's layer shapes, fp32 and bf16 ...")
            res["roofline"] = roofline(ff_shapes(run), int(cfg.batch_size), args.roofline_time, args.reps)
            roof_model = res["roofline"]["model_gflops"]
            memory["roofline"] = outputs.peak_memory_mb()
        console.log(f"FF {mode}: timing {args.reps} epochs ...")
        seconds, samples, retraces = time_epochs(mgr, args.reps)
        r = summarize_ff(mode, cfg, run, mgr, warm, seconds, samples, retraces, roof_model)
        res["ff"][mode] = r
        memory[f"ff_{mode}"] = outputs.peak_memory_mb()
        console.log(f"FF {mode}: {r['median_epoch_s']:.2f} s/epoch, {r['gflops']:.1f} GFLOP/s")
        if retraces:
            bench.note(f"FF {mode}: {retraces} graph trace(s) during the timed epochs")
        if mode == "sup":
            console.log("evaluation: all labels vs plain forward passes ...")
            res["evaluation"] = bench_eval(run, mgr, cfg, args.reps)
            memory["evaluation"] = outputs.peak_memory_mb()
        if mode == "unsup":
            reuse = r
        if bp_data is None:
            bp_data = (run.splits.x_train, run.splits.y_train, [s[1] for s in ff_shapes(run)],
                       run.splits.num_classes, int(cfg.batch_size), int(cfg.seed))
        # one network alive at a time, so the peak memory is that of one run
        del cfg, run, mgr
        gc.collect()
        save()
    if args.modes and "sup" not in args.modes:
        bench.note("evaluation skipped: it needs the sup net (--modes ...,sup)")

    # 3: backprop on the same training images (each once per epoch), same widths
    if not args.skip_bp and bp_data is not None:
        console.log("backprop: model.fit ...")
        x, y, widths, classes, batch, seed = bp_data
        bp = bench_backprop(x, y, widths, classes, batch, args.precision, args.reps, seed)
        if roof_model:
            bp["ratio_fp32_roofline"] = sig(bp["gflops"] / roof_model["fp32"])
        # FF epoch (pos + neg samples) over backprop epoch (the images once)
        bp["ff_over_bp"] = {m: sig(r["median_epoch_s"] / bp["median_epoch_s"]) for m, r in res["ff"].items()}
        res["backprop"] = bp
        memory["backprop"] = outputs.peak_memory_mb()
        save()
    bp_data = None

    # the paper recipe (3 x 1000, batch 100, pos+neg in one step, neutral-label readout pass):
    # training passes only, as the PyTorch figure it is compared with
    if args.paper:
        console.log(f"paper recipe: experiment={args.paper} ...")
        cfg, run, mgr, warm = bench._build(bench.preset(args.paper))
        seconds, samples, retraces = time_epochs(mgr, args.reps)
        shapes = ff_shapes(run)
        roof = roofline(shapes, 2 * int(cfg.batch_size), args.roofline_time, 1)["model_gflops"]
        r = summarize_ff("sup", cfg, run, mgr, warm, seconds, samples, retraces, roof)
        res["paper"] = {"experiment": args.paper, "roofline_gflops": roof, **r}
        memory["paper"] = outputs.peak_memory_mb()
        del cfg, run, mgr
        gc.collect()
        save()

    # 6: scaling with width (unsup); the main width is reused when it was already timed. Every
    # width is compared to the roofline measured at the main width's shapes.
    if args.scaling:
        res["scaling"] = []
        keys = ("protocol", "epoch_s", "median_epoch_s", "samples_per_s", "gflop_per_epoch", "gflops",
                "ratio_fp32_roofline")
        for units in args.scaling:
            if reuse is not None and units == args.units:
                res["scaling"].append({"units": units, **{k: reuse.get(k) for k in keys}, "reused": True})
                continue
            console.log(f"scaling: unsup {units} units ...")
            cfg, run, mgr, warm = bench.build("unsup", units)
            seconds, samples, retraces = time_epochs(mgr, args.scaling_reps)
            r = summarize_ff("unsup", cfg, run, mgr, warm, seconds, samples, retraces, roof_model)
            res["scaling"].append({"units": units, **{k: r.get(k) for k in keys}, "reused": False})
            memory[f"scaling_{units}"] = outputs.peak_memory_mb()
            del cfg, run, mgr
            gc.collect()
            save()

    # 7: a conv preset's FF epoch against the conv roofline and a backprop epoch of the same CNN
    if args.conv:
        res["conv"] = bench_conv(bench)
        memory["conv"] = outputs.peak_memory_mb()
        c = res["conv"]
        console.log(f"conv: FF {c['ff']['median_epoch_s']:.3g} s/epoch, backprop {c['backprop']['median_epoch_s']:.3g} "
                    f"s/epoch, FF/BP {c['ff_over_bp']:.2f}x")
        gc.collect()
        save()

    # 5: peak memory, then the report
    save()
    console.print(results_table(res))
    if "conv" in res:
        console.print(f"conv: {res['conv']['note']}")
    for n in bench.notes:
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
