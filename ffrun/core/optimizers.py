"""Keras optimizers whose per-variable update is ONE fused TensorFlow kernel.

Keras 3's Adam and SGD-with-momentum update a variable with a chain of element-wise ops, each a
pass over memory; for a 2000 x 2000 layer that costs a quarter of an FF step on 2 CPU cores. The
same arithmetic exists as single kernels (ResourceApplyAdam, ResourceApplyKerasMomentum), so these
subclasses keep Keras' math, config, slots and checkpoints and only change how the update runs.
Anything unusual (amsgrad, nesterov, another backend, mixed dtypes) falls back to Keras' own code.
"""
from __future__ import annotations

import keras
import tensorflow as tf


def _fusable(gradient, variable) -> bool:
    return keras.backend.backend() == "tensorflow" and gradient.dtype == variable.dtype \
        and not isinstance(gradient, tf.IndexedSlices)


@keras.saving.register_keras_serializable(package="ffrun")
class FusedAdam(keras.optimizers.Adam):
    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        # alpha = lr * sqrt(1 - b2^t) / (1 - b1^t); var -= alpha * m / (sqrt(v) + eps): Keras' formula
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype), epsilon=tf.cast(self.epsilon, dtype), grad=gradient)


@keras.saving.register_keras_serializable(package="ffrun")
class FusedSGD(keras.optimizers.SGD):
    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or self.nesterov or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        # accum = momentum * accum - lr * grad; var += accum: Keras' (not torch's) momentum form
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=self.momentums[self._get_variable_index(variable)].handle,
            lr=tf.cast(learning_rate, dtype), grad=gradient, momentum=tf.cast(self.momentum, dtype))


FUSED = {"Adam": FusedAdam, "SGD": FusedSGD}
