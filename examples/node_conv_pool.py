"""A conv block type: conv_pool, a same-padded convolution, ReLU and a 2x2 average pool in one FF
block (its goodness the mean of squares). Its keys are filters (required), kernel_size and th_pos,
type-checked like a built-in node's; its shape and FLOP rules let ffrun check the network before a
run folder is made and count its FLOPs.

    ffrun plugins=[node_conv_pool] debug=tiny 'model.layers={c1: {type: conv_pool, filters: 8, inputs: [input]},
      flat: {type: flatten, inputs: [c1]}, softmax: {type: softmax, inputs: [flat], optimizer: {class_name: Adam}}}'
"""
from ffrun.api import ConfigError, FFConv2D, node_type


def conv_pool_shape(where, x, fed, spec, classes):
    (h, w, c), k, filters = x, spec.get("kernel_size", 3), spec["filters"]
    if min(h, w) < 2:
        raise ConfigError(f"{where}: its 2x2 pool needs a map of at least 2x2, it is fed {h}x{w}")
    return (h // 2, w // 2, filters), k * k * c * filters + filters     # output shape, number of weights


def conv_pool_flop(x, out, spec):
    (h, w, c), k = x, spec.get("kernel_size", 3)
    return 2.0 * h * w * k * k * c * spec["filters"]                    # the convolution's multiply-adds


@node_type("conv_pool", required=("filters",), optional=("kernel_size", "th_pos"), takes="image", gives="image",
           role="ff", shape=conv_pool_shape, flop=conv_pool_flop, integers={"filters": 1, "kernel_size": 1},
           width="filters")
def build_conv_pool(name, p, ctx):
    """A conv FF block: a same-padded convolution, ReLU, a 2x2 average pool; goodness: mean of squares."""
    th = p.get("th_pos", 1.0)
    return FFConv2D(p["filters"], p.get("kernel_size", 3), 1, "same", th, th,
                    ctx.make_optimizer(ctx.model.optimizer, f"model.layers.{name}.optimizer"), name=name,
                    goodness="mean", pool=2, pool_kind="avg", kernel_initializer=ctx.make_initializer(ctx.model.init),
                    dtype=ctx.dtype, num_classes=ctx.num_classes)
