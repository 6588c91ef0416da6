"""Every backbone of the registry reproduces the PyTorch code that defines it, on the fixtures
that code made (``../shared/reference/resnet50_random.*``: biubug6's ResNet-50;
``../shared/reference/yakhyo/*``: yakhyo/retinaface-pytorch's MobileNetV1 x0.25 / x0.5 / x1,
MobileNetV2, ResNet-18), through the checkpoint reader, the key maps, the trained network, the
fused network and the Detector.

Tolerances. The fixtures are random networks with large activations (logits up to ~20): the
reference's own float32 outputs are 8e-5 (deltas) and 1.7e-4 (face probabilities) away from the
same network in float64 (``test_resnet50_as_exact_as_the_reference``, measured here), so no
float32 implementation can agree with them closer than that. The raw outputs are held to
:data:`DELTA_ATOL` / :data:`PROB_ATOL` (about 2x that floor), and our float32 error against
float64 to 1.5x the reference's own. Detections: every reference detection is found (boxes within
0.01 px, scores within :data:`PROB_ATOL`); an extra or missing one is allowed only where its score
is within float noise of the 0.02 threshold.
"""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.errors import CheckpointError
from retinaface_tf.models import preprocess

DELTA_ATOL = 2.5e-4
PROB_ATOL = 4e-4
THRESHOLD = 0.02

# fixture stem -> (checkpoint, outputs, config the checkpoint converts to, family)
FIXTURES = {
    "resnet50": ("resnet50_random.pth", "resnet50_random_outputs.npz", "resnet50", "reference"),
    "yakhyo_mobilenetv1_025": ("yakhyo/yakhyo_mobilenetv1_025_random.pth",
                               "yakhyo/yakhyo_mobilenetv1_025_random_outputs.npz", "mobilenet025", "yakhyo"),
    "yakhyo_mobilenetv1_050": ("yakhyo/yakhyo_mobilenetv1_050_random.pth",
                               "yakhyo/yakhyo_mobilenetv1_050_random_outputs.npz", "mobilenet050", "yakhyo"),
    "yakhyo_mobilenetv1": ("yakhyo/yakhyo_mobilenetv1_random.pth", "yakhyo/yakhyo_mobilenetv1_random_outputs.npz",
                           "mobilenet100", "yakhyo"),
    "yakhyo_mobilenetv2": ("yakhyo/yakhyo_mobilenetv2_random.pth", "yakhyo/yakhyo_mobilenetv2_random_outputs.npz",
                           "mobilenetv2", "yakhyo"),
    "yakhyo_resnet18": ("yakhyo/yakhyo_resnet18_random.pth", "yakhyo/yakhyo_resnet18_random_outputs.npz",
                        "resnet18", "yakhyo"),
}
SIZES = ["native_", "640_"]
_MODELS: dict = {}


def _fixture(reference_dir, name):
    pth, npz, config, family = FIXTURES[name]
    path = reference_dir / pth
    if not path.exists():
        pytest.skip(f"fixture {path} not found (set RETINAFACE_REFERENCE_DIR)")
    return path, np.load(reference_dir / npz), config, family


def _loaded(reference_dir, name):
    """(trained model, config, fused network, Detector) of a fixture, loaded once per session."""
    if name not in _MODELS:
        from retinaface_tf.inference import Detector
        from retinaface_tf.models.fused import fuse_for_inference
        from retinaface_tf.models.weights import load_model
        path, _, _, _ = _fixture(reference_dir, name)
        model, cfg = load_model(path)  # the .pth directly: its network is read from its keys
        _MODELS.clear()  # one fixture's models at a time: ResNet-50 is 110 MB
        _MODELS[name] = (model, cfg, fuse_for_inference(model),
                         Detector(model=model, config=cfg, score_threshold=THRESHOLD))
    return _MODELS[name]


@pytest.fixture(scope="module")
def photo(reference_dir):
    return cv2.imread(str(reference_dir / "biubug6_test.jpg"), cv2.IMREAD_COLOR)


