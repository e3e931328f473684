"""Forward-Forward layers.

There is no Model: a network is a dict of these layers plus a sequence function that wires them.
Each layer wraps a Keras layer (composition, not inheritance), owns its optimizer and metrics, and
does one task per call of ``ff_do_task(x, y)``; the task is set from outside (by ``TrainMgr``)
before a graph is traced, so every compiled graph bakes in one task per layer.
"""
from __future__ import annotations

import enum
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ffrun.core import losses


class Task(enum.Enum):
    TRANSFORM = "transform"      # plain forward
    TRAIN_POS = "train_pos"      # forward, positive loss, one step on this layer's weights
    TRAIN_NEG = "train_neg"      # forward, negative loss, one step on this layer's weights
    TRAIN_PAIR = "train_pair"    # batch = [positives; negatives] (equal halves), one step on both
    # batch = [positives; negatives; the positives with the neutral label] (equal thirds): the FF
    # layers step on the first two thirds and the softmax readouts on the last, in one step, as
    # Hinton's code and its PyTorch port train the neutral-label classifier
    TRAIN_PAIR_READOUT = "train_pair_readout"
    EVAL = "eval"                # forward and update this layer's metrics
    EVAL_ALL_LABELS = "eval_all_labels"    # each sample arrives once per candidate label (sample-major)


TRAIN_TASKS = (Task.TRAIN_POS, Task.TRAIN_NEG, Task.TRAIN_PAIR, Task.TRAIN_PAIR_READOUT)


@tf.custom_gradient
def relu_full_grad(x: tf.Tensor):
    """ReLU forward, identity backward: the gradient also reaches units that are off, so no unit
    dies for good (the activation of the best-known PyTorch port of Hinton's recipe)."""
    return tf.nn.relu(x), lambda dy: dy


ACTIVATIONS = {"relu_full_grad": relu_full_grad}


def _part(x: tf.Tensor, parts: int, index: int) -> tf.Tensor:
    """Rows of the ``index``-th of ``parts`` equal parts of a batch."""
    n = tf.shape(x)[0] // parts
    return x[index * n:(index + 1) * n]


