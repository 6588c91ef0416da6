"""Winograd F(2x2, 3x3) (``retinaface_tf.ops.winograd``) computes the 3x3 stride-1 convolution:
against ``tf.nn.conv2d`` at even and odd sides, batches, channel counts, and inside the fused
network (``fuse_for_inference(winograd_channels=...)``) for every backbone, masked and unmasked.
Its parity with the PyTorch fixtures is in ``tests/test_backbone_parity.py`` (the Detector's
default network uses it)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.models import build_retinaface, preprocess
from retinaface_tf.models.fused import WINOGRAD_CHANNELS, FusedConv, fuse_for_inference, fuse_for_tflite
from retinaface_tf.ops.winograd import winograd_conv3x3, winograd_kernels


def _direct(x, g, bias):
    return tf.nn.bias_add(tf.nn.conv2d(x, g, 1, "SAME"), bias)


@pytest.mark.parametrize("b, h, w, c, k", [(1, 8, 8, 4, 5), (2, 7, 9, 3, 6), (3, 1, 1, 8, 2), (1, 2, 3, 16, 16),
                                           (2, 33, 20, 32, 24)])
def test_winograd_equals_the_direct_convolution(b, h, w, c, k):
    rng = np.random.default_rng(h * w + c)
    x = tf.constant(rng.standard_normal((b, h, w, c)), tf.float32)
    g = rng.standard_normal((3, 3, c, k)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    expected = _direct(x, g, bias).numpy()
    y = winograd_conv3x3(x, winograd_kernels(g), bias).numpy()
    assert y.shape == expected.shape == (b, h, w, k)
    # float32 rounding only: relative to the size of the sums (|x| |g| 9 c ~ up to ~100 here)
    np.testing.assert_allclose(y, expected, atol=2e-5 * np.sqrt(9 * c), rtol=0)
    if h > 1:  # a flipped kernel gives other numbers (a 1x1 image sees only the centre tap)
        assert not np.allclose(y, _direct(x, g[::-1], bias).numpy(), atol=1e-2)


def test_winograd_runs_for_sizes_unknown_when_traced():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    kernels = winograd_kernels(g)
    f = tf.function(lambda x: winograd_conv3x3(x, kernels), input_signature=[tf.TensorSpec([None, None, None, 4])])
    for shape in [(1, 5, 6, 4), (2, 10, 3, 4)]:
        x = tf.constant(rng.standard_normal(shape), tf.float32)
        np.testing.assert_allclose(f(x).numpy(), tf.nn.conv2d(x, g, 1, "SAME").numpy(), atol=1e-4, rtol=0)


def test_winograd_kernels_checks_its_kernel():
    with pytest.raises(ValueError, match=r"\[3, 3, C, K\]"):
        winograd_kernels(np.zeros((5, 5, 2, 2)))
    u = winograd_kernels(np.ones((3, 3, 1, 1)))
    assert u.shape == (4, 4, 1, 1) and u.dtype == np.float32
    # G 1 G^T for an all-ones 3x3 kernel: the outer product of G's row sums (1, 1.5, 0.5, 1)
    np.testing.assert_array_equal(u[..., 0, 0], np.outer([1, 1.5, 0.5, 1], [1, 1.5, 0.5, 1]))


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
def test_fused_conv_winograd_with_residual_and_activation(activation):
    rng = np.random.default_rng(2)
    c = 8
    g = rng.standard_normal((3, 3, c, c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    x = tf.constant(rng.standard_normal((2, 11, 6, c)), tf.float32)
    residual = tf.constant(rng.standard_normal((2, 11, 6, c)), tf.float32)
    direct = FusedConv(c, 3, activation=activation, negative_slope=0.1)
    wino = FusedConv(c, 3, activation=activation, negative_slope=0.1, winograd=True)
    direct([x, residual])
    wino([x, residual])
    direct.set_weights([g, bias])
    u = winograd_kernels(g)
    wino.set_weights([u[a, b][None, None] for a in range(4) for b in range(4)] + [bias])
    np.testing.assert_allclose(wino([x, residual]).numpy(), direct([x, residual]).numpy(), atol=1e-4, rtol=0)
    clone = FusedConv.from_config(wino.get_config())
    assert clone.winograd


@pytest.mark.parametrize("options", [dict(kernel_size=1), dict(strides=2), dict(depthwise="grouped"),
                                     dict(padding="valid")])
def test_fused_conv_refuses_winograd_where_it_does_not_apply(options):
    args = {"kernel_size": 3, **options}
    with pytest.raises(ValueError, match="winograd: only a full 3x3 stride-1"):
        FusedConv(8, args.pop("kernel_size"), winograd=True, **args)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenetv2", "mobilenet025"])
def test_fused_network_with_winograd_equals_the_trained_one(backbone):
    """Every 3x3 stride-1 convolution of 16+ channels in Winograd form (backbone, FPN, SSH): the
    trained network's outputs, unmasked and masked (an image padded into a canvas)."""
    model = build_retinaface(backbone=backbone, fpn_channels=32, fpn_leaky=0.0)
    rng = np.random.default_rng(5)
    for layer in model.get_layer(backbone).layers + model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if i in (0, 3)
                               else rng.normal(0, 0.1, w.shape).astype(np.float32)
                               for i, w in enumerate(layer.get_weights())])
    fast = fuse_for_inference(model, winograd_channels=16)
    direct = fuse_for_inference(model, winograd_channels=None)
    wino = [layer for layer in fast.layers if isinstance(layer, FusedConv) and layer.winograd]
    assert not any(isinstance(layer, FusedConv) and layer.winograd for layer in direct.layers)
    # at fpn_channels=32: the two FPN merges (32 -> 32) and the SSH's 32 -> 16 branches, and the backbone's
    assert len(wino) >= 5, [layer.name for layer in wino]
    x = preprocess(rng.integers(0, 256, (2, 64, 96, 3)).astype(np.uint8))
    expected = model(x, training=False)
    for key, value in fast(x).items():
        np.testing.assert_allclose(value.numpy(), expected[key].numpy(), atol=1e-4, rtol=0, err_msg=key)
    canvas = tf.pad(x[:1, :50, :70], [[0, 0], [0, 46], [0, 58], [0, 0]])
    masked = fuse_for_inference(model, masked=True, winograd_channels=16)([canvas, tf.constant([[50, 70]])])
    plain = fuse_for_inference(model, masked=True, winograd_channels=None)([canvas, tf.constant([[50, 70]])])
    for key in masked:
        np.testing.assert_allclose(masked[key].numpy(), plain[key].numpy(), atol=1e-4, rtol=0, err_msg=key)


def test_defaults_winograd_in_tensorflow_never_in_tflite():
    """The default fused network computes the 3x3 stride-1 convolutions of 128+ channels as
    Winograd (ResNet-18: layer2..4 and the FPN merges; its SSH branches have 64 or fewer outputs);
    the TFLite form none."""
    assert WINOGRAD_CHANNELS == 128
    model = build_retinaface(backbone="resnet18", fpn_channels=128, fpn_leaky=0.0)
    names = {layer.name for layer in fuse_for_inference(model).layers if getattr(layer, "winograd", False)}
    assert {"fpn_merge1", "fpn_merge2", "layer2_1_conv1", "layer4_1_conv2"} <= names, names
    assert not any(n.startswith(("layer1", "ssh")) for n in names)  # 64 channels: direct
    assert not any(getattr(layer, "winograd", False) for layer in fuse_for_tflite(model).layers)
