"""tf.data input pipeline with joint image + mask augmentation (one geometry for both)."""

from __future__ import annotations

import numpy as np

from .backend import keras, tf
from .inputs import TRAIN_MARGIN, Arrays, source_mask


def augmenter(seed: int) -> keras.Sequential:
    """Rotation ±20°, shift 10 %, shear 0.2, zoom 20 %, horizontal flip (Keras layers).

    Applied to the 4-channel stack [R, G, B, mask], so image and mask share one geometry.
    Areas moved in from outside the frame are filled with 0 (black, outside the mask).
    """
    kw = dict(fill_mode="constant", fill_value=0.0)
    return keras.Sequential(
        [
            keras.layers.RandomRotation(20 / 360, seed=seed, **kw),
            keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 1, **kw),
            keras.layers.RandomShear(x_factor=0.2, seed=seed + 2, **kw),
            keras.layers.RandomZoom(0.2, 0.2, seed=seed + 3, **kw),
            keras.layers.RandomFlip("horizontal", seed=seed + 4),
        ],
        name="joint_augment",
    )


def augment_pair(aug: keras.Sequential, image, mask):
    """Augment an image batch (N,S,S,3) and its mask batch (N,S,S,1) with one geometry."""
    stacked = tf.concat([tf.cast(image, tf.float32), tf.cast(mask, tf.float32) * 255.0], axis=-1)
    out = aug(stacked, training=True)
    img = tf.clip_by_value(out[..., :3], 0.0, 255.0)
    msk = tf.cast(out[..., 3:] > 127.5, tf.float32)
    return img, msk


def train_dataset(
    arr: Arrays,
    source: str,
    sizes: np.ndarray,
    batch_size: int,
    seed: int,
    augment: bool = True,
) -> tf.data.Dataset:
    """Shuffled, augmented batches of ({"image", "mask"}, one-hot label) for training.

    The mask source is drawn afresh every epoch (box margin 0-20 %, placeholder boxes for
    normal images) from a seeded numpy generator, then augmented together with the image.
    """
    rng = np.random.default_rng(seed)
    n = len(arr)
    onehot = np.eye(3, dtype=np.float32)[arr.labels]

    def draw_mask(i):
        margin = rng.uniform(*TRAIN_MARGIN)
        return source_mask(source, arr.gt[int(i)], rng, sizes, margin).astype(np.float32)[..., None]

    def load(i):
        m = tf.numpy_function(draw_mask, [i], tf.float32, stateful=True)
        m.set_shape(arr.gt.shape[1:] + (1,))
        return tf.gather(images, i), m, tf.gather(labels, i)

    images = tf.constant(arr.images)
    labels = tf.constant(onehot)
    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=1, deterministic=True).batch(batch_size)
    aug = augmenter(seed)

    def finish(img, m, y):
        img = tf.cast(img, tf.float32)
        if augment:
            img, m = augment_pair(aug, img, m)
        return {"image": img, "mask": m}, y

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_inputs(arr: Arrays, masks: np.ndarray) -> dict:
    return {"image": arr.images.astype(np.float32), "mask": masks.astype(np.float32)}
