"""The fused inference network (batch norm folded, fusable op patterns) computes what the trained
network computes: the same raw outputs (<= 1e-4) as the Keras model, and the same detections through
the Detector's default (fused) path as through ``fused=False``. Equality with the PyTorch reference,
for both paths, is in ``tests/test_reference_parity.py``."""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.models import build_retinaface, preprocess
from retinaface_tf.inference import Detector
from retinaface_tf.models.fused import FusedConv, fold_batch_norm, fuse_for_inference
from retinaface_tf.ops.image import fast_preprocess

ATOL = 1e-4


@pytest.fixture(scope="module")
def fused(bundled_model):
    model, _ = bundled_model
    return fuse_for_inference(model)


@pytest.fixture(scope="module")
def photo(reference_dir):
    return cv2.imread(str(reference_dir / "biubug6_test.jpg"), cv2.IMREAD_COLOR)


def _images(batch, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, h, w, 3)).astype(np.uint8)


def _assert_outputs_close(a, b, atol=ATOL):
    assert set(a) == set(b) == {"bbox", "classes", "landmarks"}
    for key in a:
        assert a[key].shape == b[key].shape, key
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=atol, rtol=0, err_msg=key)


@pytest.mark.parametrize("batch, h, w", [(1, 640, 640), (3, 640, 640), (1, 333, 517), (3, 333, 517)])
def test_fused_equals_original(bundled_model, fused, batch, h, w):
    model, _ = bundled_model
    x = preprocess(_images(batch, h, w))
    _assert_outputs_close(fused(x), model(x, training=False))


@pytest.mark.parametrize("options", [dict(depthwise="native"), dict(merge_heads=False),
                                     dict(depthwise="native", merge_heads=False, upsample="concat")])
def test_fused_variants_equal_original(bundled_model, options):
    model, _ = bundled_model
    x = preprocess(_images(2, 75, 101, seed=1))
    _assert_outputs_close(fuse_for_inference(model, **options)(x), model(x, training=False))


@pytest.mark.parametrize("h, w", [(640, 640), (96, 160), (100, 90)])
def test_fuse_for_tflite_at_a_fixed_size(bundled_model, h, w):
    """Static shapes (as in a TFLite export): 2x upsampling by concatenation where the sizes are
    multiples of 32, the resize elsewhere; same outputs either way."""
    from retinaface_tf.models.fused import fuse_for_tflite

    model, _ = bundled_model
    fast = fuse_for_tflite(model)
    f = tf.function(lambda t: fast(t), input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32)])
    ops = {op.type for op in f.get_concrete_function().graph.get_operations()}
    assert ("ResizeNearestNeighbor" in ops) == (h % 32 != 0 or w % 32 != 0)
    assert "DepthwiseConv2dNative" in ops
    x = preprocess(_images(1, h, w, seed=h + w))
    _assert_outputs_close(f(x), model(x, training=False))


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_uint8_input_folds_the_mean_into_the_first_convolution(bundled_model, order):
    """``uint8_input=True`` (the TFLite export's network) on the uint8 image computes what the
    float network computes on the image minus the mean, at even and odd sizes (the border of the
    mean colour stands for the zero padding of the mean-subtracted image); no subtraction."""
    from retinaface_tf.models.fused import MeanBorder

    model, _ = bundled_model
    net = fuse_for_inference(model, input_order=order, uint8_input=True)
    assert net.name.endswith("_uint8") and net.inputs[0].dtype == "uint8"
    for h, w in ((96, 128), (97, 131)):
        images = _images(2, h, w, seed=h)
        x = preprocess(images, channel_order=order, network_order=order)
        _assert_outputs_close(net(tf.constant(images)), fuse_for_inference(model, input_order=order)(x))
    graph = tf.function(lambda t: net(t)).get_concrete_function(tf.TensorSpec([1, None, None, 3], tf.uint8)).graph
    ops = [op.type for op in graph.get_operations()]
    assert "Sub" not in ops and ops.count("Cast") == 1, ops
    border = MeanBorder((104, 117, 123))(tf.constant(_images(1, 3, 4)))
    assert border.dtype == tf.float32 and border.shape == (1, 5, 6, 3)
    np.testing.assert_array_equal(border[0, 0].numpy(), np.tile([104, 117, 123], (6, 1)))
    np.testing.assert_array_equal(border[0, :, -1].numpy(), np.tile([104, 117, 123], (5, 1)))
    np.testing.assert_array_equal(border[0, 1:-1, 1:-1].numpy(), _images(1, 3, 4)[0])
    with pytest.raises(ValueError, match="integers"):
        MeanBorder((104.5, 117, 123))
    with pytest.raises(ValueError, match="not masked"):
        fuse_for_inference(model, uint8_input=True, masked=True)


