"""The Keras network: shapes for any input size, PyTorch-style upsampling, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.models import build_retinaface, preprocess
from retinaface_tf.models.layers import UpsampleLike
from retinaface_tf.ops.anchors import num_anchors


@pytest.fixture(scope="module")
def model():
    return build_retinaface()


@pytest.mark.parametrize("h, w", [(640, 640), (75, 101), (333, 517), (32, 32)])
def test_outputs_cover_every_anchor_for_any_size(model, h, w):
    out = model(np.zeros((2, h, w, 3), np.float32))
    n = num_anchors(h, w)
    assert out["bbox"].shape == (2, n, 4)
    assert out["classes"].shape == (2, n, 2)
    assert out["landmarks"].shape == (2, n, 10)


def test_upsample_like_uses_pytorch_nearest_rule():
    # PyTorch F.interpolate(nearest, size) takes src = floor(dst * in / out); 5 -> 9 rows
    x = np.arange(5 * 3, dtype=np.float32).reshape(1, 5, 3, 1)
    like = np.zeros((1, 9, 6, 1), np.float32)
    y = UpsampleLike()([x, like]).numpy()[0, :, :, 0]
    rows = np.floor(np.arange(9) * 5 / 9).astype(int)
    cols = np.floor(np.arange(6) * 3 / 6).astype(int)
    np.testing.assert_array_equal(y, x[0, :, :, 0][rows][:, cols])


def test_stride2_convs_pad_symmetrically():
    """A bright pixel at (0, 0) must reach output (0, 0) of the first stride-2 conv (PyTorch pads
    1 on each side; Keras 'same' would pad only after and shift the grid)."""
    from retinaface_tf.models.backbones import build_backbone
    net = build_backbone("mobilenet025")
    conv = net.get_layer("stage1_0_conv")
    conv.kernel.assign(np.zeros((3, 3, 3, 8), np.float32))
    k = np.zeros((3, 3, 3, 8), np.float32)
    k[1, 1, 0, 0] = 1.0  # centre tap
    conv.kernel.assign(k)
    sub = keras.Model(net.inputs, conv.output)
    x = np.zeros((1, 8, 8, 3), np.float32)
    x[0, 2, 4, 0] = 1.0
    y = sub(x).numpy()[0, :, :, 0]
    assert y.shape == (4, 4) and y[1, 2] == 1.0 and y.sum() == 1.0


def test_preprocess_bgr_and_rgb():
    bgr = np.array([[[[10, 20, 30]]]], np.uint8)
    np.testing.assert_allclose(preprocess(bgr).numpy().ravel(), [10 - 104, 20 - 117, 30 - 123])
    np.testing.assert_allclose(preprocess(bgr[..., ::-1], channel_order="rgb").numpy().ravel(),
                               [10 - 104, 20 - 117, 30 - 123])


def test_keras_save_and_reload(tmp_path, model):
    x = np.random.default_rng(0).normal(0, 50, (1, 96, 128, 3)).astype(np.float32)
    ref = model(x)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    out = again(x)
    for k in ref:
        np.testing.assert_allclose(out[k].numpy(), ref[k].numpy(), atol=1e-5)


def test_resnet50_variant_builds():
    m = build_retinaface(backbone="resnet50", fpn_channels=256, fpn_leaky=0.0)
    out = m(np.zeros((1, 96, 160, 3), np.float32))
    assert out["classes"].shape == (1, num_anchors(96, 160), 2)


def test_new_layers_start_as_pytorch_initialises_them():
    """kaiming_uniform_(a=sqrt(5)) kernels and U(+-1/sqrt(fan_in)) biases, as nn.Conv2d: a run from
    the ImageNet backbone starts its FPN, SSH and heads like the reference's (Keras' glorot
    kernels are ~2x larger, which behind BatchNorm slows learning)."""
    import keras

    from retinaface_tf.models import build_retinaface

    keras.utils.set_random_seed(0)
    model = build_retinaface()
    checked = 0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        kernel = layer.kernel.numpy()
        fan_in = int(np.prod(kernel.shape[:-1]))
        bound = 1.0 / np.sqrt(fan_in)
        assert np.abs(kernel).max() <= bound + 1e-7, layer.name
        assert abs(kernel.std() - bound / np.sqrt(3)) < 0.15 * bound / np.sqrt(3), layer.name  # uniform's std
        if layer.use_bias:
            bias = layer.bias.numpy()
            assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.3 * bound, layer.name
        checked += 1
    assert checked >= 20
    # every layer draws its own numbers: no two kernels are equal or proportional (one shared,
    # seeded initialiser would give the same draw to every layer)
    flat = {layer.name: layer.kernel.numpy().ravel() for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    names = sorted(flat)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            n = min(flat[a].size, flat[b].size)
            assert abs(np.corrcoef(flat[a][:n], flat[b][:n])[0, 1]) < 0.5, (a, b)
    body = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    dw = [layer for layer in body.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert dw and all(np.abs(layer.kernel.numpy()).max() <= 1 / 3 + 1e-7 for layer in dw)
    assert max(np.abs(layer.kernel.numpy()).max() for layer in dw) > 0.3


def _bn_pair(channels, rng):
    from retinaface_tf.models.layers import BN_EPSILON, BN_MOMENTUM, BatchNormalization

    ours = BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)
    keras_bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)
    values = [rng.normal(1, 0.2, channels), rng.normal(0, 0.2, channels), np.full(channels, 0.5), np.full(channels, 2.0)]
    for layer in (ours, keras_bn):
        layer.build((None, None, None, channels))
        layer.set_weights([v.astype(np.float32) for v in values])
    return ours, keras_bn


def test_batch_norm_training_step_is_pytorch_batchnorm2d():
    """The fused training step normalises exactly as Keras' (and PyTorch's) BatchNorm: same
    output and gradients; the running variance takes the unbiased batch variance (PyTorch's
    rule; Keras' own layer takes the biased one)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2, 3, (4, 7, 5, 6)).astype(np.float32))
    upstream = tf.constant(rng.normal(0, 1, x.shape).astype(np.float32))
    ours, keras_bn = _bn_pair(6, rng)
    results = []
    for layer in (ours, keras_bn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * upstream)
        y = layer(x, training=True)  # a second step moves the running statistics again
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y.numpy()] + [g.numpy() for g in grads])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
    flat = x.numpy().reshape(-1, 6).astype(np.float64)
    mean, unbiased = flat.mean(0), flat.var(0, ddof=1)
    expect_mean, expect_var = np.full(6, 0.5), np.full(6, 2.0)
    for _ in range(2):  # PyTorch: running = (1 - 0.1) * running + 0.1 * batch statistic
        expect_mean, expect_var = 0.9 * expect_mean + 0.1 * mean, 0.9 * expect_var + 0.1 * unbiased
    np.testing.assert_allclose(ours.moving_mean.numpy(), expect_mean, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), expect_var, rtol=1e-5)
    assert not np.allclose(keras_bn.moving_variance.numpy(), expect_var, rtol=1e-4)  # the rule differs


def test_batch_norm_inference_and_frozen_layers_are_keras():
    """Inference, and a frozen layer in training, run Keras' own code: outputs equal, running
    statistics untouched."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (2, 5, 5, 3)).astype(np.float32)
    ours, keras_bn = _bn_pair(3, rng)
    np.testing.assert_array_equal(ours(x, training=False).numpy(), keras_bn(x, training=False).numpy())
    ours.trainable = keras_bn.trainable = False
    np.testing.assert_array_equal(ours(x, training=True).numpy(), keras_bn(x, training=True).numpy())
    np.testing.assert_array_equal(ours.moving_variance.numpy(), np.full(3, 2.0, np.float32))


def test_network_batch_norms_are_the_fused_layer(model):
    from retinaface_tf.models.layers import BatchNormalization

    def walk(m):
        for layer in m.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from walk(layer)

    norms = [layer for layer in walk(model) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) > 30 and all(type(layer) is BatchNormalization for layer in norms)
