"""Inference-only RetinaFace: the trained network rebuilt with batch norm folded into its
convolutions and with op patterns TensorFlow's CPU backend (grappler remapper + oneDNN) runs as
single fused kernels. Same input, same output dict, same numbers (to float rounding).

>>> from retinaface_tf.models.weights import load_model
>>> from retinaface_tf.models import preprocess
>>> from retinaface_tf.models.fused import fuse_for_inference
>>> model, cfg = load_model()
>>> fast = fuse_for_inference(model)           # a new keras.Model; ``model`` is not changed
>>> out = fast(preprocess(images))               # {"bbox", "classes", "landmarks"} as model's

:class:`retinaface_tf.Detector` runs this network by default (``fused=False``: the trained one).

What changes (see ``benchmarks/PROFILE.md`` for the profile that motivated each item):

- **Batch norm folded.** Keras 3's ``BatchNormalization`` in inference is ``x * inv + (beta -
  mean * inv)``: a ``Mul`` and an ``AddV2`` over every activation map, which grappler cannot
  fuse into the convolution (it fuses ``FusedBatchNormV3``, which Keras 3 no longer emits). Each
  conv → BN pair becomes one convolution with bias: ``w' = w * s``, ``b' = beta + (b - mean) *
  s``, ``s = gamma / sqrt(var + eps)`` (folded in float64, stored as float32).
- **Bias and activation in the convolution kernel.** Every convolution is ``Conv2D`` →
  ``BiasAdd`` → ``LeakyRelu`` / ``Relu`` (or nothing), which the remapper turns into one
  ``_FusedConv2D`` (oneDNN: ``_MklNativeFusedConv2D``): no separate pass over the output.
- **Depthwise convolutions as grouped convolutions** (``Conv2D`` with ``groups = channels``,
  filter ``[3, 3, 1, C]``). oneDNN fuses ``DepthwiseConv2dNative`` with ``BiasAdd`` + ``Relu``
  but not with ``LeakyRelu`` (a separate op), and the depthwise op cannot take explicit padding
  (grappler's shape inference aborts the process on it in TF 2.21); the grouped ``Conv2D`` does
  both, and is exactly the same arithmetic (bitwise equal outputs in our tests).
- **Padding folded into the convolution.** The stride-2 convolutions pad one pixel on every side
  like PyTorch (Keras' ``"same"`` would pad 0 before / 1 after); the explicit ``ZeroPadding2D``
  becomes the convolution's own explicit padding ``[[0, 0], [1, 1], [1, 1], [0, 0]]`` (same
  pixels, no padded copy of the input).
- **SSH ReLU pushed into the branches.** ``relu(concat(a, b, c)) == concat(relu(a), relu(b),
  relu(c))``: each of the three branch convolutions fuses its ReLU, no pass after the concat.
- **The three heads of a level as one 1x1 convolution** (``2 x (4 + 2 + 10) = 32`` output
  channels, anchor-major), levels concatenated once and split into bbox / classes / landmarks at
  the end: the level's features are read once instead of three times, 3 convolutions and 3
  concats instead of 9 and 3 (``merge_heads=False`` keeps them apart). The Detector and the
  SavedModel's detection signatures skip even that split (:func:`merged_heads`): post-processing
  gathers the few rows it keeps from the merged tensor and slices those (``SplitV`` of every
  anchor cost 0.28 ms at 640x480, more than the rest of the post-processing).

- **Winograd for the wide 3x3 convolutions.** Every 3x3 stride-1 convolution with at least
  :data:`WINOGRAD_CHANNELS` (128) input and output channels (ResNet stages 2-4, the FPN merges
  and the SSH of the 256-channel FPN) is computed as Winograd F(2x2, 3x3)
  (:mod:`retinaface_tf.ops.winograd`): 2.25x fewer multiply-adds for some passes over memory,
  8-19 % faster on ResNet-18 / 50 networks (``benchmarks/winograd.py``); none of mobilenet0.25's
  layers qualifies. TFLite and ONNX conversions keep the direct convolution.

``depthwise="native"`` keeps ``DepthwiseConv2dNative`` (+ an explicit ``Pad`` for stride 2),
e.g. for a TFLite conversion, where ``DEPTHWISE_CONV_2D`` is the kernel XNNPACK expects;
:func:`fuse_for_tflite` is the whole TFLite form (native depthwise, heads apart, nearest 2x
upsampling as concatenations: :class:`UpsampleLikeConcat`).

Every backbone of the registry (:mod:`retinaface_tf.models.backbones`) is rebuilt fused from its
one architecture definition (:class:`FusedBlocks`): residual blocks end in one convolution that
adds the shortcut and applies the ReLU (``BiasAdd`` → ``AddV2`` → ``Relu``, one oneDNN kernel).

How the network is run (TensorFlow, LiteRT) lives in :mod:`retinaface_tf.runtimes`.
"""