def test_upsample_concat_is_bitwise_nearest():
    from retinaface_tf.models.fused import UpsampleLikeConcat
    from retinaface_tf.models.layers import UpsampleLike

    x = tf.constant(np.random.default_rng(7).normal(size=(2, 5, 7, 3)).astype(np.float32))
    for like_shape in [(2, 10, 14, 1), (2, 9, 14, 1), (2, 10, 13, 1)]:
        like = tf.zeros(like_shape)
        np.testing.assert_array_equal(UpsampleLikeConcat()([x, like]).numpy(), UpsampleLike()([x, like]).numpy())


def test_fused_runs_inside_tf_function_for_any_size(bundled_model, fused):
    model, _ = bundled_model
    f = tf.function(lambda t: fused(t), reduce_retracing=True)
    for h, w in [(32, 32), (97, 64), (161, 255)]:
        x = preprocess(_images(2, h, w, seed=h))
        _assert_outputs_close(f(x), model(x, training=False))


@pytest.mark.parametrize("threshold", [0.5, 0.02])
def test_fused_detector_equals_detector(bundled_model, photo, threshold):
    model, config = bundled_model
    slow = Detector(model=model, config=config, score_threshold=threshold, fused=False)
    fast = Detector(model=model, config=config, score_threshold=threshold)
    assert fast.network.name.endswith("_fused") and slow.network is model
    images = [photo, cv2.resize(photo, (517, 333)), photo[:, ::-1].copy(), photo]
    for a, b in zip(slow.detect_batch(images), fast.detect_batch(images)):
        assert len(a) == len(b)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-2, rtol=0)
        np.testing.assert_allclose(b.landmarks, a.landmarks, atol=1e-2, rtol=0)
    # anchors are cached per size and equal the in-graph ones
    from retinaface_tf.ops.anchors import generate_anchors_np
    np.testing.assert_allclose(fast.anchors(333, 517).numpy(), generate_anchors_np(333, 517), atol=1e-6)


