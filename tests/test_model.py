"""The masked ResNet50 as specified, its weights options, and joint augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from busi.train.backend import keras
from busi.train.model import WeightsUnavailable, build_classifier, trainable_count


def test_frozen_model_has_exactly_525315_trainable_parameters():
    m = build_classifier(64, weights="none", freeze=True)
    # GAP(2048) -> Dense 256: 2048*256 + 256; Dense 3: 256*3 + 3 (the seed's 257,795 is wrong)
    assert trainable_count(m) == 2048 * 256 + 256 + 256 * 3 + 3 == 525_315
    assert [t.name.split(":")[0] for t in m.inputs] == ["image", "mask"] or sorted(m.input) == ["image", "mask"]
    assert m.output.shape[-1] == 3 and m.layers[-1].name == "probabilities"
    assert m.get_layer("conv5_block3_out") is not None  # backbone names kept (Grad-CAM later)
    assert isinstance(m.get_layer("dropout"), keras.layers.Dropout) and m.get_layer("dropout").rate == 0.5
    assert m.get_layer("fc256").units == 256


def test_scratch_model_trains_the_backbone():
    m = build_classifier(64, weights="none")
    assert trainable_count(m) > 23_000_000


def test_mask_multiplies_the_image_inside_the_graph():
    m = build_classifier(64, weights="none", freeze=True)
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    zero_mask = np.zeros((2, 64, 64, 1), "float32")
    a = m.predict({"image": img, "mask": zero_mask}, verbose=0)
    b = m.predict({"image": np.zeros_like(img), "mask": np.ones_like(zero_mask)}, verbose=0)
    np.testing.assert_allclose(a, b, atol=1e-6)  # image*0 == black image


def test_imagenet_without_network_names_both_alternatives(monkeypatch):
    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    import keras.src.applications.resnet as res

    monkeypatch.setattr(res.file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailable) as e:
        build_classifier(64, weights="imagenet")
    assert "--weights PATH.h5" in str(e.value) and "--weights none" in str(e.value)


def test_local_h5_weights_are_loaded_and_frozen(tmp_path):
    """An air-gapped workstation passes the notop .h5 file; here a small stand-in of the
    same format (Keras legacy HDF5, ResNet50 no-top layout) with known weights."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop_standin.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    m = build_classifier(64, weights=str(path))
    np.testing.assert_array_equal(m.get_layer("conv1_conv").get_weights()[0], ref.get_layer("conv1_conv").get_weights()[0])
    np.testing.assert_array_equal(m.get_layer("conv5_block3_3_bn").get_weights()[2], ref.get_layer("conv5_block3_3_bn").get_weights()[2])
    assert trainable_count(m) == 525_315  # pretrained -> frozen by default
    with pytest.raises(WeightsUnavailable, match="not found"):
        build_classifier(64, weights=str(tmp_path / "missing.h5"))


def test_mask_follows_the_image_through_augmentation():
    """Image bright exactly where the mask is: after the joint augmentation the bright
    pixels and the mask must still coincide, and the geometry must really have changed."""
    from busi.train.inputs import Arrays
    from busi.train.pipeline import train_dataset

    rng = np.random.default_rng(1)
    n, S = 16, 64
    gt = np.zeros((n, S, S), bool)
    for i in range(n):
        x, y = rng.integers(8, 36, 2)
        gt[i, y : y + rng.integers(10, 24), x : x + rng.integers(10, 24)] = True
    images = np.repeat((gt * 255).astype(np.uint8)[..., None], 3, axis=3)
    arr = Arrays(images, gt, np.arange(n) % 3, [f"p{i}" for i in range(n)])
    ds = train_dataset(arr, "gt", np.zeros((0, 2)), batch_size=n, seed=0)
    x, y = next(iter(ds))
    img, msk = x["image"].numpy(), x["mask"].numpy()[..., 0] > 0.5
    bright = img[..., 0] > 127
    moved = 0
    for i in range(n):
        inter, union = (bright[i] & msk[i]).sum(), (bright[i] | msk[i]).sum()
        assert union == 0 or inter / union > 0.9, f"sample {i}: IoU {inter / union:.2f}"
        moved += not any(np.array_equal(msk[i], g) for g in gt)
    assert moved >= n // 2, "augmentation left most masks unchanged"


