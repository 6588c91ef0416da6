"""Small building blocks shared by the backbone, FPN and SSH.

PyTorch pads a 3x3 convolution by one pixel on every side; Keras' ``"same"`` pads stride-2
convolutions asymmetrically (0 before, 1 after on even sizes), which shifts every feature by a
pixel. Stride-2 convolutions therefore get an explicit symmetric ``ZeroPadding2D(1)`` and
``"valid"`` padding, so the layers line up with the reference for any input size.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 == Keras momentum 0.9

# PyTorch's default initialisation of nn.Conv2d (kaiming_uniform_(a=sqrt(5))): weights and biases
# uniform in +-1/sqrt(fan_in), fan_in = kernel area x input channels per group. Keras' default
# (glorot_uniform, zero bias) draws FPN/SSH kernels about twice as large; behind BatchNorm that
# quarters their effective learning rate, and the heads start with larger outputs, so a run from
# the ImageNet backbone learns measurably slower than the reference's. Layers trained from
# scratch therefore start as the reference's do. Each layer gets its own initialiser: a Keras
# initialiser fixes its seed when it is created, so one shared instance would give every layer of
# the same shape the same kernel (and the others the same numbers rescaled).


def torch_conv_init() -> keras.initializers.Initializer:
    """A new ``kaiming_uniform_(a=sqrt(5))`` kernel initialiser (``U(+-1/sqrt(fan_in))``)."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def torch_uniform(fan_in: int) -> keras.initializers.Initializer:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's conv bias (and depthwise kernel) default."""
    bound = 1.0 / float(fan_in) ** 0.5
    return keras.initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package="retinaface_tf")
class BatchNormalization(layers.BatchNormalization):
    """Keras' ``BatchNormalization`` whose training step is one fused kernel, with PyTorch's
    running statistics.

    The class keeps Keras' name on purpose: a ``.weights.h5`` file addresses a functional model's
    layers by their class name (``layers/batch_normalization_3/vars``), so every weights file
    written before, bundled, converted or trained, loads unchanged.

    In training (``training=True`` on a trainable layer over an NHWC map) Keras 3 normalises with
    separate ``Mean`` / ``SquaredDifference`` / ``Mul`` / ``Sub`` passes over the activation map,
    and its gradient with as many more (``Tile``, ``Sum``, ``Mul``): a fifth of a mobilenet0.25
    training step on the CPU. This layer calls TensorFlow's ``FusedBatchNormV3`` instead (one pass
    forward, one backward; oneDNN's kernel where oneDNN is on). The output is the same
    normalisation (batch mean, biased batch variance, ``epsilon``); the running variance is
    updated with the *unbiased* batch variance, as PyTorch's ``BatchNorm2d`` (and the reference)
    does, where Keras uses the biased one. Inference, frozen layers, masks and other layouts run
    Keras' own code unchanged.
    """

    def call(self, inputs, training=None, mask=None):
        if (not training or not self.trainable or mask is not None or len(inputs.shape) != 4
                or self.axis not in (-1, 3) or not (self.center and self.scale) or self.synchronized):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")
        y, running_mean, running_variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"),
            mean=tf.cast(self.moving_mean, "float32"), variance=tf.cast(self.moving_variance, "float32"),
            epsilon=self.epsilon, data_format="NHWC", is_training=True,
            exponential_avg_factor=1.0 - self.momentum)
        self.moving_mean.assign(tf.cast(running_mean, self.moving_mean.dtype))
        self.moving_variance.assign(tf.cast(running_variance, self.moving_variance.dtype))
        return tf.cast(y, inputs.dtype)


def _pad_and_padding(x, kernel: int, stride: int, name: str):
    if kernel == 1:
        return x, "valid"
    if stride == 1:
        return x, "same"
    return layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x), "valid"


def activation(x, leaky: float | str | None, name: str):
    """``None``: no activation; ``0`` or ``"relu"``: ReLU; ``"relu6"``: ReLU6; a number:
    LeakyReLU(leaky). The layer is named ``{name}_relu``."""
    return _activation(x, leaky, f"{name}_relu")


def _activation(x, act, layer_name: str):
    if act is None:
        return x
    if act == "relu6":
        return layers.ReLU(max_value=6.0, name=layer_name)(x)
    if act == "relu" or act == 0:
        return layers.ReLU(name=layer_name)(x)
    return layers.LeakyReLU(negative_slope=float(act), name=layer_name)(x)


def conv_bn(x, filters: int, *, kernel: int = 3, stride: int = 1, leaky: float | None, name: str):
    """Conv (no bias) → BatchNorm → optional (Leaky)ReLU: the reference's ``conv_bn``,
    ``conv_bn_no_relu`` (``leaky=None``) and ``conv_bn1X1`` (``kernel=1``); layers
    ``{name}_conv``, ``{name}_bn``, ``{name}_relu``."""
    return KerasBlocks().conv(x, filters, kernel, stride, act=leaky, conv=f"{name}_conv", bn=f"{name}_bn",
                              act_name=f"{name}_relu")


class KerasBlocks:
    """The building blocks of a backbone as trainable Keras layers (see
    :mod:`retinaface_tf.models.backbones`): every convolution without bias, then BatchNorm, then
    the activation; stride-2 convolutions pad symmetrically like PyTorch. ``act``: ``None``,
    ``"relu"``, ``"relu6"`` or a LeakyReLU slope. Layer names are given by the architecture
    (``conv``, ``bn``; the activation ``act_name``, default ``{bn}_act``)."""

    def conv(self, x, filters: int, kernel: int, stride: int, *, act, conv: str, bn: str,
             act_name: str | None = None, residual=None):
        """``act(bn(conv(x)) [+ residual])``."""
        x, padding = _pad_and_padding(x, kernel, stride, conv)
        x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                          kernel_initializer=torch_conv_init(), name=conv)(x)
        x = BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn)(x)
        if residual is not None:
            x = layers.Add(name=f"{bn}_add")([x, residual])
        return _activation(x, act, act_name or f"{bn}_act")

    def depthwise(self, x, kernel: int, stride: int, *, act, conv: str, bn: str, act_name: str | None = None):
        """``act(bn(depthwise_conv(x)))`` (one filter per channel)."""
        x, padding = _pad_and_padding(x, kernel, stride, conv)
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                                   depthwise_initializer=torch_uniform(kernel * kernel), name=conv)(x)
        x = BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn)(x)
        return _activation(x, act, act_name or f"{bn}_act")

    def max_pool(self, x, *, name: str):
        """3x3 max-pool, stride 2, one pixel of zero padding on every side (after a ReLU this is
        PyTorch's ``MaxPool2d(3, 2, padding=1)``, which pads with ``-inf``)."""
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        return layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)


@keras.saving.register_keras_serializable(package="retinaface_tf")
class UpsampleLike(layers.Layer):
    """Nearest-neighbour resize of ``inputs[0]`` to the spatial size of ``inputs[1]``.

    Uses the legacy (``half_pixel_centers=False``) index rule ``src = floor(dst * in / out)``,
    which is PyTorch's ``F.interpolate(mode="nearest", size=...)``, so odd feature sizes (inputs
    that are not multiples of 32) upsample exactly as in the reference.
    """

    def call(self, inputs):
        x, like = inputs
        size = tf.shape(like)[1:3]
        return tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=False, half_pixel_centers=False)

    def compute_output_shape(self, input_shapes):
        x_shape, like_shape = input_shapes
        return (x_shape[0], like_shape[1], like_shape[2], x_shape[3])
