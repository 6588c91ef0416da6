"""``Detector(runtime="litert")``: the network converted once to a float32 LiteRT model for every
input size and run by XNNPACK gives the TensorFlow runtime's raw outputs (<= 1e-4) and detections.
Equality with the PyTorch reference is in ``tests/test_reference_parity.py`` (its ``litert``
detector)."""

import json
import sys

import cv2
import numpy as np
import pytest

from retinaface_tf.cli import main
from retinaface_tf.errors import DetectorError, RetinaFaceError
from retinaface_tf.fileio import bundled_image
from retinaface_tf.inference import Detector
from retinaface_tf.models import build_retinaface, preprocess
from retinaface_tf.runtimes.litert import LITERT_MISSING, LiteRTNetwork

ATOL = 1e-4


@pytest.fixture(scope="module")
def photo():
    return cv2.imread(str(bundled_image()), cv2.IMREAD_COLOR)  # the package's own photo: no shared data needed


@pytest.fixture(scope="module")
def detectors(bundled_model):
    model, config = bundled_model
    return (Detector(model=model, config=config, score_threshold=0.02),
            Detector(model=model, config=config, score_threshold=0.02, runtime="litert", litert_threads=2))


def _assert_same_detections(a, b):
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.anchor_indices, b.anchor_indices)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2, rtol=0)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-2, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch, h, w", [(1, 640, 640), (1, 333, 517), (2, 37, 45), (3, 96, 64)])
def test_one_conversion_serves_every_size(bundled_model, detectors, batch, h, w):
    model, _ = bundled_model
    net = detectors[1]._litert  # noqa: SLF001 - the runtime the Detector built
    images = np.random.default_rng(h).integers(0, 256, (batch, h, w, 3)).astype(np.uint8)
    out = net(images)
    ref = model(preprocess(images), training=False)
    for key in ("bbox", "classes", "landmarks"):
        assert out[key].shape == tuple(ref[key].shape), key
        np.testing.assert_allclose(out[key], ref[key].numpy(), atol=ATOL, rtol=0, err_msg=key)


@pytest.mark.parametrize("size", [None, (517, 333), (1920, 1080)])
def test_litert_detections_equal_tensorflow_runtime(detectors, photo, size):
    image = photo if size is None else cv2.resize(photo, size, interpolation=cv2.INTER_LINEAR)
    tf_det, lite = detectors
    _assert_same_detections(tf_det.detect(image), lite.detect(image))


def test_litert_batches_and_bad_items(detectors, photo):
    """Equal sizes run together, other sizes on their own (no padded canvas); a bad item yields its
    error and the rest go on."""
    tf_det, lite = detectors
    assert lite.mixed_sizes is False and tf_det.mixed_sizes is True
    small = cv2.resize(photo, (517, 333))
    items = [photo, small, None, photo[:, ::-1].copy(), small]
    got = dict(lite.iter_detect(items, score_threshold=0.5))
    want = dict(tf_det.iter_detect(items, score_threshold=0.5))
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert isinstance(got[2], RetinaFaceError) and "image 2" in str(got[2])
    for i in (0, 1, 3, 4):
        _assert_same_detections(want[i], got[i])


def test_a_batch_litert_cannot_run_is_one_line_and_the_rest_go_on(detectors, photo, monkeypatch):
    """LiteRT raises RuntimeError (e.g. it cannot allocate a huge input): that image gets a
    one-line DetectorError naming it, the other images are still detected."""
    _, lite = detectors
    real = lite._litert.detect  # noqa: SLF001

    def failing(image, *args):
        if image.shape[1:3] == (333, 517):
            raise RuntimeError("tensorflow/lite/kernels/conv.cc:1 failed to allocate\nsecond line")
        return real(image, *args)

    monkeypatch.setattr(lite._litert, "detect", failing)  # noqa: SLF001
    small = cv2.resize(photo, (517, 333))
    got = dict(lite.iter_detect([photo, small, photo], score_threshold=0.5))
    assert isinstance(got[1], DetectorError)
    assert str(got[1]) == "image 1: detection failed: RuntimeError: tensorflow/lite/kernels/conv.cc:1 failed to allocate"
    assert len(got[0]) == len(got[2]) > 20


@pytest.mark.parametrize("kwargs, needle", [
    ({"runtime": "tensorrt"}, "runtime must be one of auto, tf, litert, onnx, got 'tensorrt'"),
    ({"runtime": "litert", "fused": False}, "cannot be combined with fused=False"),
    ({"runtime": "onnx", "fused": False}, "cannot be combined with fused=False"),
    ({"runtime": "litert", "litert_threads": 0}, "threads must be a whole number >= 1"),
    ({"runtime": "auto", "threads": 0}, "threads must be a whole number >= 1"),
])
def test_bad_runtime_settings_fail_before_loading(kwargs, needle):
    with pytest.raises(DetectorError) as err:
        Detector(weights="/nonexistent/weights", **kwargs)  # checked before the weights are looked at
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_litert_package_is_a_one_line_error(bundled_model, monkeypatch):
    model, config = bundled_model
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails as if not installed
    with pytest.raises(DetectorError) as err:
        Detector(model=model, config=config, runtime="litert")
    assert str(err.value) == LITERT_MISSING and "retinaface-tf[tflite]" in str(err.value)


def test_another_backbone_takes_the_uint8_image_too():
    """ResNet-50's LiteRT network takes the uint8 image as well: the mean folded into its 7x7
    first convolution over a 3-pixel border of the mean colour."""
    model = build_retinaface(backbone="resnet50", fpn_channels=32)
    net = LiteRTNetwork(model, num_threads=2)
    images = np.random.default_rng(1).integers(0, 256, (1, 96, 128, 3)).astype(np.uint8)
    out = net(images)
    ref = model(preprocess(images), training=False)
    for key in ("bbox", "classes", "landmarks"):
        np.testing.assert_allclose(out[key], ref[key].numpy(), atol=ATOL, rtol=0, err_msg=key)


def test_detect_cli_runtime_litert(tmp_path, capsys):
    assert main(["detect", "--output", str(tmp_path / "tf"), "--json", "--no-draw"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert main(["detect", "--output", str(tmp_path / "lite"), "--json", "--no-draw", "--runtime", "litert"]) == 0
    got = json.loads(capsys.readouterr().out)
    faces = [[f["score"] for f in report["images"][0]["faces"]] for report in (want, got)]
    assert len(faces[0]) == len(faces[1]) > 20
    np.testing.assert_allclose(faces[0], faces[1], atol=ATOL)
