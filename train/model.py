"""The masked ResNet50 classifier, with preprocessing inside the graph.

Inputs: `image` (N, H, W, 3) float32 RGB 0..255 and `mask` (N, H, W, 1) float32 0/1.
Graph: image * mask -> ResNet50 preprocessing (RGB->BGR, ImageNet mean) -> ResNet50
(include_top=False, layer names kept, so `conv5_block3_out` is reachable) -> global average
pooling -> Dense 256 relu -> Dropout 0.5 -> Dense 3 softmax named `probabilities`.
"""

from __future__ import annotations

from pathlib import Path

from busi.runtime.errors import WeightsUnavailable

from .backend import keras

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
LAST_CONV = "conv5_block3_out"
#: x @ P reverses the channel axis: output channel j is input channel 2 - j
_RGB_TO_BGR = [[1.0 if i == 2 - j else 0.0 for j in range(3)] for i in range(3)]
PREPROCESS = "resnet_preprocess"


@keras.saving.register_keras_serializable(package="busi")
class ResNetPreprocess(keras.layers.Layer):
    """keras.applications.resnet50.preprocess_input ('caffe' mode) as a serializable layer."""

    def call(self, x):
        # RGB -> BGR as a product with a 3x3 permutation matrix, not flip(): tf2onnx turns a
        # flip of the channel axis into Transpose (channels first, batch last) ->
        # ReverseSequence -> Transpose, two full-image transposes with the worst strides
        # (11 % of the INT8 run at 224 px). A product by a permutation is exact (1*x + 0*y +
        # 0*z) and stays channels-last, where ONNX Runtime cancels the transpose in front of
        # the INT8 backbone. (Tried too: a 1x1 Conv, which ORT runs in its blocked float
        # layout with a reorder, 1.7 ms slower per batch of 8; a Gather, 1.7 ms slower.)
        bgr = keras.ops.matmul(x, keras.ops.convert_to_tensor(_RGB_TO_BGR, dtype=x.dtype))
        return bgr - keras.ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=x.dtype)


def build_classifier(
    size: int = 224,
    weights: str | None = "imagenet",
    freeze: bool | None = None,
    dropout: float = 0.5,
    n_classes: int = 3,
    bn_momentum: float | None = None,
) -> keras.Model:
    """Build the masked ResNet50. `weights`: "imagenet", None/"none", or a local .h5 path.

    The backbone is frozen when pretrained and trainable from scratch, unless `freeze` says.
    `bn_momentum` overrides the batch-norm moving-average momentum (0.99 in ResNet50); a
    from-scratch run on a few hundred images needs a faster one for its moving statistics to
    settle, else validation loss explodes while training loss falls.
    """
    if weights in (None, "none"):
        weights = None
    elif weights != "imagenet":
        p = Path(weights)
        if not p.is_file():
            raise WeightsUnavailable(f"{weights}: weights file not found")
        weights = str(p)
    if freeze is None:
        freeze = weights is not None
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    mask = keras.Input((size, size, 1), name="mask", dtype="float32")
    x = keras.layers.Multiply(name="apply_mask")([image, mask])
    x = ResNetPreprocess(name=PREPROCESS)(x)
    try:
        backbone = keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x)
    except Exception as e:  # no network, bad file, wrong architecture
        if weights == "imagenet":
            raise WeightsUnavailable(
                "cannot download the ImageNet ResNet50 weights (no network?): pass "
                "--weights PATH.h5 (resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 copied "
                f"from a machine with network) or --weights none to train from scratch [{type(e).__name__}]"
            ) from None
        raise WeightsUnavailable(f"{weights}: cannot load as ResNet50 (no top) weights: {e}") from None
    for layer in backbone.layers:
        if layer.name not in ("image", "mask", "apply_mask", PREPROCESS):
            layer.trainable = not freeze
        if bn_momentum is not None and isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    feats = backbone.output
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(feats)
    x = keras.layers.Dense(256, activation="relu", name="fc256")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    # float32 whatever the policy: under --precision mixed the softmax must not run in float16
    out = keras.layers.Dense(n_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs={"image": image, "mask": mask}, outputs=out, name="busi_masked_resnet50")


def unfreeze(model: keras.Model, stages: tuple[str, ...]) -> list[str]:
    """Make the convolutions of the named backbone stages trainable, for fine-tuning after the
    head has converged. Batch normalization stays frozen (trainable=False: Keras runs it in
    inference mode with the ImageNet moving statistics, which a few hundred images in batches
    of 32 would only disturb). Returns the names of the layers made trainable."""
    changed = []
    for layer in model.layers:
        if layer.name.split("_")[0] in stages and layer.weights:
            trainable = not isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = trainable
            if trainable:
                changed.append(layer.name)
    return changed


def trainable_count(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))
