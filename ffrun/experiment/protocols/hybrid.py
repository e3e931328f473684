"""Hinton's unsupervised recipe (hybrid): negatives mix two images with a blurred random mask,
fresh every epoch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ffrun.errors import ConfigError
from ffrun.experiment.protocols.base import PROTOCOLS, Protocol, Source

if TYPE_CHECKING:
    import tensorflow as tf


def hybrid_images(X: tf.Tensor, seed: tf.Tensor, height: int, width: int, blur_steps: int,
                  chunk: int = 8192) -> tf.Tensor:
    """Hinton's unsupervised negatives: a random bit image blurred ``blur_steps`` times with
    [1/4, 1/2, 1/4] across and down, thresholded at 0.5, mixes each image a with a different
    image b as m*a + (1-m)*b. Stateless in ``seed`` (shape [2]). The random draws cover the whole
    set at once; the blur and the mixing run ``chunk`` images at a time, which keeps the float
    temporaries of a 60k-image set (190 MB each) from piling up, and gives the same images."""
    import tensorflow as tf
    n = int(X.shape[0])
    seeds = tf.random.experimental.stateless_split(seed, 2)
    bits = tf.random.stateless_uniform([n, height, width, 1], seeds[0]) < 0.5
    # partner j = i + k (mod n), k in [1, n): always another image
    shift = tf.random.stateless_uniform([n], seeds[1], minval=1, maxval=max(n, 2), dtype=tf.int32)
    partner = (tf.range(n) + shift) % n
    k = tf.constant([0.25, 0.5, 0.25])
    kx, ky = tf.reshape(k, [1, 3, 1, 1]), tf.reshape(k, [3, 1, 1, 1])
    parts = []
    for start in range(0, n, chunk):
        m = tf.cast(bits[start:start + chunk], tf.float32)
        for _ in range(blur_steps):
            m = tf.nn.conv2d(tf.nn.conv2d(m, kx, 1, "SAME"), ky, 1, "SAME")
        mask = tf.reshape(tf.cast(m > 0.5, X.dtype), [-1, height * width])
        a, b = X[start:start + chunk], tf.gather(X, partner[start:start + chunk])
        parts.append(mask * a + (1.0 - mask) * b)
    return tf.concat(parts, 0) if len(parts) > 1 else parts[0]



@dataclass
class HybridConfig:
    name: str = "hybrid"
    blur_steps: int = 6

    def __post_init__(self) -> None:
        if self.blur_steps < 0:
            raise ConfigError(f"protocol.blur_steps must be >= 0, got {self.blur_steps!r}")


@PROTOCOLS.register()
class Hybrid(Protocol):
    name = "hybrid"
    config = HybridConfig
    fresh_negatives = True

    @classmethod
    def check_config(cls, cfg: Any, *, supervised: bool, **run: Any) -> None:
        if supervised:
            raise ConfigError("protocol hybrid is the unsupervised recipe: use mode=unsup")
        super().check_config(cfg, supervised=supervised, **run)

    @classmethod
    def check_image(cls, cfg: Any, image: tuple[int, int, int], source: str) -> None:
        if image[2] != 1:
            raise ConfigError(f"protocol hybrid needs 2-D images (one channel); {source} has "
                              f"{'x'.join(map(str, image))} images")

    def check(self) -> None:
        super().check()
        h, w = self.splits.image_shape
        if h * w != self.splits.input_dim:
            raise ConfigError("protocol hybrid needs 2-D images")

    def source(self, x: np.ndarray, y: np.ndarray, stream: int) -> Source:
        import tensorflow as tf

        from ffrun.core.trainer import FFData
        pos = FFData.from_numpy(x, y)
        h, w = self.splits.image_shape
        seed, steps = self.seed, int(self.cfg.blur_steps)
        draw = lambda *key: FFData(
            hybrid_images(pos.X, tf.constant([seed * 1000 + stream, key[0]], tf.int64), h, w, steps),
            pos.y, pos.y, positive=False)
        return pos, draw