from __future__ import annotations

import functools

import numpy as np
import keras
import tensorflow as tf
from keras import layers

from retinaface_tf.constants import BGR_MEAN
from retinaface_tf.models.backbones import get_backbone
from retinaface_tf.models.layers import UpsampleLike
from retinaface_tf.ops.anchors import region_mask
from retinaface_tf.ops.nms import HeadColumns
from retinaface_tf.ops.winograd import winograd_conv3x3, winograd_kernels

try:  # whether TensorFlow runs its oneDNN CPU kernels (private, but what TF's own tests use)
    from tensorflow.python.util._pywrap_util_port import IsMklEnabled as _onednn_enabled
except ImportError:  # pragma: no cover - another TensorFlow layout: take the portable path
    def _onednn_enabled() -> bool:
        return False

ACTIVATIONS = (None, "relu", "relu6", "leaky_relu")
DEPTHWISE_MODES = ("grouped", "native")
# 3x3 stride-1 convolutions with at least this many input and output channels run as Winograd
# F(2x2, 3x3) in TensorFlow: measured per layer and per network (benchmarks/winograd.py,
# RESULTS.md), 64 channels lose at 160x160 maps and 128 gains on every network and size timed,
# with oneDNN and without.
WINOGRAD_CHANNELS = 128


def winograd_applies(kernel_size: int, strides: int, depthwise: str | None, padding: str) -> bool:
    """Whether a :class:`FusedConv` of these settings can run as Winograd F(2x2, 3x3): a full
    (not depthwise) 3x3 stride-1 convolution with one pixel of padding."""
    return int(kernel_size) == 3 and int(strides) == 1 and depthwise is None and padding != "valid"


def default_depthwise() -> str:
    """The depthwise form :func:`fuse_for_inference` uses by default: ``"grouped"`` where
    TensorFlow runs oneDNN (its default on x86 CPUs with AVX-512 VNNI / BF16 or AMX, and wherever
    ``TF_ENABLE_ONEDNN_OPTS=1``), whose fused kernel runs a grouped convolution with its bias and
    leaky ReLU in one pass; ``"native"`` elsewhere (other CPUs, ``TF_ENABLE_ONEDNN_OPTS=0``,
    builds without oneDNN), where TensorFlow's own fused kernel refuses grouped convolutions
    ("Fused conv implementation does not support grouped convolutions") and the grouped graph
    would fail at its first call."""
    return "grouped" if _onednn_enabled() else "native"