def test_detector_calls_its_frozen_graph_through_a_concrete_function(bundled_model, photo):
    """The Detector calls each frozen graph through a concrete ``tf.function`` wrapper (the
    frozen ``wrap_function`` called directly binds its arguments in ~1.7 ms of Python): the same
    graph, so bit-identical outputs, for the batch-1, batched and padded (mixed sizes) graphs."""
    from retinaface_tf.inference import pad_to_canvas
    from retinaface_tf.ops.anchors import anchors_inside

    model, config = bundled_model
    det = Detector(model=model, config=config, score_threshold=0.3)
    thr, iou = tf.constant(0.3), tf.constant(np.float32(det.iou_threshold))
    h, w = photo.shape[:2]
    images = [photo[:300, :400], cv2.resize(photo, (256, 160))]
    canvas = pad_to_canvas(images)
    grid = det._grid(*canvas.shape[1:3])
    cases = {
        "one image": (det._graph(True), (tf.constant(photo[None]), tf.ones([1, 2]), thr, iou, det.anchors(h, w))),
        "batch": (det._graph(False), (tf.constant(np.stack([photo, photo[:, ::-1]])), tf.ones([2, 2]), thr, iou,
                                      det.anchors(h, w))),
        "padded": (det._padded_graph(), (tf.constant(canvas), tf.constant([im.shape[:2] for im in images], tf.int32),
                                         tf.ones([2, 2]), thr, iou, det.anchors(*canvas.shape[1:3]),
                                         tf.constant(np.stack([anchors_inside(grid, im.shape[:2]) for im in images])))),
    }
    for name, ((call, frozen), args) in cases.items():
        out = call(*args)
        assert type(out) is dict and int(out["num_detections"][0]) > 0, name
        fast, direct = tf.nest.flatten(out), frozen(*args)
        assert len(fast) == len(direct) == 5, name
        for a, b in zip(fast, direct):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_detector_splits_the_merged_heads_after_gathering_rows(bundled_model, photo, monkeypatch):
    """The Detector's graphs take the merged heads unsplit (``MergedHeads``): no ``SplitV`` over
    every anchor, and the detections of a Detector that splits first, bit for bit, for one image,
    a batch and a batch of mixed sizes (the padded graph)."""
    import retinaface_tf.inference as inference

    model, config = bundled_model
    det = Detector(model=model, config=config, score_threshold=0.3)
    det._padded_graph()  # built now: the padded graph is otherwise built on first use, below
    monkeypatch.setattr(inference, "merged_heads", lambda network: None)
    split = Detector(model=model, config=config, score_threshold=0.3)
    mixed = [photo[:300, :400], cv2.resize(photo, (256, 160))]
    for name, run in (("one image", lambda d: [d.detect(photo)]),
                      ("batch", lambda d: d.detect_batch([photo, photo[:, ::-1]])),
                      ("mixed sizes", lambda d: d.detect_batch(mixed))):
        ours, theirs = run(det), run(split)
        assert len(ours[0]) > 0, name
        for a, b in zip(ours, theirs):
            for key in ("boxes", "scores", "landmarks", "anchor_indices"):
                np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=f"{name}: {key}")
    for key, (ours, theirs) in {"one image": (det.graph(True), split.graph(True)),
                                "padded": (det._padded_graph()[1].graph, split._padded_graph()[1].graph)}.items():
        ops = {op.type for op in ours.get_operations()}
        assert "SplitV" not in ops and "SplitV" in {op.type for op in theirs.get_operations()}, key


def test_rgb_input_order_folds_the_channel_flip_into_the_first_convolution(bundled_model):
    """``input_order="rgb"`` (the TFLite export's network) on RGB minus the RGB-ordered mean computes
    what the model computes on BGR minus the BGR mean: no channel flip anywhere in the graph."""
    from retinaface_tf.models.fused import fuse_for_tflite

    model, _ = bundled_model
    rgb = _images(2, 96, 128, seed=5)
    x_rgb = preprocess(rgb, channel_order="rgb", network_order="rgb")
    np.testing.assert_array_equal(x_rgb.numpy()[..., ::-1], preprocess(rgb, channel_order="rgb").numpy())
    np.testing.assert_array_equal(preprocess(rgb[..., ::-1], channel_order="bgr", network_order="rgb").numpy(),
                                  x_rgb.numpy())
    fast = fuse_for_tflite(model, input_order="rgb")
    assert fast.name.endswith("_fused_rgb")
    np.testing.assert_array_equal(fast.get_layer("stage1_0_conv").get_weights()[0],
                                  fuse_for_tflite(model).get_layer("stage1_0_conv").get_weights()[0][:, :, ::-1])
    _assert_outputs_close(fast(x_rgb), model(preprocess(rgb, channel_order="rgb"), training=False))
    f = tf.function(lambda t: fast(t), input_signature=[tf.TensorSpec([1, 96, 128, 3], tf.float32)])
    assert "ReverseV2" not in {op.type for op in f.get_concrete_function().graph.get_operations()}
    with pytest.raises(ValueError, match="input_order must be 'bgr' or 'rgb'"):
        fuse_for_inference(model, input_order="brg")


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_fast_preprocess_is_bitwise_preprocess(order):
    for shape in [(1, 640, 640, 3), (3, 33, 17, 3), (2, 1, 1, 3)]:
        images = _images(*shape)
        np.testing.assert_array_equal(fast_preprocess(images, channel_order=order).numpy(),
                                      preprocess(images, channel_order=order).numpy())


def _random_bn(bn, rng):
    n = bn.gamma.shape[0]
    bn.set_weights([rng.uniform(0.5, 2.0, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.1, 3.0, n)])


@pytest.mark.parametrize("depthwise, multiplier, use_bias", [(False, 1, False), (False, 1, True), (True, 1, False),
                                                             (True, 2, True)])