def test_extra_augmentations_keep_image_mask_and_label_consistent():
    """--augment-extra: MixUp's input to the model (image*mask) is exactly the mix of the two
    masked images, its mask their union, its label the same mix; intensity changes the look of
    the image only; vflip turns lesions upside down with their masks; unknown names are refused."""
    from busi.train.backend import tf
    from busi.train.inputs import Arrays
    from busi.train.pipeline import mix_pairs, mixup, train_dataset
    from busi.train.stages import parse_extra

    rng = np.random.default_rng(2)
    img = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    m = (rng.uniform(size=(8, 16, 16, 1)) > 0.5).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    lam, perm = rng.uniform(size=8).astype("float32"), rng.permutation(8)
    mi, mm, my = (t.numpy() for t in mix_pairs(*map(tf.constant, (img, m, y, lam, perm))))
    for i, j in enumerate(perm):
        np.testing.assert_allclose(mi[i] * mm[i], lam[i] * img[i] * m[i] + (1 - lam[i]) * img[j] * m[j], atol=1e-3)
        assert np.array_equal(mm[i], np.maximum(m[i], m[j]))
        np.testing.assert_allclose(my[i], lam[i] * y[i] + (1 - lam[i]) * y[j], atol=1e-6)
    mi, mm, my = (t.numpy() for t in mixup(tf.constant(img), tf.constant(m), tf.constant(y), tf.constant([3, 4], tf.int64)))
    assert np.allclose(my.sum(axis=1), 1) and (my >= 0).all() and not np.array_equal(my, y)  # seeded draw: real mixing

    S, n = 32, 8
    gt = np.zeros((n, S, S), bool)
    gt[:, 2:10, 12:20] = True  # every lesion near the top
    images = np.repeat((gt * 200 + 20).astype(np.uint8)[..., None], 3, axis=3)
    arr = Arrays(images, gt, np.arange(n) % 3, [f"p{i}" for i in range(n)])
    top = lambda msk: (msk[: S // 2].sum(), msk[S // 2 :].sum())  # rows above, below the middle  # noqa: E731
    flipped = sum(top(m[..., 0])[1] > top(m[..., 0])[0] for b in range(3)
                  for m in next(iter(train_dataset(arr, "gt", np.zeros((0, 2)), n, b, extra=parse_extra("vflip"))))[0]["mask"].numpy())
    assert flipped > 0  # the geometry now flips vertically too (never without vflip: see below)
    plain = sum(top(m[..., 0])[1] > top(m[..., 0])[0] for b in range(3)
                for m in next(iter(train_dataset(arr, "gt", np.zeros((0, 2)), n, b)))[0]["mask"].numpy())
    assert plain == 0
    x, _ = next(iter(train_dataset(arr, "gt", np.zeros((0, 2)), n, 0, augment=False, extra=parse_extra("intensity"))))
    assert np.array_equal(x["mask"].numpy()[..., 0] > 0.5, gt)  # the mask untouched
    assert not np.allclose(x["image"].numpy(), images) and x["image"].numpy().max() <= 255
    assert parse_extra("mixup, VFLIP") == ("vflip", "mixup") and parse_extra("none") == ()
    for bad in ("cutmix", "vflip,vflip"):
        with pytest.raises(ValueError, match="vflip, intensity, mixup"):
            parse_extra(bad)


def test_preprocessing_is_keras_resnet50_caffe_preprocessing_exactly():
    """The in-graph preprocessing (RGB->BGR as a product with a permutation, then the ImageNet
    mean) is keras.applications.resnet50.preprocess_input to the bit."""
    from busi.train.model import ResNetPreprocess

    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    ours = np.asarray(ResNetPreprocess()(x))
    ref = keras.applications.resnet50.preprocess_input(x.copy())
    assert np.array_equal(ours, ref)


@pytest.fixture(scope="module")
def standin_h5(tmp_path_factory):
    """ImageNet's stand-in: Keras' legacy HDF5 no-top layout, as the air-gapped user's file is,
    with known (random) weights."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop_standin.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    return path, ref


def test_fine_tuning_unfreezes_exactly_the_named_stages_and_never_batch_norm(standin_h5):
    from busi.train.model import unfreeze
    from busi.train.stages import parse_stages

    path, ref = standin_h5
    for text, stages in (("conv5", ("conv5",)), ("conv4,conv5", ("conv4", "conv5")), ("conv5+conv4", ("conv4", "conv5"))):
        assert parse_stages(text) == stages
        m = build_classifier(32, weights=str(path))
        assert trainable_count(m) == 525_315
        unfreeze(m, stages)
        trainable = {lay.name for lay in m.layers if lay.trainable and lay.weights}
        want = {lay.name for lay in ref.layers if lay.name.split("_")[0] in stages and isinstance(lay, keras.layers.Conv2D)}
        assert trainable == want | {"fc256", "probabilities"}
        n_conv = sum(int(np.prod(w.shape)) for lay in ref.layers if lay.name in want for w in lay.weights)
        assert trainable_count(m) == 525_315 + n_conv
    with pytest.raises(ValueError, match="conv6"):
        parse_stages("conv6")
    assert parse_stages("none") == ()


@pytest.mark.slow
def test_pretrained_fine_tuning_end_to_end_on_the_real_sample(standin_h5, sample, tmp_path):
    """`busi-train fit --weights FILE.h5 --fine-tune conv5` on the 24 real BUSI images: the file's
    weights are loaded, the first phase trains the head only, the second conv5's convolutions
    only (batch-norm statistics and every other stage stay the file's), and the card says so."""
    from helpers import cli

    path, ref = standin_h5
    out = tmp_path / "ft"
    r = cli("busi-train", "fit", "--data", sample, "--out", out, "--weights", path, "--image-size", 32, "--epochs", 1,
            "--batch-size", 8, "--fine-tune", "conv5", "--fine-tune-epochs", 1, "--patience", 3, "--near-ood", "none")
    import csv

    from busi.runtime.card import ModelCard

    card = ModelCard.load(out / "card.json")
    conv5 = sum(int(np.prod(w.shape)) for lay in ref.layers
                if lay.name.startswith("conv5_") and isinstance(lay, keras.layers.Conv2D) for w in lay.weights)
    assert card.architecture["trainable_parameters"] == 525_315 + conv5
    assert card.training["fine_tune"] == "conv5" and card.training["fine_tune_from_epoch"] == 1
    assert card.training["epochs_run"] == 2
    m = keras.saving.load_model(out / "model.keras", compile=False)
    for name in ("conv1_conv", "conv4_block6_3_conv", "conv5_block1_1_bn", "conv5_block3_3_bn"):
        for a, b in zip(m.get_layer(name).get_weights(), ref.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert f"fine-tuning conv5: {sum(n.startswith('conv5_') for n in (lay.name for lay in ref.layers if isinstance(lay, keras.layers.Conv2D))) } layers, {525_315 + conv5:,} trainable" in r.stderr
    # the kept weights are the lower validation loss of the two epochs: fine-tuned conv5 or the head's
    losses = [float(h["val_loss"]) for h in csv.DictReader((out / "history.csv").open())]
    tuned = losses[1] < losses[0]
    for n in ("conv5_block1_1_conv", "conv5_block3_3_conv"):
        assert (not np.array_equal(m.get_layer(n).get_weights()[0], ref.get_layer(n).get_weights()[0])) == tuned, n
