"""The fused conv block step (FFConv2D(fused=True), the default) trains the same weights as calling
the Keras layers under a plain tape (fused=False), to float rounding: every block variant CwComp and
the conv presets use (grouped, pooled, batch-normalized; class and threshold losses).

SGD steps, not Adam: Adam divides each gradient by its own running magnitude, so where a gradient is
near zero (the batch norm's mean subtraction cancels most of a conv bias's gradient) a rounding
difference of 1e-7 becomes a different step of up to the learning rate."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ffrun.core.layers import FFConv2D, Task


def _pair(**kwargs):
    blocks = []
    for fused in (True, False):
        keras.utils.set_random_seed(3)
        blocks.append(FFConv2D(name=f"c_{fused}", fused=fused, optimizer=keras.optimizers.SGD(0.05), **kwargs))
    return blocks


def _train(block, x, y, task, steps):
    block.forward(x[:2])                         # builds the variables eagerly, as TrainMgr.build does
    block.build_optimizer()
    block.set_task(task)
    step = tf.function(lambda xb, yb: block.ff_do_task(xb, yb))
    for i in range(steps):
        step(x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16])
    block.set_task(Task.EVAL)
    # the same variables in the same order, named without the block's own name
    return {f"{i}:{v.path.rsplit('/', 1)[-1]}": v.numpy() for i, v in enumerate(block.layer.variables)}, \
        block.forward(x).numpy()


CASES = {
    "cwcomp grouped, pooled, batchnorm": dict(filters=20, groups=10, pool=2, batchnorm=True, loss="cwc", num_classes=10),
    "cwcomp plain, batchnorm": dict(filters=30, batchnorm=True, loss="pvn", num_classes=10, th_pos=2.0),
    "threshold loss, no batchnorm, pooled": dict(filters=8, pool=2, loss="threshold", th_pos=1.0),
    "threshold loss, strided valid": dict(filters=8, strides=2, padding="valid", loss="threshold"),
    "deeperforward mean activity, no bias, avg pool": dict(filters=20, pool=2, pool_kind="avg", use_bias=False, loss="cwc",
                                                           num_classes=10, class_goodness="mean_activity"),
    # the two blocks are made after the same seed, so their one Dropout layer draws the same masks
    # step by step: the comparison is of the math around the masks (scaling, gradient through them)
    "deeperforward dropout 0.2": dict(filters=20, dropout=0.2, use_bias=False, loss="cwc", num_classes=10,
                                      class_goodness="mean_activity"),
}


@pytest.mark.parametrize("case", CASES)
def test_fused_step_trains_the_weights_of_the_plain_tape_step(case):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((96, 12, 12, 10)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, 96).astype(np.int32))
    fused, plain = _pair(**CASES[case])
    task = Task.TRAIN_POS
    w_fused, out_fused = _train(fused, x, y, task, steps=6)
    w_plain, out_plain = _train(plain, x, y, task, steps=6)
    assert w_fused.keys() == w_plain.keys()
    for name in w_plain:
        np.testing.assert_allclose(w_fused[name], w_plain[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(out_fused, out_plain, rtol=2e-5, atol=2e-5)
    # and training did move the weights: the comparison is not between two untouched inits
    keras.utils.set_random_seed(3)
    untouched = FFConv2D(name="c_init", **CASES[case])
    untouched.forward(x[:2])
    kernel = [v for v in untouched.layer.variables if v.path.endswith("kernel")][0].numpy()
    assert not np.allclose(kernel, w_plain[next(k for k in w_plain if k.endswith("kernel"))], atol=1e-4)


def test_fused_negative_and_inference_passes_match_too():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((64, 10, 10, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, 64).astype(np.int32))
    fused, plain = _pair(filters=6, pool=2, batchnorm=True, loss="threshold", th_pos=0.5)
    w_fused, out_fused = _train(fused, x, y, Task.TRAIN_NEG, steps=4)
    w_plain, out_plain = _train(plain, x, y, Task.TRAIN_NEG, steps=4)
    for name in w_plain:
        np.testing.assert_allclose(w_fused[name], w_plain[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(out_fused, out_plain, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("per_group", [2, 12])
def test_both_forms_of_a_grouped_convolution_give_the_same_output_and_kernel_gradient(per_group):
    """GroupedConv2D picks the block-diagonal form for few input channels per group and one
    convolution per group otherwise: the two agree, forward and kernel gradient."""
    from ffrun.core.layers import GroupedConv2D
    rng = np.random.default_rng(2)
    groups = 4
    conv = GroupedConv2D(8, 3, padding="same", groups=groups)
    conv.build((None, 9, 9, per_group * groups))
    x = tf.constant(rng.standard_normal((5, 9, 9, per_group * groups)).astype(np.float32))
    dy = tf.constant(rng.standard_normal((5, 9, 9, 8)).astype(np.float32))
    kernel = tf.constant(conv.kernel.numpy())
    results = []
    for op in (conv.split_op, conv.block_diagonal_op):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            out = op(x, kernel)
        results.append((out.numpy(), tape.gradient(out, kernel, output_gradients=dy).numpy()))
    (out_a, grad_a), (out_b, grad_b) = results
    np.testing.assert_allclose(out_a, out_b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_a, grad_b, rtol=1e-5, atol=1e-5)
    assert grad_a.shape == (3, 3, per_group, 8)       # Keras' grouped layout, whichever form ran
