"""Training-time augmentation of image batches: random shifts and horizontal flips.

Applied by TrainMgr to the images of training passes only (never to evaluation), inside the pass's
graph. Every draw is stateless, keyed by (seed, epoch, pass, batch), so a resumed run sees exactly
the shifts an uninterrupted one would, and a positive and its aligned negative (the same image with
a wrong label) get the same shift.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Augment:
    """Shift each image by an integer offset drawn uniformly from [-shift, shift] on each axis (the
    uncovered border takes the image's darkest value), and mirror it left-right with probability 1/2
    when ``flip`` (CIFAR-10's usual augmentation; wrong for digits). ``image_shape`` is (H, W, C);
    the batches are flat rows (N, H*W*C), as TrainMgr holds them."""

    image_shape: tuple[int, int, int]
    shift: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        h, w, c = self.image_shape
        if min(h, w, c) < 1:
            raise ValueError(f"augmentation needs images (H, W, C), got shape {self.image_shape!r}")
        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or not 0 <= self.shift < min(h, w):
            raise ValueError(f"shift must be an integer in [0, {min(h, w)}) pixels, got {self.shift!r}")

    @property
    def active(self) -> bool:
        return bool(self.shift or self.flip)

    def __call__(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """``x``: (N, H*W*C) or (N, H, W, C); ``seed``: int64[2]. Returns the same shape."""
        h, w, c = self.image_shape
        n = tf.shape(x)[0]
        img = tf.reshape(x, [n, h, w, c])
        if self.shift:
            d = tf.random.stateless_uniform([n, 2], tf.random.experimental.stateless_fold_in(seed, 0), minval=-self.shift, maxval=self.shift + 1, dtype=tf.int32)
            d = tf.cast(d, tf.float32)
            ones, zeros = tf.ones([n]), tf.zeros([n])
            # output pixel (col, row) reads input pixel (col - dx, row - dy): a translation by (dx, dy);
            # nearest-neighbour at integer offsets copies pixels exactly (what keras' RandomTranslation
            # does, without its stateful seed)
            transforms = tf.stack([ones, zeros, -d[:, 0], zeros, ones, -d[:, 1], zeros, zeros], axis=1)
            # the uncovered border takes each image's darkest value: MNIST's background whether or not
            # the data was standardized (a zero fill would be a grey frame after standardization)
            # (pixels are copied exactly: the border is marked by moving a plane of ones the same way)
            move = lambda t: tf.raw_ops.ImageProjectiveTransformV3(
                images=t, transforms=transforms, output_shape=[h, w], fill_value=0.0,
                interpolation="NEAREST", fill_mode="CONSTANT")
            floor = tf.reduce_min(img, axis=[1, 2, 3], keepdims=True)
            img = move(img) + (1.0 - move(tf.ones([n, h, w, 1], img.dtype))) * floor
        if self.flip:
            coin = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5
            img = tf.where(coin[:, None, None, None], tf.reverse(img, [2]), img)
        return tf.reshape(img, tf.shape(x))
