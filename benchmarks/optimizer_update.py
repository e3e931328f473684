"""Cost of one optimizer update of a 2000 x 2000 layer: the memory-bound part of an FF step.

Run:  python benchmarks/optimizer_update.py [N]    (N x N layer, default 2000; about 20 s; quiet machine)

Prints milliseconds per update for the fused kernels ffrun uses (Adam; SGD with momentum, with and
without coupled weight decay). docs/performance.md uses these to compute the floor of an epoch.
"""
from __future__ import annotations

import statistics
import sys
import time

from ffrun import _import_tensorflow_quietly

_import_tensorflow_quietly()
import tensorflow as tf  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
w = tf.Variable(tf.random.normal([N, N]))
slot1 = tf.Variable(tf.zeros([N, N]))
slot2 = tf.Variable(tf.ones([N, N]))
grad = tf.Variable(tf.random.normal([N, N]))
lr, momentum, wd = tf.constant(1e-3), tf.constant(0.9), tf.constant(3e-4)


@tf.function
def adam(k):
    for _ in tf.range(k):
        tf.raw_ops.ResourceApplyAdam(var=w.handle, m=slot1.handle, v=slot2.handle, beta1_power=0.9,
                                     beta2_power=0.999, lr=lr, beta1=0.9, beta2=0.999, epsilon=1e-7,
                                     grad=grad.read_value())


@tf.function
def sgd_momentum(k):
    for _ in tf.range(k):
        tf.raw_ops.ResourceApplyKerasMomentum(var=w.handle, accum=slot1.handle, lr=lr,
                                              grad=grad.read_value(), momentum=momentum)


@tf.function
def sgd_momentum_weight_decay(k):
    for _ in tf.range(k):   # what FFDense does with weight decay: g + wd * w, then the fused kernel
        g = grad.read_value() + wd * w
        tf.raw_ops.ResourceApplyKerasMomentum(var=w.handle, accum=slot1.handle, lr=lr, grad=g,
                                              momentum=momentum)


def main() -> None:
    print(f"{N} x {N} fp32 layer ({N * N / 1e6:.0f}M parameters), ms per update, median of 3 x 50:")
    for name, fn in (("Adam (ResourceApplyAdam)", adam), ("SGD momentum", sgd_momentum),
                     ("SGD momentum + weight decay", sgd_momentum_weight_decay)):
        fn(tf.constant(2))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn(tf.constant(50))
            times.append((time.perf_counter() - t0) / 50)
        print(f"  {name:30s} {1000 * statistics.median(times):6.2f} ms")


if __name__ == "__main__":
    main()