class BaseFFLayer:
    """A Keras layer plus the seven FF tasks (``Task``). Subclasses override the task methods they need;
    by default every task is a plain forward pass."""

    #: the training tasks in which this layer changes its weights
    trains_on: frozenset[Task] = frozenset()
    #: forward FLOPs of one sample (multiply-adds x 2), set by the graph builder from its node type's
    #: FLOP rule; None: not known, and FLOP counting refuses to count the layer as 0
    forward_flop: float | None = None
    #: the names of its metrics that hold a training loss (per-sample means), which the divergence
    #: check (``TrainMgr.check_losses``) holds under ``max_loss``
    training_losses: tuple[str, ...] = ()

    def __init__(self, layer: keras.layers.Layer | None, name: str,
                 optimizer: keras.optimizers.Optimizer | None = None, l2: float = 0.0):
        self.name = name
        self.layer = layer
        self.optimizer = optimizer
        self.l2 = float(l2)
        self.task = Task.TRANSFORM
        self.positive = True          # whether the data of an EVAL pass is positive
        self.metrics: dict[str, keras.metrics.Metric] = {}

    #: rows this layer makes of each input row under EVAL_ALL_LABELS (the overlay: one per label)
    all_label_rows: int = 1

    # --- task plumbing -----------------------------------------------------------------
    def set_task(self, task: Task, positive: bool = True) -> None:
        self.task = task
        self.positive = positive

    def ff_do_task(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        method = {
            Task.TRANSFORM: self.transform,
            Task.TRAIN_POS: self.train_pos,
            Task.TRAIN_NEG: self.train_neg,
            Task.TRAIN_PAIR: self.train_pair,
            Task.TRAIN_PAIR_READOUT: self.train_pair_readout,
            Task.EVAL: self.evaluate,
            Task.EVAL_ALL_LABELS: self.evaluate_all_labels,
        }[self.task]
        return method(x, y)

    def forward(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The layer's output; ``training`` selects batch statistics where the layer has any."""
        return self.layer(x, training=training) if self.layer is not None else x

    def transform(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.forward(x)

    def train_pos(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.transform(x, y)

    def train_neg(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.transform(x, y)

    def train_pair(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.transform(x, y)

    def train_pair_readout(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.transform(x, y)

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.transform(x, y)

    def evaluate_all_labels(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.transform(x, y)

    # --- weights and optimizer ---------------------------------------------------------
    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return list(self.layer.trainable_variables) if self.layer is not None else []

    def build_optimizer(self) -> None:
        """Create the optimizer's slots eagerly: variables cannot be created inside a graph."""
        if self.optimizer is not None and self.trainable_variables:
            self.optimizer.build(self.trainable_variables)

    def _step(self, tape: tf.GradientTape, loss: tf.Tensor) -> None:
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        if self.l2:
            # Coupled weight decay, as torch.optim.SGD(weight_decay=...): the gradient of
            # 0.5 * l2 * |w|^2 added directly, without computing the penalty itself.
            grads = [g + self.l2 * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))

    # --- metrics -----------------------------------------------------------------------
    def reset_metrics(self) -> None:
        for m in self.metrics.values():
            m.reset_state()

    def metric_results(self) -> dict[str, float]:
        """Metrics that saw data since the last reset (others are absent, not zero)."""
        out = {}
        for key, m in self.metrics.items():
            seen = m.has_data() if hasattr(m, "has_data") else float(m.count.numpy()) > 0
            if seen:
                out[key] = float(m.result().numpy())
        return out

    def metric_variables(self) -> list[tf.Variable]:
        return [v for m in self.metrics.values() for v in m.variables]


class FFLocalLayer(BaseFFLayer):
    """A layer trained by its own FF loss on its goodness: no gradient reaches the layers before
    it. Holds what every FF layer shares: thresholds, the goodness reduction, the loss (by name,
    ``ffrun.core.losses.LOSSES``), the metrics, the evaluation, and plain tape steps for the
    positive, negative and paired passes. FFDense overrides the steps with cheaper exact ones;
    FFConv2D uses these as they are. Goodness is over every unit of a sample (for a conv map: all
    positions and channels, per image)."""

    trains_on = frozenset(TRAIN_TASKS)

    def __init__(self, layer: keras.layers.Layer, name: str, optimizer: keras.optimizers.Optimizer | None, *,
                 th_pos: float, th_neg: float, goodness: str, loss: losses.FFLoss | str, l2: float,
                 num_classes: int | None = None, units: int | None = None, class_goodness: str = "mean_square"):
        if goodness not in losses.GOODNESS:
            raise ValueError(f"goodness must be one of {', '.join(losses.GOODNESS.in_order())}, got {goodness!r}")
        super().__init__(layer, name, optimizer or keras.optimizers.Adam(1e-4), l2=l2)
        self.th_pos = float(th_pos)
        self.th_neg = float(th_neg)
        self.reduction = goodness
        self.loss = losses.make_loss(loss) if isinstance(loss, str) else loss
        self.training_losses = self.loss.train_metrics
        self.num_classes = num_classes
        if class_goodness not in losses.CLASS_GOODNESS:
            raise ValueError(f"class_goodness must be one of {', '.join(losses.CLASS_GOODNESS.in_order())}, "
                             f"got {class_goodness!r}")
        self.class_goodness = class_goodness
        if self.loss.competitive:   # one group of units per class: trained on labels, no negatives
            if num_classes is None or num_classes < 2:
                raise ValueError(f"loss {self.loss.name!r} needs num_classes >= 2, got {num_classes!r}")
            if units is not None and units % num_classes:
                raise ValueError(f"loss {self.loss.name!r} splits the units into one group per class: "
                                 f"{units} is not divisible by {num_classes} classes")
            self.trains_on = frozenset({Task.TRAIN_POS})
            self.metrics = {k: keras.metrics.Mean(name=k) for k in ("loss", "val_loss")}
            self.metrics["acc"] = keras.metrics.Accuracy(name="acc")
            return
        self.metrics = {name: keras.metrics.Mean(name=name) for name in self.loss.train_metrics}
        if not self.loss.needs_pairs:   # evaluation data is not paired: per-polarity losses only
            self.metrics |= {name: keras.metrics.Mean(name=name) for name in ("val_loss_pos", "val_loss_neg")}
        self.metrics |= {
            "goodness_pos": keras.metrics.Mean(name="goodness_pos"),
            "goodness_neg": keras.metrics.Mean(name="goodness_neg"),
            "separation": losses.GoodnessSeparation(name="separation"),
        }

    def _goodness(self, h, y, positive: bool):
        flat = tf.reshape(h, [tf.shape(h)[0], -1]) if h.shape.rank > 2 else h
        return losses.goodness(flat, self.reduction)

    def train_pos(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.loss.competitive:
            return self._class_step(x, y)
        return self._polar_step(x, y, True)

    def train_neg(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self._polar_step(x, y, False)

    def _class_step(self, x, y):
        """One step of a class-goodness loss (CwComp): every image is a positive of its label."""
        with tf.GradientTape() as tape:
            h = self.forward(x, training=True)
            loss = self.loss.classes(losses.class_goodness(h, self.num_classes, self.class_goodness), y, self.th_pos)
        self._step(tape, loss)
        self.metrics["loss"].update_state(loss)
        return h

    def _evaluate_classes(self, x, y):
        h = self.forward(x)
        g = losses.class_goodness(h, self.num_classes, self.class_goodness)
        n = tf.cast(tf.shape(g)[0], tf.float32)
        self.metrics["val_loss"].update_state(self.loss.classes(g, y, self.th_pos), sample_weight=n)
        self.metrics["acc"].update_state(tf.cast(y, tf.int32), tf.argmax(g, axis=1, output_type=tf.int32))
        return h

    def _polar_step(self, x, y, positive: bool):
        with tf.GradientTape() as tape:
            h = self.forward(x, training=True)
            g = self._goodness(h, y, positive)
            loss = self.loss.positive(g, self.th_pos) if positive else self.loss.negative(g, self.th_neg)
        self._step(tape, loss)
        self.metrics["loss_pos" if positive else "loss_neg"].update_state(loss)
        return h

    def train_pair(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self._pair_step(x, y, parts=2)

    def train_pair_readout(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self._pair_step(x, y, parts=3)

    def _pair_step(self, x, y, parts: int):
        """One step on [positives; negatives] (parts=2), or [positives; negatives; neutral-label
        positives] (parts=3: the last third has no FF loss, it only passes on to the readouts)."""
        n = tf.shape(x)[0] // parts
        with tf.GradientTape() as tape:
            h = self.forward(x, training=True)
            g = self._goodness(h, y, True)
            loss, terms = self.loss.pair(g[:n], g[n:2 * n], self.th_pos, self.th_neg)
        self._step(tape, loss)
        for name, value in terms.items():
            self.metrics[name].update_state(value)
        return h

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.loss.competitive:
            return self._evaluate_classes(x, y)
        h = self.forward(x)
        g = self._goodness(h, y, self.positive)
        suffix = "pos" if self.positive else "neg"
        if not self.loss.needs_pairs:
            th = self.th_pos if self.positive else self.th_neg
            loss = (self.loss.positive if self.positive else self.loss.negative)(g, th)
            self.metrics[f"val_loss_{suffix}"].update_state(loss, sample_weight=tf.cast(tf.shape(g)[0], tf.float32))
        self.metrics[f"goodness_{suffix}"].update_state(g)
        # separation is P(a positive scores better than a negative): with the sign-flipped loss a
        # positive scores better by its LOWER goodness, so the two histograms swap roles
        self.metrics["separation"].update_state(g, positive=self.positive == self.loss.positive_high)
        return h



class FFDense(FFLocalLayer):
    """Dense + ReLU trained by the FF objective on its own goodness.

    ``routing`` (classes x units, 0/1) restricts the goodness of a sample to the units its label
    selects; ``neg_routing="complement"`` makes negatives use the other units (unsup splitting).
    ``peer_norm`` > 0 adds Hinton's peer-normalization term on positive activity.
    """

    def __init__(self, units: int, th_pos: float = 0.1, th_neg: float = 0.1,
                 optimizer: keras.optimizers.Optimizer | None = None, *, name: str = "ffdense",
                 goodness: str = "sum", activation: str = "relu",
                 kernel_initializer: Any = "glorot_uniform", routing: Any = None,
                 neg_routing: str = "same", peer_norm: float = 0.0, peer_momentum: float = 0.9,
                 peer_init: float = 0.0,
                 l2: float = 0.0, dtype: Any = None, split_gradient: bool = True,
                 loss: losses.FFLoss | str = "threshold", num_classes: int | None = None, xla: bool = False):
        if neg_routing not in ("same", "complement"):
            raise ValueError(f"neg_routing must be 'same' or 'complement', got {neg_routing!r}")
        dense = keras.layers.Dense(units, activation=ACTIVATIONS.get(activation, activation),
                                   kernel_initializer=kernel_initializer,
                                   bias_initializer="zeros", name=name, dtype=dtype)
        super().__init__(dense, name, optimizer, th_pos=th_pos, th_neg=th_neg, goodness=goodness, loss=loss, l2=l2,
                         num_classes=num_classes, units=units)
        self.units = units
        self.routing = None if routing is None else tf.constant(routing, tf.float32)
        self.neg_routing = neg_routing
        # Half-split routing (rmwkwok's A/B: a class owns units [0, U/2) or [U/2, U)) lets a step
        # skip the weight gradient of the half a sample does not own: it is exactly zero.
        self.owns_first_half = _half_split(routing) if split_gradient else None
        self.peer_norm = float(peer_norm)
        self.peer_momentum = float(peer_momentum)
        self.running_mean = tf.Variable(tf.fill([units], float(peer_init)), trainable=False, name=f"{name}_peer_mean") \
            if self.peer_norm else None
        # XLA on the two memory-bound parts of a step (see _step_on_z); the compiled functions are
        # made once per layer and kind of step, and XLA compiles each once per batch shape.
        self.xla = bool(xla)
        self._xla_fns: dict[tuple, Any] = {}

    def _mask(self, y: tf.Tensor, positive: bool) -> tf.Tensor | None:
        if self.routing is None:
            return None
        mask = tf.gather(self.routing, y)
        if not positive and self.neg_routing == "complement":
            mask = 1.0 - mask
        return mask

    def _goodness(self, h, y, positive: bool):
        return losses.goodness(h, self.reduction, self._mask(y, positive))

    def _peer_loss(self, h, n_pos=None):
        """Peer normalization on the mean activity of the positive rows: all of ``h``, or its
        first ``n_pos`` rows."""
        if not self.peer_norm:
            return 0.0
        h = tf.cast(h, tf.float32)
        if n_pos is None:
            mean_activity = tf.reduce_mean(h, axis=0)
        else:
            # A product with a row selector, not h[:n_pos]: under a tape every slice of h makes TF
            # build a zero-filled gradient of the whole batch (StridedSliceGrad), which profiled as
            # 20% of a paper-recipe step.
            rows = tf.range(tf.shape(h)[0])
            select = tf.cast(rows < n_pos, tf.float32) / tf.cast(n_pos, tf.float32)
            mean_activity = tf.linalg.matvec(h, select, transpose_a=True)
        running = self.peer_momentum * self.running_mean + (1.0 - self.peer_momentum) * mean_activity
        self.running_mean.assign(tf.stop_gradient(running))
        return self.peer_norm * losses.peer_normalization_loss(running)

    def train_pos(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.loss.competitive:
            return self._class_step(x, y)
        if self.owns_first_half is not None and not self.peer_norm:
            h, loss = self._half_split_step(x, y, True)
        else:
            with tf.GradientTape() as tape:
                h = self.layer(x)
                loss = self.loss.positive(self._goodness(h, y, True), self.th_pos)
                total = loss + self._peer_loss(h)
            self._step(tape, total)
        self.metrics["loss_pos"].update_state(loss)
        return h

    def train_neg(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.owns_first_half is not None:
            h, loss = self._half_split_step(x, y, False)
        else:
            with tf.GradientTape() as tape:
                h = self.layer(x)
                loss = self.loss.negative(self._goodness(h, y, False), self.th_neg)
            self._step(tape, loss)
        self.metrics["loss_neg"].update_state(loss)
        return h

    def _forward_z(self, x):
        """The pre-activations in the layer's compute dtype, as Keras' Dense computes them."""
        dense = self.layer
        dtype = dense.compute_dtype
        x = tf.cast(x, dtype)
        return x, tf.matmul(x, tf.cast(dense.kernel, dtype)) + tf.cast(dense.bias, dtype)

    def _step_on_z(self, x, z, key, loss_of_h, loss_args=(), kernel_grad=None):
        """One optimizer step where the tape covers only the element-wise work after z = xW + b.

        ``loss_of_h(h, *loss_args)`` returns (total loss, outputs to pass on); ``kernel_grad(x, dz)``
        computes the kernel's gradient (default x^T dz) so callers can skip rows or units whose
        gradient is known to be zero. Returns (h, outputs).

        With ``xla`` the two parts around the weight-gradient matmul are each one XLA call: the
        element-wise part (activation, goodness, loss, peer normalization, dz: ~40 small ops,
        which XLA fuses into a few loops) and the update (bias gradient, weight decay and the
        optimizer kernel: one pass over the weights instead of three). It is not faster on a quiet
        machine: paper_small's pos+neg pass, alternated in one process, took 11.70 s without and
        12.26 s with it (medians of 6 rounds, ``pass_breakdown.py --compare model.xla=false,true``);
        only while other jobs shared the two cores was it faster (15.3 -> 12.6 s). Hence off by
        default. It costs 6 compilations, ~5 s once per process. The matmuls stay TensorFlow's (oneDNN):
        XLA's CPU dot was slower (readout pass under a whole-step XLA call: 1.60 s against 1.13 s).
        Results match the plain step to ~1e-7 per step (tests), but paper_small's early steps
        amplify any rounding difference (a 1e-7 relative nudge of one kernel grows to 1e-4 in 20
        steps), so whole epochs are not bit-comparable. ``key`` names the kind of step: the compiled function of a
        key is made from the first ``loss_of_h`` given with it, so ``loss_of_h`` may depend only
        on its arguments and on constants that ``key`` determines."""
        h, dz, outputs = self._compiled(("elementwise",) + key, lambda z, *args: self._elementwise(z, loss_of_h, args))(
            z, *loss_args)
        grad_kernel = kernel_grad(x, dz) if kernel_grad is not None else tf.matmul(x, dz, transpose_a=True)
        self._compiled(("update",), self._update)(grad_kernel, dz)
        return h, outputs

    def _elementwise(self, z, loss_of_h, args):
        with tf.GradientTape() as tape:
            tape.watch(z)
            h = self.layer.activation(z)
            total, outputs = loss_of_h(h, *args)
        return h, tape.gradient(total, z), outputs

    def _update(self, grad_kernel, dz):
        grads = [tf.cast(grad_kernel, tf.float32), tf.cast(tf.reduce_sum(dz, 0), tf.float32)]
        variables = [self.layer.kernel, self.layer.bias]
        if self.l2:
            grads = [g + self.l2 * v for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))
        return tf.constant(0)    # an XLA function needs an output; nothing reads it

    def _compiled(self, key: tuple, fn):
        """``fn`` itself, or with ``xla`` its XLA-compiled function, made once per ``key``."""
        if not self.xla:
            return fn
        if key not in self._xla_fns:
            self._xla_fns[key] = tf.function(fn, jit_compile=True, reduce_retracing=True)
        return self._xla_fns[key]

    def _half_split_step(self, x, y, positive: bool):
        """The same step as the tape's, with half the weight-gradient work.

        Under half-split routing row i's loss depends only on the half of the units it owns, so
        its pre-activation gradient is zero on the other half and the kernel gradient splits into
        two half-width products: X_A^T dZ_A[:, :U/2] and X_B^T dZ_B[:, U/2:]."""
        first = tf.gather(self.owns_first_half, y)
        if not positive and self.neg_routing == "complement":
            first = tf.logical_not(first)
        rows_a, rows_b = tf.where(first)[:, 0], tf.where(tf.logical_not(first))[:, 0]
        half = self.units // 2

        def loss_of_h(h, y):
            g = self._goodness(h, y, positive)
            loss = self.loss.positive(g, self.th_pos) if positive else self.loss.negative(g, self.th_neg)
            return loss, loss

        def kernel_grad(x, dz):
            return tf.concat([
                tf.matmul(tf.gather(x, rows_a), tf.gather(dz, rows_a)[:, :half], transpose_a=True),
                tf.matmul(tf.gather(x, rows_b), tf.gather(dz, rows_b)[:, half:], transpose_a=True)], axis=1)

        x, z = self._forward_z(x)
        return self._step_on_z(x, z, ("half_split", positive), loss_of_h, (y,), kernel_grad)

    def _pair_step(self, x, y, parts: int):
        """One step on [positives; negatives] (parts=2), or on [positives; negatives; neutral-label
        positives] (parts=3) where the last third only passes through to the readouts.

        Goodness is computed for every row and then split: slicing the activations under the
        tape would cost a zero-filled gradient of the whole batch per slice."""
        n = tf.shape(x)[0] // parts
        y_pos, y_neg = y[:n], y[n:2 * n]
        masks = None
        if self.routing is not None:
            m_pos, m_neg = self._mask(y_pos, True), self._mask(y_neg, False)
            masks = tf.concat([m_pos, m_neg] + [m_pos] * (parts - 2), axis=0)

        def loss_of_h(h, *masks):
            n = tf.shape(h)[0] // parts
            g = losses.goodness(h, self.reduction, masks[0] if masks else None)
            loss, terms = self.loss.pair(g[:n], g[n:2 * n], self.th_pos, self.th_neg)
            return loss + self._peer_loss(h, n), terms

        def kernel_grad(x, dz):   # the neutral rows have no FF loss: their gradient is zero
            return tf.matmul(x[:2 * n], dz[:2 * n], transpose_a=True) if parts > 2 \
                else tf.matmul(x, dz, transpose_a=True)

        x, z = self._forward_z(x)
        h, terms = self._step_on_z(x, z, ("pair", parts), loss_of_h, () if masks is None else (masks,), kernel_grad)
        for name, value in terms.items():
            self.metrics[name].update_state(value)
        return h

def _half_split(routing: Any) -> tf.Tensor | None:
    """Per class, whether it owns the first half of the units, if ``routing`` (classes x units)
    gives every class exactly the first or the second half; otherwise None."""
    if routing is None:
        return None
    r = np.asarray(routing, np.float32)
    half = r.shape[1] // 2
    if r.shape[1] % 2 or half == 0:
        return None
    first = np.zeros(r.shape[1], np.float32)
    first[:half] = 1.0
    owns_first = (r == first).all(axis=1)
    owns_second = (r == 1.0 - first).all(axis=1)
    if not (owns_first | owns_second).all():
        return None
    return tf.constant(owns_first)


class GroupedConv2D(keras.layers.Conv2D):
    """Keras' Conv2D with ``groups`` > 1 (the same kernel layout and results), computed by whichever
    exact form is faster at its shape. TensorFlow's own grouped kernel is pathological on CPU: at
    CwComp's 240 -> 480 channels, 14 x 14, groups 10, batch 128 it measured 351 ms forward and 27.6 s
    forward + kernel gradient, against 165 ms and 0.40 s split per group (Xeon (AMX), 2026-11-30,
    other jobs sharing the cores). Of the two exact forms (benchmarks/conv_breakdown.py --variants,
    Xeon (AMX), 2026-12-06, forward + kernel gradient per batch of 128):

    - one convolution per group (split the input, concatenate the outputs) wins when each group has
      many input channels: CwComp's conv4 (24 per group) 59.1 ms, against 317.3 ms for
    - one convolution over all channels with a block-diagonal kernel (its zero blocks add exact
      zeros; ``groups`` times the FLOPs, no split or concat), which wins when each group has few:
      CwComp's conv2 (2 per group) 24.9 ms, against 28.7 ms split."""

    #: input channels per group below which the block-diagonal form is used (measured: at 2 it takes
    #: 0.87x the time of the split, at 24 5.4x)
    BLOCK_DIAGONAL_BELOW = 8

    def convolution_op(self, inputs, kernel):
        if kernel.shape[-2] < self.BLOCK_DIAGONAL_BELOW:
            return self.block_diagonal_op(inputs, kernel)
        return self.split_op(inputs, kernel)

    def split_op(self, inputs, kernel):
        parts = zip(tf.split(inputs, self.groups, axis=-1), tf.split(kernel, self.groups, axis=-1))
        return tf.concat([tf.nn.conv2d(x, k, self.strides, self.padding.upper(), dilations=self.dilation_rate)
                          for x, k in parts], axis=-1)

    def block_diagonal_op(self, inputs, kernel):
        per = kernel.shape[-2]
        cin = per * self.groups
        full = tf.concat([tf.pad(k, [[0, 0], [0, 0], [g * per, cin - (g + 1) * per], [0, 0]])
                          for g, k in enumerate(tf.split(kernel, self.groups, axis=-1))], axis=-1)
        return tf.nn.conv2d(inputs, full, self.strides, self.padding.upper(), dilations=self.dilation_rate)


#: pool kind -> (its Keras layer, its TF op): the Keras and the fused paths of FFConv2D
POOLS = {"max": (keras.layers.MaxPooling2D, tf.nn.max_pool2d), "avg": (keras.layers.AveragePooling2D, tf.nn.avg_pool2d)}


class FFConv2D(FFLocalLayer):
    """Conv2D + ReLU trained by its own FF loss on the goodness of its whole output map: per image,
    the sum or mean of the squared activities over every position and channel (Hinton 2022,
    sec. 6, trains his locally connected nets on per-layer goodness over all units; CwComp,
    Papachristodoulou et al. 2024, averages squared activities over positions). Input and output
    are images (N, H, W, C).

    CwComp's block is also this layer: ``groups`` (a grouped convolution; with a class loss and
    ``groups`` = the number of classes, class k's channels see only class k's channels of the layer
    before), ``pool`` (max pooling of that size after the ReLU) and ``batchnorm`` (after the pool),
    all inside the layer because the loss reads the block's final output (CwComp: conv -> ReLU ->
    pool -> BatchNorm, goodness on the normalized map).

    DeeperForward's block (Sun et al., ICLR 2025) uses ``use_bias=False``, ``dropout`` (a rate,
    applied right after the activation in training steps only, so the goodness and the next layer
    both read the dropped-out map as in their code) and ``class_goodness="mean_activity"``;
    ``pool_kind="avg"`` makes the in-block pool an average (a max pool raises the mean activity)."""

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1, padding: str = "same",
                 th_pos: float = 1.0, th_neg: float | None = None,
                 optimizer: keras.optimizers.Optimizer | None = None, *, name: str = "ffconv",
                 goodness: str = "mean", activation: str = "relu", kernel_initializer: Any = "glorot_uniform",
                 loss: losses.FFLoss | str = "threshold", l2: float = 0.0, dtype: Any = None,
                 groups: int = 1, pool: int = 0, batchnorm: bool = False, num_classes: int | None = None,
                 fused: bool = True, pool_kind: str = "max", dropout: float = 0.0, use_bias: bool = True,
                 class_goodness: str = "mean_square"):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        for key, value, low in (("filters", filters, 1), ("kernel_size", kernel_size, 1), ("strides", strides, 1),
                                ("groups", groups, 1), ("pool", pool, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if filters % groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups})")
        for key, value in (("batchnorm", batchnorm), ("use_bias", use_bias)):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
        if pool_kind not in POOLS:
            raise ValueError(f"pool_kind must be one of {', '.join(POOLS)}, got {pool_kind!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}")
        conv = (GroupedConv2D if groups > 1 else keras.layers.Conv2D)(
                                   filters, kernel_size, strides=strides, padding=padding, groups=groups,
                                   activation=ACTIVATIONS.get(activation, activation), use_bias=use_bias,
                                   kernel_initializer=kernel_initializer, name=name, dtype=dtype)
        block = [conv]
        # one Keras Dropout layer serves both paths: the fused forward calls it too, so the two paths
        # draw the same masks from its one seed generator and tests/test_conv_step.py can compare them
        self.dropout = keras.layers.Dropout(float(dropout), name=f"{name}_dropout", dtype=dtype) if dropout else None
        if self.dropout is not None:
            block.append(self.dropout)
        if pool:
            block.append(POOLS[pool_kind][0](pool, name=f"{name}_pool", dtype=dtype))
        self.bn = None
        if batchnorm:
            # PyTorch's BatchNorm2d as CwComp sets it (momentum 0.1 there is 0.9 in Keras' convention;
            # eps 1e-4). Batch statistics in training steps, running statistics otherwise.
            self.bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-4, name=f"{name}_bn", dtype=dtype)
            block.append(self.bn)
        layer = conv if len(block) == 1 else keras.Sequential(block, name=f"{name}_block")
        self.conv, self.pool, self.pool_kind, self.fused = conv, pool, pool_kind, bool(fused)
        # A max pool commutes with a per-channel bias and a ReLU (both non-decreasing: the max of
        # relu(z + b) over a window is relu(max(z) + b)), so the fused forward pools first and adds
        # the bias and the ReLU on a map pool^2 times smaller, forward and backward. The gradient
        # reaches the same position: the window's max, or nothing where the ReLU is off. Not with
        # dropout (its mask is per position) nor relu_full_grad (its gradient passes where relu's
        # does not).
        self.pool_first = bool(pool) and pool_kind == "max" and not dropout and activation == "relu"
        super().__init__(layer, name, optimizer, th_pos=th_pos, th_neg=th_pos if th_neg is None else th_neg,
                         goodness=goodness, loss=loss, l2=l2, num_classes=num_classes, units=filters,
                         class_goodness=class_goodness)
        if groups > 1 and self.loss.competitive and groups % self.num_classes and self.num_classes % groups:
            raise ValueError(f"groups ({groups}) do not line up with the {self.num_classes} class groups")
        self.filters = filters

    def forward(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The block's output, computed from the Keras layers' own variables with the same math as
        calling them, but in fewer passes over the maps: ``fused`` runs the batch norm as ONE
        FusedBatchNormV3 (forward and gradient) instead of Keras' unfused moments, normalize, scale
        and shift, each a pass over the map and another in the gradient. The weights it trains match
        the Keras layers' to float rounding (tests/test_conv_step.py). The first call (building the
        variables, eagerly) goes through Keras."""
        if not self.fused or not self.layer.built:
            return super().forward(x, training)
        conv = self.conv
        dtype = conv.compute_dtype
        h = conv.convolution_op(tf.cast(x, dtype), tf.cast(conv.kernel, dtype))
        if self.pool_first:
            h = tf.nn.max_pool2d(h, self.pool, self.pool, "VALID")
        if conv.use_bias:
            # where no pool comes first, TensorFlow's graph optimizer runs conv + bias + ReLU as one
            # oneDNN convolution (its remapper log: "Fuse Conv2D with BiasAdd and Relu")
            h = h + tf.cast(conv.bias, dtype)
        h = conv.activation(h)
        if self.dropout is not None:
            h = self.dropout(h, training=training)
        if self.pool and not self.pool_first:
            h = POOLS[self.pool_kind][1](h, self.pool, self.pool, "VALID")
        if self.bn is not None:
            h = self._batchnorm(h, training)
        return h

    def _batchnorm(self, h: tf.Tensor, training: bool) -> tf.Tensor:
        """Keras' BatchNormalization (float32 inside, batch statistics and a moving-average update in
        training, moving statistics otherwise) as one fused kernel."""
        bn, dtype = self.bn, h.dtype
        h = tf.cast(h, tf.float32)
        if training:
            out, mean, var = tf.raw_ops.FusedBatchNormV3(
                x=h, scale=bn.gamma, offset=bn.beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
                epsilon=bn.epsilon, is_training=True)[:3]
            # the kernel returns the variance with Bessel's correction (for running averages); Keras
            # averages the plain batch variance it normalized with
            n = tf.cast(tf.size(h) // tf.shape(h)[-1], tf.float32)
            var = var * (n - 1.0) / n
            bn.moving_mean.assign(bn.moving_mean * bn.momentum + tf.stop_gradient(mean) * (1.0 - bn.momentum))
            bn.moving_variance.assign(bn.moving_variance * bn.momentum + tf.stop_gradient(var) * (1.0 - bn.momentum))
        else:
            out = tf.raw_ops.FusedBatchNormV3(
                x=h, scale=bn.gamma, offset=bn.beta, mean=bn.moving_mean, variance=bn.moving_variance,
                epsilon=bn.epsilon, is_training=False)[0]
        return tf.cast(out, dtype)


class FFPool(BaseFFLayer):
    """Max or average pooling of an image (N, H, W, C); no weights, no loss. ``padding="same"``
    keeps a partial window at an odd edge (a 7x7 map pools to 4x4, as a stride-2 conv with
    padding same shrinks it), averaging only the pixels inside the map."""

    def __init__(self, kind: str = "max", pool_size: int = 2, *, name: str = "pool", padding: str = "valid"):
        if kind not in POOLS:
            raise ValueError(f"pool kind must be one of {sorted(POOLS)}, got {kind!r}")
        if padding not in ("valid", "same"):
            raise ValueError(f"pool padding must be 'valid' or 'same', got {padding!r}")
        super().__init__(POOLS[kind][0](pool_size, padding=padding, name=name), name)


class FFFlatten(BaseFFLayer):
    """(N, H, W, C) -> (N, H*W*C), for the dense layers and readouts after a conv block."""

    def __init__(self, *, name: str = "flatten"):
        super().__init__(None, name)

    def transform(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.reshape(x, [tf.shape(x)[0], -1])


class FFPreNorm(BaseFFLayer):
    """Divides each sample by its length, so the next layer cannot read this layer's goodness.

    ``kind="l2"``: x / (||x|| + eps) (rmwkwok's); ``kind="rms"``: x / (sqrt(mean x^2) + eps) (the paper).
    For an image (N, H, W, C), ``scope="channels"`` normalizes the channel vector at each position,
    ``scope="map"`` the whole map of a sample (what a flat layer's norm is to its units).

    Two kinds standardize, (x - mean) / sqrt(var + 1e-5) with no affine (PyTorch's layer_norm and
    group_norm, as DeeperForward calls them), and take no scope:
    ``kind="layernorm"`` over all of a sample's values (DeeperForward's norm of each input image);
    ``kind="class_groupnorm"`` over each of ``num_classes`` contiguous groups of the last axis (and
    all positions), DeeperForward's GroupNorm between layers: it removes each class group's mean
    activity, which is that layer's class goodness, from what the next layer sees.
    """

    KINDS = ("l2", "rms", "layernorm", "class_groupnorm")
    SCOPES = ("channels", "map")
    #: the kinds that standardize (their statistics are fixed by the kind: no scope)
    STANDARDIZE = ("layernorm", "class_groupnorm")

    def __init__(self, kind: str = "l2", eps: float | None = None, *, name: str = "prenorm", scope: str = "channels",
                 num_classes: int | None = None):
        if kind not in self.KINDS:
            raise ValueError(f"norm must be one of {self.KINDS}, got {kind!r}")
        if scope not in self.SCOPES:
            raise ValueError(f"prenorm scope must be one of {self.SCOPES}, got {scope!r}")
        if kind == "class_groupnorm" and (num_classes is None or num_classes < 1):
            raise ValueError(f"kind class_groupnorm needs the number of classes, got {num_classes!r}")
        super().__init__(None, name)
        self.kind = kind
        self.eps = eps if eps is not None else (1e-5 if kind in self.STANDARDIZE else 1e-7)
        self.scope = scope
        self.num_classes = num_classes

    def _standardize(self, x: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        if self.kind == "class_groupnorm":
            units = x.shape[-1]
            if units is None or units % self.num_classes:
                raise ValueError(f"kind class_groupnorm splits the last axis into {self.num_classes} class groups, "
                                 f"but it has {units}")
            x = tf.reshape(x, [shape[0], -1, self.num_classes, units // self.num_classes])
            axes = [1, 3]
        else:
            x = tf.reshape(x, [shape[0], -1])
            axes = [1]
        mean, var = tf.nn.moments(x, axes, keepdims=True)
        return tf.reshape((x - mean) * tf.math.rsqrt(var + self.eps), shape)

    def transform(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        if self.kind in self.STANDARDIZE:
            return self._standardize(x)
        axes = -1 if self.scope == "channels" or x.shape.rank <= 2 else list(range(1, x.shape.rank))
        sq = tf.reduce_sum(tf.square(x), axes, keepdims=True) if self.kind == "l2" \
            else tf.reduce_mean(tf.square(x), axes, keepdims=True)
        return x / (tf.sqrt(sq) + self.eps)


class FFMerge(BaseFFLayer):
    """A weightless join of several maps of one sample: ``kind="add"`` (same shapes, summed) or
    ``kind="concat"`` (joined along the last axis: channels of images of one H x W, or units).
    DeeperForward's shortcuts: an add where the channel counts match, a concat where they do not.
    No gradient crosses it: each FF layer stops the gradient at its own input."""

    KINDS = ("add", "concat")
    takes_list = True   # each input keeps its own shape

    def __init__(self, kind: str, *, name: str = "merge"):
        if kind not in self.KINDS:
            raise ValueError(f"merge kind must be one of {self.KINDS}, got {kind!r}")
        super().__init__(None, name)
        self.kind = kind

    def transform(self, x, y: tf.Tensor) -> tf.Tensor:
        xs = [tf.cast(t, tf.float32) for t in x]
        return tf.add_n(xs) if self.kind == "add" else tf.concat(xs, axis=-1)


class FFOverlay(BaseFFLayer):
    """Writes the label into the image.

    ``mode="add"`` (rmwkwok's): +value at pixel index y of the flattened image.
    ``mode="replace"`` (the paper): the first ``num_classes`` pixels become one-hot(y) * value.
    ``mode="channels"`` (for conv nets): ``num_classes`` label planes appended to an image
    (N, H, W, C) -> (N, H, W, C + num_classes), one-hot(y) * value at every position: the label is
    seen by every receptive field, where a pixel would reach only the few that cover it.
    A label of -1 is the neutral label: 1/num_classes in each of the ``num_classes`` places.
    ``add`` and ``replace`` on an image act on its flattened pixels (H, W, C order).
    Under EVAL_ALL_LABELS each sample is replicated once per class, sample-major (rows i*C..i*C+C-1 are
    sample i with labels 0..C-1).
    """

    MODES = ("add", "replace", "channels")

    def __init__(self, num_classes: int, mode: str = "add", value: float = 1.0, *, name: str = "overlay"):
        if mode not in self.MODES:
            raise ValueError(f"overlay mode must be one of {self.MODES}, got {mode!r}")
        super().__init__(None, name)
        self.num_classes = num_classes
        self.all_label_rows = num_classes
        self.mode = mode
        self.value = float(value)

    def overlay(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        c = self.num_classes
        y = tf.cast(y, tf.int32)
        neutral = tf.cast(tf.equal(y, -1), x.dtype)[:, None]
        onehot = tf.one_hot(y, c, dtype=x.dtype) * self.value + neutral * (1.0 / c)
        if self.mode == "channels":
            if x.shape.rank != 4:
                raise ValueError(f"overlay mode 'channels' needs images (N, H, W, C), got rank {x.shape.rank}")
            planes = tf.broadcast_to(onehot[:, None, None, :], tf.concat([tf.shape(x)[:3], [c]], 0))
            return tf.concat([x, planes], axis=-1)
        if x.shape.rank > 2:   # an image: write into its flattened pixels, then give the shape back
            return tf.reshape(self.overlay(tf.reshape(x, [tf.shape(x)[0], -1]), y), tf.shape(x))
        if self.mode == "replace":
            return tf.concat([onehot, x[:, c:]], axis=1)
        pad = tf.zeros([tf.shape(x)[0], tf.shape(x)[1] - c], x.dtype)
        return x + tf.concat([onehot, pad], axis=1)

    def transform(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.overlay(x, y)

    def evaluate_all_labels(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        c = self.num_classes
        n = tf.shape(x)[0]
        return self.overlay(tf.repeat(x, c, axis=0), tf.tile(tf.range(c), [n]))


class FFGoodness(BaseFFLayer):
    """Predicts the label whose overlay gives the largest goodness (sum of squares of its input).

    Under EVAL_ALL_LABELS its input has one row per (sample, label), sample-major; ``y`` holds the true
    label of each sample once. Other tasks pass the input through."""

    def __init__(self, num_classes: int, *, name: str = "goodness", lowest: bool = False):
        super().__init__(None, name)
        self.num_classes = num_classes
        self.lowest = bool(lowest)   # the sign-flipped loss: the true label gives the LOWEST goodness
        self.metrics = {"acc": keras.metrics.Accuracy(name="acc")}

    def predict_all_labels(self, x: tf.Tensor) -> tf.Tensor:
        x = tf.reshape(x, [tf.shape(x)[0], -1]) if x.shape.rank > 2 else x   # a conv map: all of it
        g = tf.reshape(losses.goodness(x, "sum"), [-1, self.num_classes])
        return tf.argmax(-g if self.lowest else g, axis=1, output_type=tf.int32)

    def evaluate_all_labels(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        self.metrics["acc"].update_state(tf.cast(y, tf.int32), self.predict_all_labels(x))
        return x


class FFClassGoodness(BaseFFLayer):
    """CwComp's goodness predictor: the label whose group of units has the largest class goodness
    (``losses.class_goodness``), summed over the readout's inputs (CwComp reads its last layer only;
    list several to sum). One plain forward pass: the label is never in the input. Its output is
    the (N, classes) class goodness, scored like logits. ``kinds`` gives each input's class
    goodness (its FF layer's ``class_goodness``; mean_square by default).

    ``select_range`` (DeeperForward): the sum runs over a contiguous range [S, E] of the inputs.
    Every positive evaluation pass also counts, for every range, the images it gets right;
    ``select_range_from_counts`` then fixes the range with the most (the smallest E, then the
    smallest S, on ties, as their code scans). The caller decides which pass the counts come from:
    ffrun's loop selects after the validation pass only, and test passes read the fixed range.
    The range is a weight of the layer (1 on its inputs, 0 elsewhere), so checkpoints, the best
    epoch's weights and ffrun-eval carry it."""

    takes_list = True   # each input keeps its own shape: the groups are per layer

    def __init__(self, num_classes: int, *, name: str = "classes", kinds: tuple[str, ...] | None = None,
                 select_range: bool = False, num_inputs: int = 1):
        # a Keras layer that only holds the range: what a Keras layer holds is what checkpoints and
        # the best-epoch copy save; a variable, so a new range needs no new graph
        holder = keras.layers.Layer(name=f"{name}_range") if select_range else None
        super().__init__(holder, name)
        self.num_classes = num_classes
        self.kinds = tuple(kinds) if kinds is not None else None
        self.metrics = {"acc": keras.metrics.Accuracy(name="acc")}
        self.select_range = bool(select_range)
        self.num_inputs = num_inputs
        if self.select_range:
            # an attribute of the holder, as Keras' own layers keep their kernels: tf.train.Checkpoint
            # finds a layer's variables by attribute
            holder.range = holder.add_weight(shape=(num_inputs,), initializer="ones", trainable=False, name="range")
            self.range_weights = holder.range
            self.range_correct = tf.Variable(tf.zeros([num_inputs, num_inputs]), trainable=False,
                                             name=f"{name}_range_correct")
            self.range_seen = tf.Variable(0.0, trainable=False, name=f"{name}_range_seen")

    def _goodnesses(self, x) -> list[tf.Tensor]:
        xs = x if isinstance(x, (list, tuple)) else [x]
        kinds = self.kinds or ("mean_square",) * len(xs)
        return [losses.class_goodness(t, self.num_classes, k) for t, k in zip(xs, kinds)]

    def transform(self, x, y: tf.Tensor) -> tf.Tensor:
        gs = self._goodnesses(x)
        if self.select_range:
            return tf.einsum("l,lnc->nc", self.range_weights, tf.stack(gs))
        return tf.add_n(gs)

    def evaluate(self, x, y: tf.Tensor) -> tf.Tensor:
        g = self.transform(x, y)
        if self.positive:
            self.metrics["acc"].update_state(tf.cast(y, tf.int32), tf.argmax(g, axis=1, output_type=tf.int32))
            if self.select_range:
                self._count_ranges(tf.stack(self._goodnesses(x)), tf.cast(y, tf.int32))
        return g

    def _count_ranges(self, gs: tf.Tensor, y: tf.Tensor) -> None:
        """Adds, for every S <= E, the images that sum(gs[S..E]) classifies right (gs: (L, N, C))."""
        cum = tf.cumsum(gs, axis=0)                                       # cum[E] = sum gs[0..E]
        before = tf.concat([tf.zeros_like(cum[:1]), cum[:-1]], axis=0)     # before[S] = sum gs[0..S-1]
        sums = cum[None, :] - before[:, None]                              # [S, E] = sum gs[S..E]
        right = tf.cast(tf.equal(tf.argmax(sums, axis=-1, output_type=tf.int32), y), tf.float32)
        self.range_correct.assign_add(tf.reduce_sum(right, axis=-1))
        self.range_seen.assign_add(tf.cast(tf.shape(y)[0], tf.float32))

    def select_range_from_counts(self) -> tuple[int, int, float] | None:
        """Fix the range that the counted passes classify best; returns (S, E, its accuracy on
        them), or None when no pass was counted since the last reset."""
        seen = float(self.range_seen.numpy())
        if not self.select_range or seen == 0:
            return None
        correct = self.range_correct.numpy()
        n = correct.shape[0]
        # scanned by E, then S, keeping the first maximum (a later range must be strictly better)
        best = max(((correct[s, e], -e, -s) for e in range(n) for s in range(e + 1)))
        start, end = -best[2], -best[1]
        self.range_weights.assign([1.0 if start <= i <= end else 0.0 for i in range(n)])
        return start, end, float(best[0]) / seen

    @property
    def range(self) -> tuple[int, int]:
        """The first and last input the readout sums (all of them unless it selects a range)."""
        if not self.select_range:
            return 0, self.num_inputs - 1
        on = np.flatnonzero(np.asarray(self.range_weights.numpy()) > 0)
        return int(on[0]), int(on[-1])

    def reset_metrics(self) -> None:
        super().reset_metrics()
        if self.select_range:
            self.range_correct.assign(tf.zeros_like(self.range_correct))
            self.range_seen.assign(0.0)


class FFSoftmax(BaseFFLayer):
    """A linear softmax readout trained by ordinary gradient descent on its (stopped) input.

    Trains during TRAIN_POS (and on the positive half of TRAIN_PAIR); tracks accuracy during EVAL
    on positive data."""

    trains_on = frozenset({Task.TRAIN_POS, Task.TRAIN_PAIR, Task.TRAIN_PAIR_READOUT})
    training_losses = ("loss",)

    def __init__(self, num_classes: int, optimizer: keras.optimizers.Optimizer | None = None, *,
                 name: str = "softmax", use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 l2: float = 0.0, dtype: Any = None):
        dense = keras.layers.Dense(num_classes, use_bias=use_bias, kernel_initializer=kernel_initializer,
                                   name=name, dtype=dtype)
        super().__init__(dense, name, optimizer or keras.optimizers.Adam(1e-3), l2=l2)
        self.num_classes = num_classes
        self.metrics = {
            "loss": keras.metrics.Mean(name="loss"),
            "acc": keras.metrics.SparseCategoricalAccuracy(name="acc"),
        }

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        x = tf.reshape(x, [tf.shape(x)[0], -1]) if x.shape.rank > 2 else x   # a conv map: all of it
        return tf.cast(self.layer(tf.stop_gradient(x)), tf.float32)

    def train_pos(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = self.logits(x)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(y, tf.int32), logits=logits))
        self._step(tape, loss)
        self.metrics["loss"].update_state(loss)
        return logits

    def train_pair(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.train_pos(_part(x, 2, 0), _part(y, 2, 0))

    def train_pair_readout(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.train_pos(_part(x, 3, 2), _part(y, 3, 2))

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        logits = self.logits(x)
        if self.positive:
            self.metrics["acc"].update_state(y, logits)
        return logits

    def transform(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.logits(x)