def test_fold_batch_norm(depthwise, multiplier, use_bias):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, 6)).astype(np.float32)
    conv = (keras.layers.DepthwiseConv2D(3, depth_multiplier=multiplier, padding="same", use_bias=use_bias,
                                         bias_initializer="random_normal") if depthwise else
            keras.layers.Conv2D(5, 3, padding="same", use_bias=use_bias, bias_initializer="random_normal"))
    bn = keras.layers.BatchNormalization(epsilon=1e-5)
    expected = bn(conv(x), training=False)
    _random_bn(bn, rng)
    expected = bn(conv(x), training=False).numpy()
    kernel, bias = fold_batch_norm(conv, bn)
    channels = 6 * multiplier if depthwise else 5
    layer = FusedConv(channels, 3, depthwise="native" if depthwise else None)
    if depthwise and multiplier != 1:  # FusedConv holds multiplier-1 depthwise kernels only: check by hand
        y = tf.nn.bias_add(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME"), bias).numpy()
    else:
        layer(x)
        layer.set_weights([kernel, bias])
        y = layer(x).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


def test_fused_equals_original_with_random_statistics():
    """Random weights *and* random batch-norm statistics (the bundled model's are one draw)."""
    rng = np.random.default_rng(3)
    model = build_retinaface()
    for layer in model.layers + model.get_layer("mobilenet025").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            _random_bn(layer, rng)
    x = preprocess(_images(2, 96, 130, seed=3))
    _assert_outputs_close(fuse_for_inference(model)(x), model(x, training=False), atol=1e-4)


@pytest.mark.parametrize("leaky", [0.0, 0.2])
def test_fused_follows_the_activation_settings(leaky):
    model = build_retinaface(fpn_leaky=leaky, backbone_leaky=leaky)
    x = preprocess(_images(1, 64, 96, seed=4))
    _assert_outputs_close(fuse_for_inference(model)(x), model(x, training=False))


@pytest.mark.parametrize("backbone", ["resnet50", "resnet18", "mobilenetv2", "mobilenet050"])
def test_fuse_rebuilds_every_backbone(backbone):
    """Every backbone of the registry is rebuilt fused from its one architecture definition: no
    batch norm, no nested trained sub-model, residual adds inside the convolutions; the same
    outputs as the trained network, also with RGB and uint8 input (mean and channel flip folded
    into the first convolution, whatever its kernel) and masked (images padded into a canvas)."""
    model = build_retinaface(backbone=backbone, fpn_channels=32, fpn_leaky=0.0)
    rng = np.random.default_rng(8)
    for layer in model.get_layer(backbone).layers + model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            _random_bn(layer, rng)
    fast = fuse_for_inference(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in fast.layers)
    assert not any(isinstance(layer, keras.Model) for layer in fast.layers)
    residual = [layer for layer in fast.layers if isinstance(layer, FusedConv) and isinstance(layer.input, list)]
    assert len(residual) == {"resnet50": 16, "resnet18": 8, "mobilenetv2": 10, "mobilenet050": 0}[backbone]
    images = _images(2, 64, 96, seed=8)
    x = preprocess(images)
    expected = model(x, training=False)
    _assert_outputs_close(fast(x), expected)
    _assert_outputs_close(fuse_for_inference(model, uint8_input=True)(tf.constant(images)), expected)
    rgb = fuse_for_inference(model, input_order="rgb")
    _assert_outputs_close(rgb(preprocess(images[..., ::-1], channel_order="rgb", network_order="rgb")), expected)
    # masked: the first image alone, padded at the bottom right into a 96x128 canvas
    alone = model(x[:1, :50, :70], training=False)
    canvas = tf.pad(x[:1, :50, :70], [[0, 0], [0, 46], [0, 58], [0, 0]])
    masked = fuse_for_inference(model, masked=True)([canvas, tf.constant([[50, 70]], tf.int32)])
    n = alone["bbox"].shape[1]
    inside = _inside_anchors((50, 70), (96, 128))
    assert len(inside) == n
    for key in ("bbox", "classes", "landmarks"):
        np.testing.assert_allclose(tf.gather(masked[key], inside, axis=1).numpy(), alone[key].numpy(), atol=2e-4)


def _inside_anchors(size, canvas):
    """Indices of the canvas's anchors that an image of ``size`` (top-left) has alone, in its order."""
    from retinaface_tf.ops.anchors import anchor_grid, anchors_inside
    return np.flatnonzero(anchors_inside(anchor_grid(*canvas), size))


def test_fused_model_saves_and_loads(fused, tmp_path):
    path = tmp_path / "fused.keras"
    fused.save(path)
    loaded = keras.saving.load_model(path)
    x = preprocess(_images(1, 64, 64, seed=5))
    _assert_outputs_close(loaded(x), fused(x), atol=0)


def test_litert_network_equals_keras(bundled_model):
    from retinaface_tf.runtimes.litert import litert_network

    model, _ = bundled_model
    run = litert_network(model, (96, 128), batch=1, num_threads=2)
    x = preprocess(_images(1, 96, 128, seed=6))
    _assert_outputs_close(run(x.numpy()), model(x, training=False))


def test_fuse_refuses_a_foreign_model():
    inputs = keras.Input((None, None, 3))
    with pytest.raises(ValueError, match="backbone"):
        fuse_for_inference(keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs)))


