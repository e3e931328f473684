"""Where each conv block's training step goes: its forward convolution, its kernel gradient, the
element-wise work between them (bias, activation, pooling, batch norm, goodness, loss and their
gradients down to the convolution's output) and the optimizer update, each timed alone; beside them
the block's whole training step, fused (the default) and as a plain tape over the Keras layers.

Run:  FFRUN_DATA_DIR=../shared/data python benchmarks/conv_breakdown.py experiment=cwcomp_mnist
      ... --rounds 5 --batches 20 --out conv_breakdown.json
      ... --variants experiment=cwcomp_mnist   (also the step and its element-wise part under XLA,
                                                 the max pool after the ReLU, and both grouped-conv
                                                 forms)

Every variant of every block is traced first, then the rounds alternate over all of them (in
reversed order every other round), so a drifting machine slows them alike; medians per variant.
Each timed call runs ``--batches`` batches in one graph loop, as the trainer does. The blocks' inputs
are the network's own maps of real training images. Arguments are Hydra overrides.

"conv share" is (forward + kernel gradient) / fused step: the share of the block's step spent in its
own convolutions, i.e. the step's speed as a share of that block's conv roofline measured in the
same run. The sum of the parts may differ from the step: the step's graph overlaps some of them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable

from ffrun import _import_tensorflow_quietly

_import_tensorflow_quietly()
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

import ffrun.conf  # noqa: E402,F401  (registers the config schema and resolvers)
from ffrun.core import losses  # noqa: E402
from ffrun.core.layers import FFConv2D, Task  # noqa: E402
from ffrun.core.trainer import TrainMgr  # noqa: E402
from ffrun.experiment.build import build_run  # noqa: E402

PARTS = ("forward", "kernel_grad", "elementwise", "update")


def _block_parts(layer: FFConv2D, x: tf.Tensor, y: tf.Tensor, batches: int,
                 variants: bool = False) -> dict[str, Callable[[], Any]]:
    """One graph per part (and per whole step) of ``layer``'s training step, each looping ``batches``
    times over the batch ``x`` (labels ``y``); with ``variants`` also the alternatives that were
    tried (the whole step under XLA; both exact forms of a grouped convolution)."""
    conv = layer.conv
    kernel = conv.kernel
    z = conv.convolution_op(x, kernel)
    dz = tf.random.stateless_normal(z.shape, [1, 2]) * 1e-3
    grads = [tf.zeros_like(v) for v in layer.trainable_variables]

    def repeat(body: Callable[[], tf.Tensor]) -> Callable[[], Any]:
        @tf.function
        def loop() -> tf.Tensor:
            acc = tf.constant(0.0)
            for _ in tf.range(batches):
                acc += tf.cast(body(), tf.float32)
            return acc
        return loop

    def forward() -> tf.Tensor:
        return conv.convolution_op(x, kernel)[0, 0, 0, 0]

    def kernel_grad() -> tf.Tensor:
        with tf.GradientTape() as tape:
            out = conv.convolution_op(x, kernel)
        return tape.gradient(out, kernel, output_gradients=dz)[0, 0, 0, 0]

    def elementwise() -> tf.Tensor:
        """Everything of the fused step between the convolution and the kernel gradient."""
        extra = [v for v in layer.trainable_variables if v is not kernel]
        with tf.GradientTape() as tape:
            tape.watch(z)
            h = tf.nn.max_pool2d(z, layer.pool, layer.pool, "VALID") if layer.pool_first else z
            h = conv.activation(h + conv.bias if conv.use_bias else h)
            if layer.pool and not layer.pool_first:
                h = tf.nn.max_pool2d(h, layer.pool, layer.pool, "VALID")
            if layer.bn is not None:
                h = layer._batchnorm(h, training=True)
            if layer.loss.competitive:
                loss = layer.loss.classes(losses.class_goodness(h, layer.num_classes), y, layer.th_pos)
            else:
                loss = layer.loss.positive(layer._goodness(h, y, True), layer.th_pos)
        out = tape.gradient(loss, [z, *extra])
        return out[0][0, 0, 0, 0]

    def update() -> tf.Tensor:
        layer.optimizer.apply_gradients(zip(grads, layer.trainable_variables))
        return tf.constant(0.0)

    pool_first = layer.pool_first

    def step(fused: bool, pool_first: bool = pool_first) -> Callable[[], tf.Tensor]:
        def body() -> tf.Tensor:
            # read while tracing: each graph bakes in its own path, and the layer is left as it was
            saved = layer.fused, layer.pool_first
            layer.fused, layer.pool_first = fused, pool_first
            try:
                layer.set_task(Task.TRAIN_POS)
                return tf.reduce_sum(layer.ff_do_task(x, y)[0, 0, 0, :1])
            finally:
                layer.fused, layer.pool_first = saved
        return body

    parts = {"forward": repeat(forward), "kernel_grad": repeat(kernel_grad), "elementwise": repeat(elementwise),
             "update": repeat(update), "step_fused": repeat(step(True)), "step_keras": repeat(step(False))}
    if not variants:
        return parts
    # the fused step XLA-compiled whole (convolutions included), one compiled call per batch
    parts["step_fused_xla"] = repeat(tf.function(step(True), jit_compile=True))
    # only the element-wise part compiled (the convolutions stay oneDNN's): what XLA's fusion of
    # its ~20 passes over the map would save
    parts["elementwise_xla"] = repeat(tf.function(elementwise, jit_compile=True))
    if pool_first:   # the max pool after the bias and the ReLU, as the Keras layers order them
        parts["step_fused_pool_last"] = repeat(step(True, pool_first=False))
    if conv.groups > 1:
        # both exact forms of a grouped convolution (GroupedConv2D picks one by its shape): one
        # convolution per group, and one over all channels with a block-diagonal kernel
        def fwd_kgrad(op: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Callable[[], tf.Tensor]:
            def body() -> tf.Tensor:
                with tf.GradientTape() as tape:
                    out = op(x, kernel)
                # the output feeds the result too, or the graph would prune the forward convolution
                return tape.gradient(out, kernel, output_gradients=dz)[0, 0, 0, 0] + out[0, 0, 0, 0]
            return body
        parts["fwd_kgrad_split"] = repeat(fwd_kgrad(conv.split_op))
        parts["fwd_kgrad_block_diagonal"] = repeat(fwd_kgrad(conv.block_diagonal_op))
    return parts


def breakdown(overrides: list[str], rounds: int, batches: int, variants: bool = False) -> dict[str, Any]:
    tf.get_logger().setLevel("ERROR")     # one graph per part and block: retracing notices are expected
    with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["progress=false", *overrides])
    keras.utils.set_random_seed(int(cfg.seed))
    run = build_run(cfg)
    mgr = TrainMgr(run.network.layers, run.network.seq, run.plan.train, batch_size=int(cfg.batch_size),
                   eval_batch_size=int(cfg.eval_batch_size), seed=int(cfg.seed))
    mgr.build()
    data = run.plan.train[0].resolve(1)
    data = data[0] if isinstance(data, tuple) else data
    bs = int(cfg.batch_size)
    x, y = data.X[:bs], data.y[:bs]
    maps = run.network.transform(x, y, tf.maximum(data.y_ff[:bs], 0))
    inputs = {node.name: node.inputs for node in run.network.nodes}
    blocks = [n for n in run.network.ff_names if isinstance(run.network.layers[n], FFConv2D)]
    if not blocks:
        raise SystemExit("conv_breakdown: the network has no conv2d blocks")
    fns: dict[tuple[str, str], Callable[[], Any]] = {}
    flop: dict[str, float] = {}
    for name in blocks:
        layer = run.network.layers[name]
        xin = maps[inputs[name][0]]
        for part, fn in _block_parts(layer, xin, y, batches, variants).items():
            fns[(name, part)] = fn
        kh, kw, cin_g, cout = layer.conv.kernel.shape
        ho, wo = layer.conv.convolution_op(xin[:1], layer.conv.kernel).shape[1:3]
        flop[name] = 2.0 * 2 * bs * ho * wo * kh * kw * cin_g * cout     # forward + kernel gradient
    for fn in fns.values():                                              # trace and warm up
        fn()
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in fns}
    order = list(fns)
    for r in range(rounds):
        for key in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            fns[key]()
            seconds[key].append((time.perf_counter() - t) / batches)
    rows = []
    for name in blocks:
        med = {part: statistics.median(times) * 1e3 for (block, part), times in seconds.items() if block == name}
        conv_ms = med["forward"] + med["kernel_grad"]
        rows.append({"block": name, "ms_per_batch": {k: round(v, 3) for k, v in med.items()},
                     "conv_gflops": round(flop[name] / conv_ms / 1e6, 1),
                     "conv_share_of_step": round(conv_ms / med["step_fused"], 3),
                     "fused_over_keras": round(med["step_fused"] / med["step_keras"], 3)})
    total = {k: sum(r["ms_per_batch"][k] for r in rows) for k in (*PARTS, "step_fused", "step_keras")}
    return {"overrides": overrides, "batch_size": bs, "batches_per_call": batches, "rounds": rounds,
            "blocks": rows, "total_ms_per_batch": {k: round(v, 3) for k, v in total.items()},
            "conv_share_of_steps": round((total["forward"] + total["kernel_grad"]) / total["step_fused"], 3),
            "fused_over_keras": round(total["step_fused"] / total["step_keras"], 3)}


def print_table(result: dict[str, Any]) -> None:
    cols = (*PARTS, "step_fused", "step_keras")
    print(f"ms per batch of {result['batch_size']} (median of {result['rounds']} alternated rounds)")
    print(f"{'block':10s}" + "".join(f"{c:>13s}" for c in cols) + f"{'conv GFLOP/s':>14s}{'conv share':>12s}")
    for r in result["blocks"]:
        ms = r["ms_per_batch"]
        print(f"{r['block']:10s}" + "".join(f"{ms[c]:13.2f}" for c in cols)
              + f"{r['conv_gflops']:14.1f}{r['conv_share_of_step']:12.0%}")
    tot = result["total_ms_per_batch"]
    print(f"{'all':10s}" + "".join(f"{tot[c]:13.2f}" for c in cols) + f"{'':14s}{result['conv_share_of_steps']:12.0%}")
    print(f"fused step / Keras-tape step: {result['fused_over_keras']:.2f}x")
    for r in result["blocks"]:
        ms = r["ms_per_batch"]
        if "step_fused_pool_last" in ms:
            print(f"{r['block']}: fused step with the max pool after the ReLU {ms['step_fused_pool_last']:.2f} ms "
                  f"({ms['step_fused'] / ms['step_fused_pool_last']:.2f}x: the fused step pools first)")
        if "elementwise_xla" in ms:
            print(f"{r['block']}: element-wise part under XLA {ms['elementwise_xla']:.2f} ms "
                  f"({ms['elementwise_xla'] / ms['elementwise']:.2f}x the element-wise part)")
        if "step_fused_xla" in ms:
            print(f"{r['block']}: fused step under XLA {ms['step_fused_xla']:.2f} ms "
                  f"({ms['step_fused_xla'] / ms['step_fused']:.2f}x the fused step)")
        if "fwd_kgrad_block_diagonal" in ms:
            print(f"{r['block']}: forward + kernel gradient with a block-diagonal kernel "
                  f"{ms['fwd_kgrad_block_diagonal']:.2f} ms, split per group {ms['fwd_kgrad_split']:.2f} ms "
                  f"({ms['fwd_kgrad_block_diagonal'] / ms['fwd_kgrad_split']:.2f}x)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10, help="batches per timed call (one graph loop)")
    parser.add_argument("--out", help="also write the figures as JSON")
    parser.add_argument("--variants", action="store_true",
                        help="also time the step under XLA and both forms of a grouped conv (split, block-diagonal)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=cwcomp_mnist")
    args = parser.parse_args(argv)
    result = breakdown(args.overrides, args.rounds, args.batches, args.variants)
    print_table(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
