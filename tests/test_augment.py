"""Training-time augmentation: every image is an exact shift (or mirror) of itself, draws are keyed
by the seed, and only training passes see it."""
import keras
import numpy as np
import tensorflow as tf

from ffrun.core.augment import Augment
from ffrun.core.trainer import TrainMgr
from ffrun.experiment.build import build_run


def _shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` (H, W, C) moved down by dy and right by dx, the border filled with its minimum."""
    out = np.full_like(img, img.min())
    h, w = img.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_every_augmented_image_is_an_exact_shift_within_range():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 1.0, size=(64, 7, 6, 2)).astype(np.float32)
    aug = Augment((7, 6, 2), shift=2)
    out = aug(tf.constant(x.reshape(64, -1)), tf.constant([3, 4], tf.int64)).numpy().reshape(x.shape)
    offsets = []
    for img, res in zip(x, out):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if np.array_equal(_shifted(img, dy, dx), res)]
        assert len(found) == 1, found
        offsets.append(found[0])
    assert len(set(offsets)) > 10                      # per image, not one offset for the batch
    again = aug(tf.constant(x.reshape(64, -1)), tf.constant([3, 4], tf.int64)).numpy().reshape(x.shape)
    other = aug(tf.constant(x.reshape(64, -1)), tf.constant([3, 5], tf.int64)).numpy().reshape(x.shape)
    assert np.array_equal(again, out) and not np.array_equal(other, out)


def test_flips_mirror_about_half_of_the_images_left_right():
    x = np.random.default_rng(1).normal(size=(200, 4, 5, 3)).astype(np.float32)
    out = Augment((4, 5, 3), flip=True)(tf.constant(x), tf.constant([0, 9], tf.int64)).numpy()
    mirrored = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert (mirrored ^ kept).all() and 60 < mirrored.sum() < 140


def test_only_training_passes_are_augmented(cfg_factory):
    """A (deliberately destructive) augmentation that blanks every image changes what training
    learns and nothing that evaluation scores."""
    blank = lambda x, seed: tf.zeros_like(x)
    results = {}
    for name, augment in (("plain", None), ("blank", blank)):
        keras.utils.set_random_seed(0)
        run = build_run(cfg_factory(["debug=tiny"]))
        mgr = TrainMgr(run.network, None, run.plan.train + run.plan.val, batch_size=32, seed=0, augment=augment)
        mgr.build()
        results[name] = {"eval_before": mgr.evaluate(run.plan.val)}
        mgr.fit([("all", 1)])
        results[name]["weights"] = run.network.layers["dense1"].layer.kernel.numpy()
    assert results["plain"]["eval_before"] == results["blank"]["eval_before"]
    assert not np.allclose(results["plain"]["weights"], results["blank"]["weights"])


def test_the_augment_option_builds_from_the_data_shape(cfg_factory):
    run = build_run(cfg_factory(["experiment=cwcomp_mnist", "data=digits", "data.val_size=300",
                                 "data.augment.shift=1", "data.augment.flip=true"]))
    assert run.augment == Augment((8, 8, 1), shift=1, flip=True)
    assert build_run(cfg_factory(["debug=tiny"])).augment is None