def test_fused_detector_snapshots_weights_unfused_reads_them_live(photo):
    """The default (fused) Detector copies the weights when it is built; ``fused=False`` reads the
    model's variables at every call (what validation during training relies on)."""
    from retinaface_tf.config import Config
    from retinaface_tf.models import build_from_config

    config = Config.load("mobilenet025")
    model = build_from_config(config)
    image = cv2.resize(photo, (160, 128))
    fused, live = (Detector(model=model, config=config, score_threshold=0.0, max_detections=5, fused=f)
                   for f in (True, False))
    before_fused, before_live = fused.detect(image).scores, live.detect(image).scores
    np.testing.assert_allclose(before_fused, before_live, atol=1e-5)
    head = model.get_layer("ClassHead_0")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + np.tile(np.array([0.0, 3.0], np.float32), len(bias) // 2)])
    np.testing.assert_array_equal(fused.detect(image).scores, before_fused)
    assert live.detect(image).scores.max() > before_live.max() + 0.1


def test_detector_runs_on_tensorflow_without_onednn(photo, reference_dir, tmp_path):
    """TensorFlow without oneDNN (``TF_ENABLE_ONEDNN_OPTS=0``; builds without it; TensorFlow's
    default on CPUs without AVX-512 VNNI / AMX) refuses a grouped convolution fused with its bias
    and activation ("Fused conv implementation does not support grouped convolutions"), so there
    the default fused network takes native depthwise convolutions; with oneDNN, grouped ones. A
    process with the other setting than this one gives the same detections as here, one image and
    a mixed-size batch (the masked network)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from retinaface_tf.models.fused import default_depthwise

    here_form = default_depthwise()
    other = {"grouped": ("0", "native"), "native": ("1", "grouped")}[here_form]
    small = cv2.resize(photo, (photo.shape[1] // 2, photo.shape[0] // 2))
    cv2.imwrite(str(tmp_path / "small.png"), small)
    code = (
        "import json, sys, cv2\n"
        "from retinaface_tf import Detector\n"
        "from retinaface_tf.models.fused import default_depthwise\n"
        "big, small = cv2.imread(sys.argv[1]), cv2.imread(sys.argv[2])\n"
        "d = Detector(score_threshold=0.5)\n"
        "dets = [d.detect(big), *d.detect_batch([big, small])]\n"
        "print(json.dumps({'depthwise': default_depthwise(),\n"
        "                  'dets': [[x.boxes.tolist(), x.scores.tolist()] for x in dets]}))\n")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": other[0], "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code, str(reference_dir / "biubug6_test.jpg"), str(tmp_path / "small.png")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["depthwise"] == other[1]
    here = Detector(score_threshold=0.5)
    expected = [here.detect(photo), *here.detect_batch([photo, small])]
    assert len(expected[0]) > 10 and len(expected[2]) > 0
    for (boxes, scores), e in zip(out["dets"], expected):
        assert len(scores) == len(e.scores)
        np.testing.assert_allclose(np.array(scores), e.scores, atol=1e-4)
        np.testing.assert_allclose(np.array(boxes).reshape(-1, 4), e.boxes, atol=1e-2)
