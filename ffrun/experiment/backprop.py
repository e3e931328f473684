"""mode=bp: the same MLP (same widths, same data, softmax on top) built for end-to-end backprop,
so every FF result has a same-architecture backprop figure beside it (trained by run/baseline.py)."""
from __future__ import annotations

from dataclasses import replace

import keras

from ffrun.errors import ConfigError
from ffrun.experiment import protocols
from ffrun.experiment.build import load_data, make_initializer, make_optimizer, per_layer
from ffrun.experiment.datasets import ImageSplits
from ffrun.experiment.schema import FFRunConfig


def baseline_data(spec: FFRunConfig) -> ImageSplits:
    """The FF run's data, scored on the classes its protocol scores (five_digits: its 5 positive
    classes, with the FF net's labels; other protocols: all classes). With ``eval_on=test`` the
    per-epoch set (``x_val``) is the test set, as in the FF runs."""
    splits = load_data(spec.data)
    protocol = protocols.make(spec.protocol, splits, supervised=True, seed=spec.seed) \
        if spec.protocol.name == "five_digits" else None
    classes = protocol.baseline_classes if protocol is not None else (lambda x, y: (x, y))
    if spec.eval_on == "validation" and not len(splits.x_val):
        raise ConfigError("eval_on=validation needs data.val_size > 0")
    per_epoch = (splits.x_test, splits.y_test) if spec.eval_on == "test" else (splits.x_val, splits.y_val)
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = (classes(*pair) for pair in (
        (splits.x_train, splits.y_train), per_epoch, (splits.x_test, splits.y_test)))
    return replace(splits, x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val, x_test=x_te, y_test=y_te,
                   num_classes=protocol.num_classes if protocol is not None else splits.num_classes)


def build_mlp(spec: FFRunConfig, input_dim: int, num_classes: int) -> keras.Model:
    m = spec.model
    units = per_layer(m.units, m.num_layers, "units")
    dtype = "mixed_bfloat16" if m.precision == "bf16" else None
    inputs = keras.Input((input_dim,))
    h = inputs
    dropout = spec.mode.dropout
    for i, u in enumerate(units):
        # backprop uses the plain activation: a full-gradient ReLU is an FF training device
        h = keras.layers.Dense(u, activation=m.activation.removesuffix("_full_grad"), kernel_initializer=make_initializer(m.init),
                               name=f"dense{i + 1}", dtype=dtype)(h)
        if dropout:   # the regularizer of the paper's backprop figures; FF layers have none
            h = keras.layers.Dropout(dropout, name=f"dropout{i + 1}")(h)
    out = keras.layers.Dense(num_classes, name="softmax", dtype="float32")(h)
    model = keras.Model(inputs, out, name="bp_mlp")
    # no XLA: the FF graphs do not use it either, and it showed no gain on this CPU
    model.compile(optimizer=make_optimizer(spec.mode.optimizer, "mode.optimizer"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")], jit_compile=False)
    return model
