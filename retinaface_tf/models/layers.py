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


def _pad_and_padding(x, kernel: int, stride: int, name: str):
    if kernel == 1:
        return x, "valid"
    if stride == 1:
        return x, "same"
    return layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x), "valid"


def activation(x, leaky: float | None, name: str):
    """``None``: no activation; ``0``: ReLU; otherwise LeakyReLU(leaky)."""
    if leaky is None:
        return x
    if leaky == 0:
        return layers.ReLU(name=f"{name}_relu")(x)
    return layers.LeakyReLU(negative_slope=leaky, name=f"{name}_relu")(x)


def conv_bn(x, filters: int, *, kernel: int = 3, stride: int = 1, leaky: float | None, name: str):
    """Conv (no bias) → BatchNorm → optional (Leaky)ReLU: the reference's ``conv_bn``,
    ``conv_bn_no_relu`` (``leaky=None``) and ``conv_bn1X1`` (``kernel=1``)."""
    x, padding = _pad_and_padding(x, kernel, stride, name)
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                      kernel_initializer=torch_conv_init(), name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return activation(x, leaky, name)


def conv_dw(x, filters: int, *, stride: int, leaky: float, name: str):
    """Depthwise 3x3 → BN → LeakyReLU → pointwise 1x1 → BN → LeakyReLU (the reference's ``conv_dw``)."""
    x, padding = _pad_and_padding(x, 3, stride, name)
    x = layers.DepthwiseConv2D(3, strides=stride, padding=padding, use_bias=False,
                               depthwise_initializer=torch_uniform(9), name=f"{name}_dw")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = activation(x, leaky, f"{name}_dw")
    x = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=torch_conv_init(), name=f"{name}_pw")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_pw_bn")(x)
    return activation(x, leaky, f"{name}_pw")


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