def _image(photo, size):
    return photo if size == "native_" else cv2.resize(photo, (640, 640), interpolation=cv2.INTER_LINEAR)


def assert_raw_outputs_equal(out, ref, size):
    np.testing.assert_allclose(np.asarray(out["bbox"])[0], ref[size + "loc"], atol=DELTA_ATOL, rtol=0)
    np.testing.assert_allclose(tf.nn.softmax(np.asarray(out["classes"])[0]).numpy(), ref[size + "conf"],
                               atol=PROB_ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out["landmarks"])[0], ref[size + "landms"], atol=DELTA_ATOL, rtol=0)


def assert_detections_equal(boxes, scores, landmarks, expected):
    """Every expected detection (pixel x1 y1 x2 y2 score + 10 landmark coordinates) found with
    boxes and landmarks within 0.01 px and its score within PROB_ATOL; any unmatched one on
    either side scores within PROB_ATOL of the threshold."""
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    landmarks = np.asarray(landmarks).reshape(len(scores), 10)
    assert len(expected) > 100
    distance = np.abs(expected[:, None, :4] - boxes[None]).max(-1) if len(boxes) else np.full((len(expected), 1), 1e9)
    match = distance.argmin(1)
    found = distance.min(1) < 0.01
    assert np.all(expected[~found, 4] < THRESHOLD + PROB_ATOL), expected[~found, 4]
    np.testing.assert_allclose(scores[match[found]], expected[found, 4], atol=PROB_ATOL, rtol=0)
    np.testing.assert_allclose(landmarks[match[found]], expected[found, 5:], atol=0.01, rtol=0)
    extra = np.setdiff1d(np.arange(len(scores)), match[found])
    assert np.all(scores[extra] < THRESHOLD + PROB_ATOL), scores[extra]
    assert len(extra) + found.sum() == len(scores) and found.sum() >= len(expected) - 1


@pytest.mark.parametrize("name", list(FIXTURES))
def test_convert_recognises_the_checkpoint(reference_dir, tmp_path, name):
    from retinaface_tf.models.weights import convert_checkpoint
    path, _, config, family = _fixture(reference_dir, name)
    summary = convert_checkpoint(path, tmp_path / "model")
    assert (summary["kind"], summary["family"], summary["backbone"], summary["config"]) == ("full", family, config,
                                                                                            config)
    state = _state(reference_dir, name)
    assert summary["skipped"] == sum(k.endswith("num_batches_tracked") for k in state)
    assert summary["tensors"] + summary["skipped"] == len(state)
    model, cfg, _, _ = _loaded(reference_dir, name)
    from retinaface_tf.models.weights import load_model
    converted, converted_cfg = load_model(tmp_path / "model")
    assert converted_cfg == cfg and cfg.name == config
    for a, b in zip(converted.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(FIXTURES))
def test_raw_outputs_equal_the_source(reference_dir, photo, name, size):
    _, ref, _, _ = _fixture(reference_dir, name)
    model, _, fused, _ = _loaded(reference_dir, name)
    x = preprocess(_image(photo, size)[None])
    assert_raw_outputs_equal(model(x, training=False), ref, size)
    assert_raw_outputs_equal(fused(x), ref, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(FIXTURES))
def test_detections_equal_the_source(reference_dir, photo, name, size):
    _, ref, _, _ = _fixture(reference_dir, name)
    _, _, _, detector = _loaded(reference_dir, name)
    dets = detector.detect(_image(photo, size))
    assert_detections_equal(dets.boxes, dets.scores, dets.landmarks, ref[size + "dets"])


