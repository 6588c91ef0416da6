"""The converted official weights reproduce the PyTorch reference's outputs and detections."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.models import preprocess


@pytest.fixture(scope="module")
def ref(reference_dir):
    return np.load(reference_dir / "biubug6_test.npz")


@pytest.fixture(scope="module")
def photo(reference_dir):
    return cv2.imread(str(reference_dir / "biubug6_test.jpg"), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module", params=["fused", "unfused", "litert"])
def detector(bundled_model, request):
    """The Detector's default (fused) path, ``fused=False`` and ``runtime="litert"``: all must
    reproduce the reference."""
    from retinaface_tf.inference import Detector
    model, config = bundled_model
    return Detector(model=model, config=config, score_threshold=0.02, fused=request.param != "unfused",
                    runtime="litert" if request.param == "litert" else "tf")


@pytest.fixture(scope="module", params=["trained", "fused"])
def network(bundled_model, request):
    """The converted Keras network, and its inference copy (``fuse_for_inference``)."""
    from retinaface_tf.models.fused import fuse_for_inference
    model, _ = bundled_model
    return model if request.param == "trained" else fuse_for_inference(model)


@pytest.mark.parametrize("prefix", ["", "resized640_"])
def test_raw_outputs_equal_reference(network, ref, photo, prefix):
    model = network
    image = photo if not prefix else cv2.resize(photo, (640, 640), interpolation=cv2.INTER_LINEAR)
    assert image.shape[:2] == ((624, 1024) if not prefix else (640, 640))
    out = model(preprocess(image[None]))
    np.testing.assert_allclose(out["bbox"][0].numpy(), ref[prefix + "loc"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(tf.nn.softmax(out["classes"][0]).numpy(), ref[prefix + "conf"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["landmarks"][0].numpy(), ref[prefix + "landms"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("prefix", ["", "resized640_"])
def test_litert_raw_outputs_equal_reference(bundled_model, ref, photo, prefix):
    """``Detector(runtime="litert")``'s network: the uint8 image in, the reference's outputs out."""
    from retinaface_tf.runtimes.litert import LiteRTNetwork
    net = _litert_network(bundled_model)
    assert isinstance(net, LiteRTNetwork)
    image = photo if not prefix else cv2.resize(photo, (640, 640), interpolation=cv2.INTER_LINEAR)
    out = net(image[None])
    np.testing.assert_allclose(out["bbox"][0], ref[prefix + "loc"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(tf.nn.softmax(out["classes"][0]).numpy(), ref[prefix + "conf"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["landmarks"][0], ref[prefix + "landms"], atol=1e-4, rtol=0)


_LITERT = {}


def _litert_network(bundled_model):
    from retinaface_tf.runtimes.litert import LiteRTNetwork
    if "net" not in _LITERT:
        _LITERT["net"] = LiteRTNetwork(bundled_model[0], num_threads=2)
    return _LITERT["net"]


@pytest.mark.parametrize("prefix", ["", "resized640_"])
def test_detections_equal_reference(detector, ref, photo, prefix):
    image = photo if not prefix else cv2.resize(photo, (640, 640), interpolation=cv2.INTER_LINEAR)
    dets = detector.detect(image)
    expected = ref[prefix + "detections"]
    assert len(dets) == len(expected) > 100
    np.testing.assert_allclose(dets.boxes, expected[:, :4], atol=0.5, rtol=0)
    np.testing.assert_allclose(dets.scores, expected[:, 4], atol=1e-4, rtol=0)
    np.testing.assert_allclose(dets.landmarks.reshape(-1, 10), expected[:, 5:], atol=0.5, rtol=0)


def test_conversion_from_pth_equals_bundled(official_pth, bundled_model, tmp_path):
    from retinaface_tf.models.weights import convert_checkpoint, load_model

    summary = convert_checkpoint(official_pth, tmp_path / "conv")
    assert summary == {"kind": "full", "family": "reference", "backbone": "mobilenet025", "config": "mobilenet025",
                       "tensors": 253, "skipped": 47, "weights": str(tmp_path / "conv" / "model.weights.h5")}
    converted, _ = load_model(tmp_path / "conv")
    bundled, _ = bundled_model
    for a, b in zip(converted.weights, bundled.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_batch_of_equal_images_matches_single(detector, photo):
    single = detector.detect(photo)
    batch = detector.detect_batch([photo, photo[:, ::-1], photo])
    assert len(batch[0]) == len(batch[2]) == len(single)
    np.testing.assert_allclose(batch[2].boxes, single.boxes, atol=1e-3)


def test_resize_maps_back_to_original_pixels(detector, photo):
    full = detector.detect(photo, score_threshold=0.9)
    small = detector.detect(photo, score_threshold=0.5, resize=0.75)
    # the big faces are found at both scales, at the same place in original pixels
    big = full.boxes[(full.boxes[:, 2] - full.boxes[:, 0]) > 50]
    assert len(big) >= 8
    for box in big:
        ious = [_iou(box, b) for b in small.boxes]
        assert max(ious) > 0.7


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