@keras.saving.register_keras_serializable(package="retinaface_tf")
class FusedConv(layers.Layer):
    """Convolution + bias + optional (leaky) ReLU with constant (folded) weights, written as the
    ops TensorFlow fuses into one CPU kernel.

    Args:
      filters: output channels (for ``depthwise``: equals the input channels).
      kernel_size: square kernel size (1 or 3 here).
      strides: 1 or 2.
      padding: ``"valid"``, ``"same"`` or ``"symmetric"`` (``k // 2`` pixels on every side, the
        reference's padding for any stride; equals ``"same"`` at stride 1 for odd kernels).
      activation: ``None``, ``"relu"``, ``"relu6"`` or ``"leaky_relu"`` (with ``negative_slope``).

    Called on ``x`` or on ``[x, residual]``: ``activation(conv(x) + bias + residual)`` (a residual
    block's add, in the order TensorFlow fuses as one kernel: ``BiasAdd`` → ``AddV2`` → ``Relu``).
      depthwise: ``None`` (full convolution), ``"grouped"`` (depthwise as a grouped ``Conv2D``)
        or ``"native"`` (``DepthwiseConv2dNative``).
      winograd: a 3x3 stride-1 full convolution computed as Winograd F(2x2, 3x3)
        (:mod:`retinaface_tf.ops.winograd`); its weights are then the 16 ``[1, 1, C, K]``
        transformed kernels ``kernel_00 .. kernel_33`` (:func:`winograd_kernels`), then the bias.
    """

    def __init__(self, filters: int, kernel_size: int, *, strides: int = 1, padding: str = "same",
                 activation: str | None = None, negative_slope: float = 0.0, depthwise: str | None = None,
                 winograd: bool = False, **kwargs):
        super().__init__(**kwargs)
        if padding not in ("valid", "same", "symmetric"):
            raise ValueError(f"padding must be 'valid', 'same' or 'symmetric', got {padding!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if depthwise not in (None, *DEPTHWISE_MODES):
            raise ValueError(f"depthwise must be None or one of {DEPTHWISE_MODES}, got {depthwise!r}")
        if winograd and not winograd_applies(kernel_size, strides, depthwise, padding):
            raise ValueError("winograd: only a full 3x3 stride-1 convolution with one pixel of padding, got "
                             f"kernel {kernel_size}, stride {strides}, depthwise {depthwise}, padding {padding!r}")
        self.winograd = bool(winograd)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = padding
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.depthwise = depthwise

    def build(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]  # [x, residual]
        cin = int(input_shape[-1])
        k = self.kernel_size
        if self.depthwise and cin != self.filters:
            raise ValueError(f"{self.name}: a depthwise convolution keeps its {cin} channels, "
                             f"got filters={self.filters}")
        if self.depthwise == "grouped":
            shape = (k, k, 1, cin)
        elif self.depthwise == "native":
            shape = (k, k, cin, 1)
        else:
            shape = (k, k, cin, self.filters)
        if self.winograd:
            self.kernels = [[self.add_weight(name=f"kernel_{a}{b}", shape=(1, 1, cin, self.filters),
                                             initializer="zeros", trainable=False) for b in range(4)] for a in range(4)]
        else:
            self.kernel = self.add_weight(name="kernel", shape=shape, initializer="zeros", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros", trainable=False)

    def _tf_padding(self):
        k, s = self.kernel_size, self.strides
        if self.padding == "valid" or k == 1:
            return "VALID"
        if self.padding == "same" or (s == 1 and k % 2 == 1):
            return "SAME"  # at stride 1 (odd k) also k // 2 on every side, i.e. "symmetric"
        return [[0, 0], [k // 2, k // 2], [k // 2, k // 2], [0, 0]]

    def call(self, x):
        residual = None
        if isinstance(x, (list, tuple)):
            x, residual = x
        s = self.strides
        padding = self._tf_padding()
        if self.winograd:
            y = winograd_conv3x3(x, self.kernels, self.bias)
        elif self.depthwise == "native":
            if isinstance(padding, list):  # DepthwiseConv2dNative cannot take explicit padding
                x = tf.pad(x, padding)
                padding = "VALID"
            y = tf.nn.depthwise_conv2d(x, self.kernel, [1, s, s, 1], padding)
        else:  # tf.nn.conv2d with a [k, k, 1, C] filter on C channels is a grouped (depthwise) conv
            y = tf.nn.conv2d(x, self.kernel, s, padding)
        if not self.winograd:
            y = tf.nn.bias_add(y, self.bias)
        if residual is not None:
            y = y + residual
        if self.activation == "relu":
            y = tf.nn.relu(y)
        elif self.activation == "relu6":
            y = tf.nn.relu6(y)
        elif self.activation == "leaky_relu":
            y = tf.nn.leaky_relu(y, alpha=self.negative_slope)
        return y

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]
        b, h, w, _ = input_shape
        k, s = self.kernel_size, self.strides

        def out(n):
            if n is None:
                return None
            if self.padding == "valid" or k == 1:
                return (n - k) // s + 1
            if self.padding == "same":
                return -(-n // s)
            return (n + 2 * (k // 2) - k) // s + 1

        return (b, out(h), out(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "activation": self.activation,
                "negative_slope": self.negative_slope, "depthwise": self.depthwise, "winograd": self.winograd}


@keras.saving.register_keras_serializable(package="retinaface_tf")
class SplitHeads(layers.Layer):
    """``[B, N, sum(sizes)]`` → a dict ``{name: [B, N, size]}`` (the merged heads' split)."""

    def __init__(self, names, sizes, **kwargs):
        super().__init__(**kwargs)
        self.names = tuple(names)
        self.sizes = tuple(int(s) for s in sizes)

    def call(self, x):
        return dict(zip(self.names, tf.split(x, self.sizes, axis=-1)))

    def compute_output_shape(self, input_shape):
        return {n: (input_shape[0], input_shape[1], s) for n, s in zip(self.names, self.sizes)}

    def get_config(self):
        return {**super().get_config(), "names": list(self.names), "sizes": list(self.sizes)}


@keras.saving.register_keras_serializable(package="retinaface_tf")
class UpsampleLikeConcat(UpsampleLike):
    """:class:`~retinaface_tf.models.layers.UpsampleLike` (PyTorch's nearest rule) that, when
    the traced shapes are static and the target is exactly twice the source (every input size
    that is a multiple of 32), duplicates columns and rows with two concatenations and reshapes
    instead of ``ResizeNearestNeighbor``: the same values, bit for bit, in ops that XNNPACK
    delegates (it has no nearest-neighbour resize, so in a TFLite model the resize splits the
    delegated graph, and its int8 version runs on the slow built-in kernel). Any other shape
    falls back to the resize."""

    def call(self, inputs):
        x, like = inputs
        b, h, w, c = x.shape
        _, lh, lw, _ = like.shape
        if None in (b, h, w, c, lh, lw) or (lh, lw) != (2 * h, 2 * w):
            return super().call(inputs)
        y = tf.reshape(tf.concat([x, x], axis=3), [b, h, 2 * w, c])  # y[:, i, 2j + k] = x[:, i, j]
        return tf.reshape(tf.concat([y, y], axis=2), [b, 2 * h, 2 * w, c])  # rows likewise


MEAN_BORDER = "mean_border"  # the name of the MeanBorder layer of a uint8-input network


# ---------------------------------------------------------------------- folding
class ValidRegion(layers.Layer):
    """``x`` with every position outside each image's own extent set to 0 (``inputs = [x,
    sizes]``, ``sizes [B, 2]`` int ``(h, w)`` in input pixels; :func:`retinaface_tf.ops.anchors.region_mask`
    at this layer's ``stride``): what an image padded into a larger canvas must see where, run
    alone, it would have had the convolutions' zero padding."""

    def __init__(self, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)

    def call(self, inputs):
        x, sizes = inputs
        shape = tf.shape(x)
        return x * region_mask(sizes, shape[1], shape[2], self.stride, x.dtype)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable(package="retinaface_tf")
class MeanBorder(layers.Layer):
    """uint8 ``[B, H, W, 3]`` image → float32 ``[B, H + 2p, W + 2p, 3]``: the image inside a
    border of ``p`` pixels of the colour ``mean`` (integers, in the image's channel order), cast
    to float. A convolution with no padding over it, its bias lowered by the kernel applied to
    ``mean``, computes the convolution with ``p`` pixels of zero padding over ``image - mean``
    (to float rounding): the mean subtraction folded into the first convolution, so the image is
    cast once and never has the mean subtracted in a pass of its own. The border is built in
    uint8 (two concatenations of a quarter of the float bytes)."""

    def __init__(self, mean, pad: int = 1, **kwargs):
        super().__init__(autocast=False, **kwargs)
        mean = tuple(float(m) for m in mean)
        if len(mean) != 3 or not all(m.is_integer() and 0 <= m <= 255 for m in mean):
            raise ValueError(f"MeanBorder: mean must be 3 integers in 0..255, got {mean}")
        self.mean = mean
        self.pad = int(pad)

    def call(self, x):
        shape = tf.shape(x)
        p = self.pad
        colour = tf.constant([int(m) for m in self.mean], tf.uint8)
        rows = tf.broadcast_to(colour, tf.stack([shape[0], p, shape[2], 3]))
        x = tf.concat([rows, x, rows], axis=1)
        cols = tf.broadcast_to(colour, tf.stack([shape[0], shape[1] + 2 * p, p, 3]))
        return tf.cast(tf.concat([cols, x, cols], axis=2), tf.float32)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h + 2 * self.pad, None if w is None else w + 2 * self.pad, c)

    def compute_output_spec(self, x):
        return keras.KerasTensor(self.compute_output_shape(x.shape), dtype="float32")

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "pad": self.pad}


def _np(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def fold_batch_norm(conv, bn) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of ``bn(conv(x))`` as one convolution (float32 arrays).

    ``conv``: a Keras ``Conv2D`` (kernel ``[k, k, cin, cout]``) or ``DepthwiseConv2D`` (kernel
    ``[k, k, cin, multiplier]``), with or without bias; ``bn``: a ``BatchNormalization`` over the
    last axis, or ``None`` (no BN: the convolution's own weights)."""
    kernel = _np(conv.kernel)
    depthwise = isinstance(conv, layers.DepthwiseConv2D)
    channels = kernel.shape[2] * kernel.shape[3] if depthwise else kernel.shape[3]
    bias = _np(conv.bias) if conv.use_bias else np.zeros(channels)
    if bn is None:
        return kernel.astype(np.float32), bias.astype(np.float32)
    if bn.axis not in (-1, 3, [-1], [3]):
        raise ValueError(f"{bn.name}: only batch norm over the channel (last) axis can be folded")
    n = bias.shape[0]
    gamma = _np(bn.gamma) if bn.scale else np.ones(n)
    beta = _np(bn.beta) if bn.center else np.zeros(n)
    scale = gamma / np.sqrt(_np(bn.moving_variance) + float(bn.epsilon))
    if depthwise:  # output channel c * multiplier + m
        k = kernel.shape
        kernel = (kernel.reshape(k[0], k[1], -1) * scale).reshape(k)
    else:
        kernel = kernel * scale
    bias = beta + (bias - _np(bn.moving_mean)) * scale
    return kernel.astype(np.float32), bias.astype(np.float32)


class _Weights:
    """Folded weights by block name, looked up in the trained model (and its nested backbone)."""

    def __init__(self, model):
        self._layers = {}
        self._collect(model)

    def _collect(self, model):
        for layer in model.layers:
            self._layers.setdefault(layer.name, layer)
            if isinstance(layer, keras.Model):
                self._collect(layer)

    def layer(self, name):
        try:
            return self._layers[name]
        except KeyError:
            raise ValueError(f"fuse_for_inference: the model has no layer {name!r} (not a RetinaFace "
                             "built by retinaface_tf.models.build_retinaface?)") from None

    def conv_bn(self, name, conv_suffix="_conv", bn_suffix="_bn"):
        return fold_batch_norm(self.layer(name + conv_suffix), self.layer(name + bn_suffix))


def _fused(x, kernel, bias, *, stride=1, activation, slope, depthwise=None, name, padding=None,
           winograd_channels: int | None = None):
    """A :class:`FusedConv` named ``name`` over ``x`` holding ``kernel`` and ``bias``; a 3x3
    stride-1 full convolution with at least ``winograd_channels`` input and output channels is
    computed as Winograd F(2x2, 3x3) (``None``: never)."""
    k = kernel.shape[0]
    filters = bias.shape[0]
    padding = padding or ("symmetric" if k > 1 else "valid")
    winograd = (winograd_channels is not None and winograd_applies(k, stride, depthwise, padding)
                and min(kernel.shape[2], kernel.shape[3]) >= winograd_channels)
    layer = FusedConv(filters, k, strides=stride, padding=padding, activation=activation,
                      negative_slope=slope, depthwise=depthwise, winograd=winograd, name=name)
    y = layer(x)
    if depthwise == "grouped":
        kernel = kernel.transpose(0, 1, 3, 2)  # [k, k, C, 1] → [k, k, 1, C]
    if winograd:
        u = winograd_kernels(kernel)
        layer.set_weights([u[a, b][None, None] for a in range(4) for b in range(4)] + [bias])
    else:
        layer.set_weights([kernel, bias])
    return y


def _act(leaky):
    """The reference's activation setting → (FusedConv activation, slope)."""
    if leaky is None:
        return None, 0.0
    if leaky == 0:
        return "relu", 0.0
    return "leaky_relu", float(leaky)


# ---------------------------------------------------------------------- the fused network
class FusedBlocks:
    """The building blocks of :mod:`retinaface_tf.models.backbones` as :class:`FusedConv` layers
    holding the trained ``model``'s weights with batch norm folded in (the twin of
    :class:`~retinaface_tf.models.layers.KerasBlocks`: the same architecture function builds
    either). Activations given as a LeakyReLU slope are read from the trained layer
    (``act_name``), so the fused network computes what the trained one does.

    ``sizes`` (masked networks): every tensor a convolution of kernel > 1 (or the max-pool) reads
    is first zeroed outside each image's extent at its stride (:class:`ValidRegion`, once per
    tensor). The first convolution (the one reading ``inputs``) takes the channel flip of
    ``input_order="rgb"`` into its kernel and, with ``mean`` (a uint8 network input), the mean
    into its bias over a :class:`MeanBorder` of ``kernel // 2`` pixels."""

    def __init__(self, w: _Weights, inputs, *, depthwise: str, sizes=None, input_order: str = "bgr", mean=None,
                 winograd_channels: int | None = None):
        self.w, self.depthwise_mode, self.sizes = w, depthwise, sizes
        self.winograd_channels = winograd_channels
        self.input_order, self.mean = input_order, mean
        self.inputs = inputs
        self._stride = {id(inputs): (inputs, 1)}  # id -> (tensor, stride): the tensor keeps its id alive
        self._masked: dict[int, tuple] = {}
        self._regions = 0

    def _stride_of(self, x) -> int:
        return self._stride[id(x)][1]

    def _output(self, y, stride: int):
        self._stride[id(y)] = (y, stride)
        return y

    def _read(self, x, kernel: int):
        """``x`` as a convolution of ``kernel`` reads it (masked where that matters)."""
        if self.sizes is None or kernel == 1 or x is self.inputs:
            return x
        if id(x) not in self._masked:
            self._masked[id(x)] = (x, self.region(x, self._stride_of(x)))
        return self._masked[id(x)][1]

    def region(self, x, stride: int):
        """``x`` (a map of stride ``stride``) zeroed outside each image's extent."""
        self._regions += 1
        return ValidRegion(stride, name=f"valid_{self._regions}")([x, self.sizes])

    def _activation(self, act, act_name: str):
        if act is None:
            return None, 0.0
        if act in ("relu", "relu6"):
            return act, 0.0
        return _act(_slope_of(self.w, act_name))

    def conv(self, x, filters: int, kernel: int, stride: int, *, act, conv: str, bn: str,
             act_name: str | None = None, residual=None):
        weights, bias = fold_batch_norm(self.w.layer(conv), self.w.layer(bn))
        if weights.shape[-1] != filters or weights.shape[0] != kernel:
            raise ValueError(f"fuse_for_inference: {conv} has a {weights.shape} kernel, the architecture says "
                             f"{kernel}x{kernel} -> {filters}")
        activation, slope = self._activation(act, act_name or f"{bn}_act")
        padding, source = None, x
        if x is self.inputs:
            if self.input_order == "rgb":  # the channel flip folded into the first convolution: exact
                weights = np.ascontiguousarray(weights[:, :, ::-1, :])
            if self.mean is not None:  # the image in a border of the mean colour; the mean's share in the bias
                x = MeanBorder(self.mean, pad=kernel // 2, name=MEAN_BORDER)(x)
                bias = (bias.astype(np.float64)
                        - np.einsum("hwio,i->o", weights.astype(np.float64), self.mean)).astype(np.float32)
                padding = "valid"
        else:
            x = self._read(x, kernel)
        y = _fused(x if residual is None else [x, residual], weights, bias, stride=stride, activation=activation,
                   slope=slope, name=conv, padding=padding, winograd_channels=self.winograd_channels)
        return self._output(y, self._stride_of(source) * stride)

    def depthwise(self, x, kernel: int, stride: int, *, act, conv: str, bn: str, act_name: str | None = None):
        weights, bias = fold_batch_norm(self.w.layer(conv), self.w.layer(bn))
        activation, slope = self._activation(act, act_name or f"{bn}_act")
        y = _fused(self._read(x, kernel), weights, bias, stride=stride, activation=activation, slope=slope,
                   depthwise=self.depthwise_mode, name=conv)
        return self._output(y, self._stride_of(x) * stride)

    def max_pool(self, x, *, name: str):
        y = layers.ZeroPadding2D(1, name=f"{name}_pad")(self._read(x, 3))  # after a ReLU: as -inf padding
        y = layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(y)
        return self._output(y, self._stride_of(x) * 2)


def _slope_of(w: _Weights, name: str) -> float:
    """The negative slope of the trained model's activation layer ``name`` (ReLU: 0)."""
    layer = w.layer(name)
    if isinstance(layer, layers.LeakyReLU):
        return float(layer.negative_slope)
    if isinstance(layer, layers.ReLU) and not layer.negative_slope and layer.max_value is None and not layer.threshold:
        return 0.0
    raise ValueError(f"fuse_for_inference: {name} is a {type(layer).__name__}, expected ReLU or LeakyReLU")


def fuse_for_inference(model, *, depthwise: str | None = None, merge_heads: bool = True,
                       upsample: str = "resize", masked: bool = False, input_order: str = "bgr",
                       uint8_input: bool = False, winograd_channels: int | None = WINOGRAD_CHANNELS) -> keras.Model:
    """A new inference-only ``keras.Model`` computing ``model``'s outputs (same input, same
    output dict) with batch norm folded and TensorFlow-fusable op patterns (module docstring).

    ``model`` must be a RetinaFace from :func:`retinaface_tf.models.build_retinaface` (any
    backbone of the registry, rebuilt fused). Its weights are
    copied (folded) now: later changes to ``model`` do not reach the fused one. Inference only:
    ``training=True`` behaves as inference (no batch statistics).

    ``depthwise``: ``"grouped"`` (fastest in TensorFlow with oneDNN) or ``"native"``
    (``DepthwiseConv2dNative``, for TFLite and for TensorFlow without oneDNN); ``None``:
    :func:`default_depthwise`. ``merge_heads``: one 1x1 convolution per level for the three heads.
    ``upsample``: ``"resize"`` (``ResizeNearestNeighbor``) or ``"concat"``
    (:class:`UpsampleLikeConcat`, for TFLite / XNNPACK at sizes that are multiples of 32).
    For a TFLite export use ``depthwise="native", upsample="concat"``.

    ``masked``: a second input ``sizes [B, 2]`` int32 ``(h, w)``: images of different sizes padded
    into one canvas (top-left, padding 0 after the mean subtraction, canvas sides multiples of
    32). Every activation a 3x3 convolution reads is zeroed outside its image's own extent
    (:class:`ValidRegion`; 1x1 convolutions read only their own position, so what feeds them
    alone is left as it is), so inside the extent the outputs equal the image run alone (to
    float rounding).

    ``input_order="rgb"``: the network takes RGB minus the mean in RGB order instead of BGR minus
    the BGR mean (``preprocess(..., network_order="rgb")``): the first convolution's kernel has its
    input channels reversed, which removes the channel flip of RGB input (a separate pass over the
    image; in TFLite a ``REVERSE_V2`` that XNNPACK does not delegate).

    ``uint8_input=True``: the network takes the uint8 image itself (in ``input_order``), not the
    float image minus the mean: :class:`MeanBorder` pads it with the mean colour and casts it, and
    the first convolution (no padding of its own) carries the mean in its bias. One pass over the
    image (the cast) instead of a cast and a subtraction; the same outputs to float rounding (the
    first convolution sums raw pixels, then subtracts the mean's share). Not with ``masked``.

    ``winograd_channels``: every 3x3 stride-1 convolution with at least this many input and
    output channels is computed as Winograd F(2x2, 3x3) (:mod:`retinaface_tf.ops.winograd`: 2.25x
    fewer multiply-adds, the same outputs to float rounding); default :data:`WINOGRAD_CHANNELS`
    (ResNet backbones, FPN and SSH of 128+ channels; none of mobilenet0.25's layers); ``None``:
    none is (TFLite and ONNX conversions, whose runtimes have their own convolution kernels).
    """
    if input_order not in ("bgr", "rgb"):
        raise ValueError(f"input_order must be 'bgr' or 'rgb', got {input_order!r}")
    depthwise = default_depthwise() if depthwise is None else depthwise
    if depthwise not in DEPTHWISE_MODES:
        raise ValueError(f"depthwise must be one of {DEPTHWISE_MODES}, got {depthwise!r}")
    if upsample not in ("resize", "concat"):
        raise ValueError(f"upsample must be 'resize' or 'concat', got {upsample!r}")
    up = UpsampleLike if upsample == "resize" else UpsampleLikeConcat
    w = _Weights(model)
    backbone = next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)
    if backbone is None:
        raise ValueError("fuse_for_inference: no backbone sub-model found (not a RetinaFace model?)")
    spec = get_backbone(backbone.name)
    if uint8_input and masked:
        raise ValueError("fuse_for_inference(uint8_input=True): not masked (the canvas padding must be 0 after the mean)")
    inputs = keras.Input((None, None, 3), name="image", dtype="uint8" if uint8_input else "float32")
    mean = None
    if uint8_input:
        mean = np.asarray(BGR_MEAN if input_order == "bgr" else BGR_MEAN[::-1], np.float64)
    sizes = keras.Input((2,), name="sizes", dtype="int32") if masked else None
    blocks = FusedBlocks(w, inputs, depthwise=depthwise, sizes=sizes, input_order=input_order, mean=mean,
                         winograd_channels=winograd_channels)
    mask = blocks.region if masked else (lambda y, stride: y)
    # numeric (LeakyReLU) activations are read from the trained layers: the slope passed is not used
    features = spec.features(blocks, inputs, leaky=0.1)
    act, slope = _act(_slope_of(w, "fpn_output1_relu"))

    fused = functools.partial(_fused, winograd_channels=winograd_channels)
    # FPN (strides 8, 16, 32)
    c1, c2, c3 = features
    o1 = fused(c1, *w.conv_bn("fpn_output1"), activation=act, slope=slope, name="fpn_output1")
    o2 = fused(c2, *w.conv_bn("fpn_output2"), activation=act, slope=slope, name="fpn_output2")
    o3 = mask(fused(c3, *w.conv_bn("fpn_output3"), activation=act, slope=slope, name="fpn_output3"), 32)
    o2 = mask(layers.Add(name="fpn_add2")([o2, up(name="fpn_up3")([o3, o2])]), 16)
    o2 = mask(fused(o2, *w.conv_bn("fpn_merge2"), activation=act, slope=slope, name="fpn_merge2"), 16)  # → SSH
    o1 = mask(layers.Add(name="fpn_add1")([o1, up(name="fpn_up2")([o2, o1])]), 8)
    o1 = mask(fused(o1, *w.conv_bn("fpn_merge1"), activation=act, slope=slope, name="fpn_merge1"), 8)

    # SSH: relu(concat(a, b, c)) == concat(relu(a), relu(b), relu(c)), the ReLU fused per branch
    contexts = []
    for i, f in enumerate((o1, o2, o3)):
        n, stride = f"ssh{i + 1}", 8 * 2 ** i
        c3_ = fused(f, *w.conv_bn(f"{n}_conv3X3"), activation="relu", slope=0.0, name=f"{n}_conv3X3")
        c5_1 = fused(f, *w.conv_bn(f"{n}_conv5X5_1"), activation=act, slope=slope, name=f"{n}_conv5X5_1")
        c5_1 = mask(c5_1, stride)
        c5 = fused(c5_1, *w.conv_bn(f"{n}_conv5X5_2"), activation="relu", slope=0.0, name=f"{n}_conv5X5_2")
        c7_2 = mask(fused(c5_1, *w.conv_bn(f"{n}_conv7X7_2"), activation=act, slope=slope, name=f"{n}_conv7X7_2"),
                    stride)
        c7 = fused(c7_2, *w.conv_bn(f"{n}_conv7x7_3"), activation="relu", slope=0.0, name=f"{n}_conv7x7_3")
        contexts.append(layers.Concatenate(axis=-1, name=f"{n}_concat")([c3_, c5, c7]))

    heads = (("bbox", "BboxHead", 4), ("classes", "ClassHead", 2), ("landmarks", "LandmarkHead", 10))
    if merge_heads:
        per_anchor = sum(size for _, _, size in heads)
        flat = []
        for i, f in enumerate(contexts):
            kernels, biases = [], []
            parts = [fold_batch_norm(w.layer(f"{layer}_{i}"), None) for _, layer, _ in heads]
            num_anchors = parts[0][1].shape[0] // heads[0][2]
            for a in range(num_anchors):  # anchor-major: [a0: bbox, classes, landmarks, a1: ...]
                for (kernel, bias), (_, _, size) in zip(parts, heads):
                    kernels.append(kernel[..., a * size:(a + 1) * size])
                    biases.append(bias[a * size:(a + 1) * size])
            y = _fused(f, np.concatenate(kernels, axis=-1), np.concatenate(biases), activation=None, slope=0.0,
                       name=f"heads_{i}")
            flat.append(layers.Reshape((-1, per_anchor), name=f"heads_{i}_flat")(y))
        merged = layers.Concatenate(axis=1, name="heads", dtype="float32")(flat)
        outputs = SplitHeads([key for key, _, _ in heads], [size for _, _, size in heads], name="split_heads")(merged)
    else:
        outputs = {}
        for key, layer, size in heads:
            flat = []
            for i, f in enumerate(contexts):
                y = _fused(f, *fold_batch_norm(w.layer(f"{layer}_{i}"), None), activation=None, slope=0.0,
                           name=f"{layer}_{i}")
                flat.append(layers.Reshape((-1, size), name=f"{layer}_{i}_flat")(y))
            outputs[key] = layers.Concatenate(axis=1, name=layer, dtype="float32")(flat)
    name = (f"{model.name}_fused" + ("_masked" if masked else "") + ("_rgb" if input_order == "rgb" else "")
            + ("_uint8" if uint8_input else ""))
    return keras.Model([inputs, sizes] if masked else inputs, outputs, name=name)


class MergedHeads:
    """Calls a network of :func:`fuse_for_inference` with merged heads up to the merged heads
    tensor ``[B, N, C]``, before :class:`SplitHeads`, and returns the output dict with each head
    as :class:`~retinaface_tf.ops.nms.HeadColumns` of it: post-processing then gathers the few
    rows it keeps and slices those, instead of splitting every row (the same values). Build it
    with :func:`merged_heads`."""

    def __init__(self, network, split: SplitHeads):
        self.heads = keras.Model(network.inputs, split.input, name=f"{network.name}_heads")  # shares the layers
        starts = np.cumsum((0,) + split.sizes[:-1])
        self.columns = {name: (int(start), size) for name, start, size in zip(split.names, starts, split.sizes)}

    def __call__(self, inputs, training=False) -> dict:
        merged = self.heads(inputs, training=training)
        return {name: HeadColumns(merged, start, size) for name, (start, size) in self.columns.items()}


def merged_heads(network) -> MergedHeads | None:
    """:class:`MergedHeads` of ``network`` if it has merged heads (:func:`fuse_for_inference`'s
    default), else ``None``."""
    split = next((layer for layer in network.layers if isinstance(layer, SplitHeads)), None)
    return None if split is None else MergedHeads(network, split)


def fuse_for_tflite(model, *, input_order: str = "bgr", uint8_input: bool = False) -> keras.Model:
    """:func:`fuse_for_inference` in the form a TFLite conversion wants: ``DepthwiseConv2dNative``
    (``DEPTHWISE_CONV_2D``), heads apart (a merged head's ``SPLIT_V`` is not delegated by
    XNNPACK), nearest 2x upsampling as concatenations (``RESIZE_NEAREST_NEIGHBOR`` is not
    delegated either). The SSH ReLU fused into the branch convolutions removes the standalone
    ``RELU`` that XNNPACK refuses in int8 models (its output range differs from its input's).
    Same outputs as ``model`` (to float rounding) at any size; ``input_order`` as in
    :func:`fuse_for_inference`, and so is ``uint8_input``. What
    :func:`retinaface_tf.serving.export_tflite` converts."""
    return fuse_for_inference(model, depthwise="native", merge_heads=False, upsample="concat", input_order=input_order,
                              uint8_input=uint8_input, winograd_channels=None)