@pytest.mark.slow  # 20 s; mixed-size batches of the default network: tests/test_batching.py
def test_resnet50_mixed_size_batch_equals_each_alone(reference_dir, photo):
    """ResNet-50 in the masked canvas (images of different sizes in one batch): each image's
    detections equal its run alone."""
    _, _, _, detector = _loaded(reference_dir, "resnet50")
    images = [photo, cv2.resize(photo, (517, 333)), photo[100:500, 200:900]]
    batch = detector.detect_batch(images)
    for image, got in zip(images, batch):
        alone = detector.detect(image)
        assert len(got) == len(alone) > 0
        np.testing.assert_allclose(got.boxes, alone.boxes, atol=0.01)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-5)


def test_resnet50_as_exact_as_the_reference(reference_dir, photo):
    """Against the same network in float64, our float32 outputs are no further off than the
    reference's own float32 outputs (times 1.5): the differences above are float32 rounding."""
    _, ref, _, _ = _fixture(reference_dir, "resnet50")
    model, cfg, fused, _ = _loaded(reference_dir, "resnet50")
    from retinaface_tf.models.retinaface import build_from_config
    image = _image(photo, "640_")
    x32 = preprocess(image[None])
    ours = {key: np.asarray(value)[0] for key, value in fused(x32).items()}
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy("float64")
    keras.config.set_floatx("float64")  # the backbone's own input too
    try:
        exact_model = build_from_config(cfg, input_dtype="float64")
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)
    assert exact_model.get_layer("resnet50").get_layer("layer4_2_conv3").compute_dtype == "float64"
    for a, b in zip(exact_model.weights, model.weights):
        a.assign(b.numpy().astype(np.float64))
    x64 = image[None].astype(np.float64) - np.asarray([104, 117, 123], np.float64)
    exact = {key: np.asarray(value, np.float64)[0] for key, value in exact_model(x64, training=False).items()}

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    for key, ref_key, transform in (("bbox", "loc", None), ("landmarks", "landms", None),
                                    ("classes", "conf", softmax)):
        truth = exact[key] if transform is None else transform(exact[key])
        mine = ours[key] if transform is None else transform(ours[key].astype(np.float64))
        reference_error = np.abs(ref["640_" + ref_key] - truth).max()
        our_error = np.abs(mine - truth).max()
        assert 1e-6 < reference_error < 5e-4, (key, reference_error)
        assert our_error <= 1.5 * reference_error, (key, our_error, reference_error)


# ---------------------------------------------------------------------- wrong or damaged checkpoints
def _state(reference_dir, name):
    from retinaface_tf.convert.torch_weights import load_torch_checkpoint
    return load_torch_checkpoint(_fixture(reference_dir, name)[0])


