"""tf.data input pipeline with joint image + mask augmentation (one geometry for both)."""

from __future__ import annotations

import numpy as np

from .backend import keras, tf
from .inputs import TRAIN_MARGIN, Arrays, source_mask


def augmenter(seed: int, vflip: bool = False) -> keras.Sequential:
    """Rotation ±20°, shift 10 %, shear 0.2, zoom 20 %, horizontal flip (Keras layers); with
    `vflip` also a vertical flip (`--augment-extra vflip`).

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
            *([keras.layers.RandomFlip("vertical", seed=seed + 5)] if vflip else []),
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


def scanner_augment(img, seed):
    """What another scanner and its settings do to an image, drawn per image (stateless, from
    `seed`, a (2,) int tensor): gain x0.7-1.4 and gamma 0.6-1.6 on the 0..1 image (half the
    images each), a lower resolution (half the batches: down to 50-100 %, back up bilinear),
    blur (half the images: a 3x3 Gaussian mix) and speckle-like noise (half the images: sigma
    up to 8 grey levels, the same on the three channels so a grey image stays grey). The mask is
    not touched: these change how the tissue looks, not where the lesion is."""
    n = tf.shape(img)[0]
    size = tf.shape(img)[1:3]
    u = lambda k, shape, lo, hi: tf.random.stateless_uniform(shape, seed + k, lo, hi)  # noqa: E731
    on = lambda k: tf.cast(u(k, [n, 1, 1, 1], 0.0, 1.0) < 0.5, tf.float32)  # noqa: E731
    x = img / 255.0
    gain = 1.0 + on(1) * (u(2, [n, 1, 1, 1], 0.7, 1.4) - 1.0)
    gamma = tf.exp(on(3) * u(4, [n, 1, 1, 1], np.log(0.6), np.log(1.6)))
    x = tf.clip_by_value(x * gain, 1e-6, 1.0) ** gamma
    f = u(5, [], 0.5, 1.0)
    small = tf.image.resize(x, tf.cast(tf.cast(size, tf.float32) * f, tf.int32), method="area")
    x = tf.cond(u(6, [], 0.0, 1.0) < 0.5, lambda: tf.image.resize(small, size, method="bilinear"), lambda: x)
    k = tf.constant([[1, 2, 1], [2, 4, 2], [1, 2, 1]], tf.float32) / 16.0
    blurred = tf.nn.depthwise_conv2d(x, tf.tile(k[:, :, None, None], [1, 1, 3, 1]), [1, 1, 1, 1], "SAME")
    w = on(7) * u(8, [n, 1, 1, 1], 0.3, 1.0)
    x = x * (1 - w) + blurred * w
    x = x + on(9) * tf.random.stateless_normal(tf.concat([tf.shape(x)[:3], [1]], 0), seed + 10) * u(11, [n, 1, 1, 1], 0.0, 8 / 255)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def intensity_augment(img, seed):
    """Brightness (an offset of up to ±10 % of full scale) and contrast (x0.8-1.2 about the image's
    mean), drawn per image (stateless, from `seed`), the image only."""
    n = tf.shape(img)[0]
    u = lambda k, lo, hi: tf.random.stateless_uniform([n, 1, 1, 1], seed + k, lo, hi)  # noqa: E731
    mean = tf.reduce_mean(img, axis=[1, 2, 3], keepdims=True)
    img = (img - mean) * u(1, 0.8, 1.2) + mean + u(2, -25.5, 25.5)
    return tf.clip_by_value(img, 0.0, 255.0)


def mixup(img, m, y, seed, alpha: float = 0.2):
    """MixUp of masked images (Zhang et al. 2018) with a partner from the same batch: the model's
    input image*mask becomes lam*(image1*mask1) + (1-lam)*(image2*mask2) exactly (the image is the
    mix of the masked images, the mask their union), the label lam*y1 + (1-lam)*y2; lam ~
    Beta(alpha, alpha) per image. Class weights then follow the larger part (Keras weighs soft
    labels by their argmax)."""
    n = tf.shape(img)[0]
    g1 = tf.random.stateless_gamma([n], seed + 1, alpha)
    g2 = tf.random.stateless_gamma([n], seed + 2, alpha)
    lam = g1 / tf.maximum(g1 + g2, 1e-12)
    perm = tf.argsort(tf.random.stateless_uniform([n], seed + 3))
    return mix_pairs(img, m, y, lam, perm)


def mix_pairs(img, m, y, lam, perm):
    """Image i mixed with image perm[i] with weight lam[i] (see `mixup`)."""
    li = lam[:, None, None, None]
    masked = img * m
    img = li * masked + (1.0 - li) * tf.gather(masked, perm)
    m = tf.maximum(m, tf.gather(m, perm))
    y = lam[:, None] * y + (1.0 - lam[:, None]) * tf.gather(y, perm)
    return img, m, y


def train_dataset(
    arr: Arrays,
    source: str,
    sizes: np.ndarray,
    batch_size: int,
    seed: int,
    augment: bool = True,
    scanner: bool = False,
    drop_remainder: bool = False,
    extra: tuple[str, ...] = (),
) -> tf.data.Dataset:
    """Shuffled, augmented batches of ({"image", "mask"}, one-hot label) for training.
    `drop_remainder`: only full batches (a mirrored fit splits each batch evenly over its
    replicas; the images left out differ every epoch, as the data are reshuffled).

    The mask source is drawn afresh every epoch (box margin 0-20 %, placeholder boxes for
    normal images) from a seeded numpy generator, then augmented together with the image.
    `scanner` adds `scanner_augment` (after the geometry, on the image only). `extra` (see
    EXTRA_AUGMENTS): "vflip" adds a vertical flip to the joint geometry, "intensity" brightness and
    contrast (image only), "mixup" mixes each batch's masked images and labels (`mixup`).
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
    # sequential maps: `load` draws from a numpy RNG and `finish`, with any augmentation on, from Keras'
    # seeded random ops; with op determinism on, tf.data runs such a parallel map sequentially anyway, and
    # TF 2.21's rewrite prints a native "NodeDef mentions attribute use_unbounded_threadpool" error line
    ds = ds.map(load).batch(batch_size, drop_remainder=drop_remainder)
    aug = augmenter(seed, vflip="vflip" in extra)

    # the image-only augmentations' seeds come from a seeded generator, as the Keras layers' do
    seeds = keras.random.SeedGenerator(seed + 7) if scanner or {"intensity", "mixup"} & set(extra) else None

    def finish(img, m, y):
        img = tf.cast(img, tf.float32)
        if augment:
            img, m = augment_pair(aug, img, m)
        if scanner:
            img = scanner_augment(img, tf.cast(seeds.next(), tf.int64))
        if "intensity" in extra:
            img = intensity_augment(img, tf.cast(seeds.next(), tf.int64))
        if "mixup" in extra:
            img, m, y = mixup(img, m, y, tf.cast(seeds.next(), tf.int64))
        return {"image": img, "mask": m}, y

    return ds.map(finish).prefetch(tf.data.AUTOTUNE)


def eval_inputs(arr: Arrays, masks: np.ndarray) -> dict:
    return {"image": arr.images.astype(np.float32), "mask": masks.astype(np.float32)}


def batches(x, y=None, batch_size: int = 32):
    """In-memory arrays as a batched tf.data pipeline without a map, for `fit`'s validation and
    `predict`: Keras' own adapter for NumPy arrays slices them in a parallel map, which op
    determinism rewrites with a native error line on the terminal (TF 2.21)."""
    return tf.data.Dataset.from_tensor_slices(x if y is None else (x, y)).batch(batch_size)