def test_wrong_config_names_both_networks_and_writes_nothing(reference_dir, tmp_path, capsys):
    from retinaface_tf.cli import main
    path = _fixture(reference_dir, "yakhyo_mobilenetv2")[0]
    out = tmp_path / "out"
    assert main(["convert", str(path), "--output", str(out), "--config", "resnet50"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "mobilenetv2 RetinaFace (yakhyo/retinaface-pytorch)" in err and "resnet50" in err
    assert "fx.features.0.0.weight" in err
    assert not out.exists()
    official = reference_dir / "mobilenet0.25_Final.pth"
    assert main(["convert", str(official), "--output", str(out), "--config", "resnet50"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mobilenet025 RetinaFace (biubug6/Pytorch_Retinaface)" in err and "builds a resnet50 network" in err
    assert not out.exists()


@pytest.mark.parametrize("damage, needle", [
    ("missing", "missing tensor body.layer3.4.bn2.running_var"),
    ("shape", "tensor body.layer2.0.downsample.0.weight has shape"),
    ("extra", "1 tensors fit no Keras layer: body.layer4.9.conv1.weight"),
])
def test_damaged_resnet50_checkpoint_is_one_line_naming_the_tensor(reference_dir, tmp_path, capsys, damage, needle):
    from retinaface_tf.cli import main
    from test_convert import write_zip_checkpoint
    state = {f"module.{k}": v for k, v in _state(reference_dir, "resnet50").items()}
    if damage == "missing":
        del state["module.body.layer3.4.bn2.running_var"]
    elif damage == "shape":
        state["module.body.layer2.0.downsample.0.weight"] = np.zeros((512, 128, 1, 1), np.float32)
    else:
        state["module.body.layer4.9.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    bad = tmp_path / "Resnet50_damaged.pth"
    write_zip_checkpoint(bad, state)
    out = tmp_path / "out"
    assert main(["convert", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and str(bad) in err
    assert not out.exists()


def test_mobilenet_weights_refused_by_a_resnet50_model(reference_dir):
    from retinaface_tf.models import build_retinaface
    from retinaface_tf.models.weights import load_weights
    model = build_retinaface(backbone="resnet50", fpn_channels=256, fpn_leaky=0.0)
    before = model.weights[0].numpy().copy()
    with pytest.raises(CheckpointError, match=r"mobilenet025 RetinaFace .* but the model to fill is a resnet50"):
        load_weights(model, reference_dir / "mobilenet0.25_Final.pth")
    np.testing.assert_array_equal(model.weights[0].numpy(), before)


@pytest.mark.parametrize("name, drop", [("resnet50", "body."), ("yakhyo_resnet18", "fx."),
                                        ("yakhyo_mobilenetv2", "fx.")])
def test_imagenet_backbone_state_dict_converts(reference_dir, tmp_path, name, drop):
    """A torchvision ImageNet state dict (the fixture's backbone tensors with the prefix removed,
    plus a classifier) converts to backbone weights that equal the fixture's backbone."""
    from retinaface_tf.models.backbones import build_backbone
    from retinaface_tf.models.weights import convert_checkpoint
    from test_convert import write_zip_checkpoint
    state = {k[len(drop):]: v for k, v in _state(reference_dir, name).items() if k.startswith(drop)}
    classifier = "classifier.1" if "mobilenetv2" in name else "fc"
    state[f"{classifier}.weight"] = np.zeros((1000, 8), np.float32)
    state[f"{classifier}.bias"] = np.zeros((1000,), np.float32)
    path = tmp_path / "imagenet.pth"
    write_zip_checkpoint(path, state)
    summary = convert_checkpoint(path, tmp_path / "bb")
    config = FIXTURES[name][2]
    assert (summary["kind"], summary["family"], summary["backbone"], summary["skipped"]) == (
        "backbone", None, config, 2 + sum(k.endswith("num_batches_tracked") for k in state))
    body = build_backbone(config)
    body.load_weights(str(tmp_path / "bb" / "backbone.weights.h5"))
    model, _, _, _ = _loaded(reference_dir, name)
    for a, b in zip(body.weights, model.get_layer(config).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_resnet34_state_dict_is_recognised(tmp_path):
    """No ResNet-34 fixture exists: a state dict with its names and shapes (BasicBlocks [3, 4, 6, 3],
    yakhyo's key names) is recognised as resnet34 and fills the network exactly."""
    from test_convert import write_zip_checkpoint

    from retinaface_tf.config import Config
    from retinaface_tf.convert.mapping import identify_checkpoint, torch_prefix
    from retinaface_tf.models.retinaface import build_from_config
    from retinaface_tf.models.weights import load_weights

    model = build_from_config(Config.preset("resnet34"))
    rng = np.random.default_rng(3)
    state = {}
    body = model.get_layer("resnet34")
    for layer, in_body in [(layer, True) for layer in body.layers] + [(layer, False) for layer in model.layers]:
        if not layer.weights or isinstance(layer, keras.Model):
            continue
        prefix = ("fx." if in_body else "") + torch_prefix(layer.name, family="yakhyo", key_style="torchvision",
                                                           in_backbone=in_body)
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            for suffix in ("weight", "bias", "running_mean"):
                state[f"{prefix}.{suffix}"] = rng.normal(size=n).astype(np.float32)
            state[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
        else:
            kh, kw, cin, cout = layer.kernel.shape
            state[f"{prefix}.weight"] = rng.normal(size=(cout, cin, kh, kw)).astype(np.float32)
            if layer.use_bias:
                state[f"{prefix}.bias"] = rng.normal(size=layer.bias.shape).astype(np.float32)
    assert "fx.layer3.5.conv2.weight" in state and "fx.layer4.2.bn2.weight" in state
    info = identify_checkpoint(state, "r34.pth")
    assert (info.backbone, info.family, info.kind) == ("resnet34", "yakhyo", "full")
    write_zip_checkpoint(tmp_path / "retinaface_r34.pth", state)
    fresh = build_from_config(Config.preset("resnet34"))
    load_weights(fresh, tmp_path / "retinaface_r34.pth")
    np.testing.assert_array_equal(fresh.get_layer("resnet34").get_layer("layer3_5_conv2").kernel.numpy(),
                                  state["fx.layer3.5.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(fresh.get_layer("ClassHead_2").kernel.numpy(),
                                  state["class_head.class_head.2.weight"].transpose(2, 3, 1, 0))

# ---------------------------------------------------------------------- every path runs every network
@pytest.mark.parametrize("name", [name if name == "yakhyo_resnet18" else pytest.param(name, marks=pytest.mark.slow)
                                  for name in FIXTURES])
def test_exports_and_litert_equal_the_source(reference_dir, photo, tmp_path, name):
    """The SavedModel (``serving_default`` and ``image_bytes``), TFLite fp32 (raw outputs),
    ``Detector(runtime="litert")`` and the ONNX export (in ONNX Runtime) of each converted
    checkpoint reproduce its source at 640x640
    (ResNet-18 in the default suite, a residual network in a third of ResNet-50's time; ResNet-50
    and the other networks in the slow one)."""
    from retinaface_tf.cli import main
    from retinaface_tf.inference import Detector
    from retinaface_tf.serving import tflite_runner
    path, ref, _, _ = _fixture(reference_dir, name)
    model, cfg, _, _ = _loaded(reference_dir, name)
    image = _image(photo, "640_")
    expected = ref["640_dets"]

    out = tmp_path / "sm"
    assert main(["export", "--weights", str(path), "--output", str(out), "--score-threshold", "0.02",
                 "--channel-order", "bgr"]) == 0
    loaded = tf.saved_model.load(str(out / "1"))
    got = loaded.signatures["serving_default"](images=tf.constant(image[None]))
    n = int(got["num_detections"][0])
    assert_detections_equal(got["detection_boxes"][0, :n], got["detection_scores"][0, :n],
                            got["detection_landmarks"][0, :n], expected)
    png = cv2.imencode(".png", image)[1].tobytes()  # lossless: the same pixels, decoded to RGB in the graph
    got = loaded.signatures["image_bytes"](image_bytes=tf.constant([png]))
    n = int(got["num_detections"][0])
    assert_detections_equal(got["detection_boxes"][0, :n], got["detection_scores"][0, :n],
                            got["detection_landmarks"][0, :n], expected)

    raw = tmp_path / "r50_raw.tflite"
    assert main(["export", "--weights", str(path), "--format", "tflite", "--raw", "--input-size", "640x640",
                 "--channel-order", "bgr", "--output", str(raw)]) == 0
    assert_raw_outputs_equal(tflite_runner(raw)(images=image[None]), ref, "640_")

    litert = Detector(model=model, config=cfg, score_threshold=THRESHOLD, runtime="litert")
    dets = litert.detect(image)
    assert_detections_equal(dets.boxes, dets.scores, dets.landmarks, expected)

    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from retinaface_tf.serving.onnx import onnx_runner
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(path), "--format", "onnx", "--score-threshold", "0.02",
                 "--channel-order", "bgr", "--output", str(onnx)]) == 0
    got = onnx_runner(onnx)(images=image[None])
    n = int(got["num_detections"][0])
    assert_detections_equal(got["detection_boxes"][0, :n], got["detection_scores"][0, :n],
                            got["detection_landmarks"][0, :n], expected)
