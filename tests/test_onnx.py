"""``export --format onnx`` and the ONNX runtime: the SavedModel's graphs converted by tf2onnx and
run by ONNX Runtime give the Keras model's head outputs (<= 1e-4) and the ``Detector``'s detections
(same count and anchors, boxes and landmarks within 0.01 px, scores within 1e-5) at any size and
batch, with the thresholds baked or as inputs. Skipped without the ``onnx`` extra."""

import sys

import cv2
import numpy as np
import pytest
import yaml

for _name in ("onnx", "onnxruntime", "tf2onnx"):
    pytest.importorskip(_name, reason=f"{_name} is not installed (pip install 'retinaface-tf[onnx]')")

import onnx  # noqa: E402

from retinaface_tf.cli import main  # noqa: E402
from retinaface_tf.errors import ExportError  # noqa: E402
from retinaface_tf.fileio import bundled_image  # noqa: E402
from retinaface_tf.inference import Detector  # noqa: E402
from retinaface_tf.models import preprocess  # noqa: E402
from retinaface_tf.runtimes.onnx import ONNX_MISSING, OnnxNetwork  # noqa: E402
from retinaface_tf.serving import ExportSettings, export_onnx, onnx_runner  # noqa: E402

ATOL_HEADS = 1e-4
SIZES = [None, (640, 640), (333, 517), (1080, 1920)]  # (H, W); None: the bundled photo, 624x1024


@pytest.fixture(scope="module")
def photo():
    return cv2.imread(str(bundled_image()), cv2.IMREAD_COLOR)


def _image(photo, size):
    return photo if size is None else cv2.resize(photo, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def exports(bundled_model, tmp_path_factory):
    """Three exports of the bundled model: thresholds baked (0.02, BGR), thresholds as inputs (RGB,
    through the command line) and head outputs (RGB)."""
    model, config = bundled_model
    folder = tmp_path_factory.mktemp("onnx")
    baked = export_onnx(model, config, folder / "baked", ExportSettings.from_config(
        config, channel_order="bgr", score_threshold=0.02))
    assert main(["export", "--format", "onnx", "--threshold-inputs", "--output", str(folder / "thresholds.onnx")]) == 0
    raw = export_onnx(model, config, folder / "raw.onnx", ExportSettings(), raw=True)
    return {"baked": baked, "thresholds": folder / "thresholds.onnx", "raw": raw}


@pytest.fixture(scope="module")
def runners(exports):
    return {key: onnx_runner(path, num_threads=2) for key, path in exports.items()}


@pytest.fixture(scope="module")
def detector(bundled_model):
    model, config = bundled_model
    return Detector(model=model, config=config, score_threshold=0.02)


def _assert_same(det, boxes, scores, landmarks, num, anchor_indices=None):
    n = int(num)
    assert n == len(det) > 0
    np.testing.assert_allclose(boxes[:n], det.boxes, atol=1e-2, rtol=0)
    np.testing.assert_allclose(scores[:n], det.scores, atol=1e-5, rtol=0)
    np.testing.assert_allclose(landmarks[:n], det.landmarks, atol=1e-2, rtol=0)
    assert not boxes[n:].any() and not scores[n:].any() and not landmarks[n:].any()  # padding is zeros
    if anchor_indices is not None:
        np.testing.assert_array_equal(anchor_indices[:n], det.anchor_indices)


def _assert_same_up_to_ties(det, boxes, scores, landmarks, num, where=""):
    """:func:`_assert_same`, except that detections whose scores are within 1e-5 of each other (a
    tie to float rounding, which the two runtimes may order either way) may come in another order:
    each detection must equal one of the Detector's with the same score."""
    n = int(num)
    assert n == len(det), where
    np.testing.assert_allclose(scores[:n], det.scores, atol=1e-5, rtol=0, err_msg=where)
    rows = np.abs(boxes[:n] - det.boxes).max(axis=1) > 1e-2
    rows |= np.abs(landmarks[:n] - det.landmarks).max(axis=(1, 2)) > 1e-2
    for i in np.flatnonzero(rows):
        same = (np.abs(det.scores - scores[i]) <= 1e-5) & (np.abs(det.boxes - boxes[i]).max(axis=1) <= 1e-2)
        same &= np.abs(det.landmarks - landmarks[i]).max(axis=(1, 2)) <= 1e-2
        assert same.any() and np.sum(np.abs(det.scores - scores[i]) <= 1e-5) > 1, (where, i, boxes[i], scores[i])


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_models_pass_the_checker_and_take_any_batch_and_size(exports):
    for key, path in exports.items():
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        inputs = {v.name: v for v in proto.graph.input}
        assert _dims(inputs["images"]) == ["batch", "height", "width", 3], key
        assert inputs["images"].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        outputs = [v.name for v in proto.graph.output]
        if key == "raw":
            assert outputs == ["bbox", "classes", "landmarks"]
            assert list(inputs) == ["images"]
            continue
        assert outputs == ["detection_boxes", "detection_scores", "detection_landmarks", "num_detections"]
        assert _dims(proto.graph.output[0]) == ["batch", 750, 4]
        assert list(inputs) == (["images", "score_threshold", "iou_threshold"] if key == "thresholds" else ["images"])
        loops = [n for n in proto.graph.node if n.op_type == "Loop"]  # one NMS step per image
        body_ops = {n.op_type for loop in loops for a in loop.attribute if a.g for n in a.g.node}
        assert "NonMaxSuppression" in body_ops


def test_description_beside_the_model(exports):
    import hashlib

    info = yaml.safe_load(exports["thresholds"].with_suffix(".yaml").read_text())
    data = exports["thresholds"].read_bytes()
    assert info["format"] == "onnx" and info["threshold_inputs"] is True and info["raw"] is False
    assert info["model_sha256"] == hashlib.sha256(data).hexdigest() and info["model_bytes"] == len(data)
    assert [v["name"] for v in info["inputs"]] == ["images", "score_threshold", "iou_threshold"]
    assert info["inputs"][0] == {"name": "images", "dtype": "uint8", "shape": ["batch", "height", "width", 3]}
    assert info["channel_order"] == "rgb" and info["converter"]["tf2onnx"]


@pytest.mark.parametrize("size", SIZES)
def test_raw_outputs_equal_keras(bundled_model, runners, photo, size):
    model, _ = bundled_model
    image = _image(photo, size)
    out = runners["raw"](images=image[None, ..., ::-1])  # the export takes RGB
    ref = model(preprocess(image[None]), training=False)
    for key in ("bbox", "classes", "landmarks"):
        assert out[key].shape == tuple(ref[key].shape), key
        np.testing.assert_allclose(out[key], ref[key].numpy(), atol=ATOL_HEADS, rtol=0, err_msg=key)


def test_raw_outputs_of_a_batch(bundled_model, runners):
    model, _ = bundled_model
    images = np.random.default_rng(3).integers(0, 256, (3, 37, 45, 3)).astype(np.uint8)
    out = runners["raw"](images=np.ascontiguousarray(images[..., ::-1]))
    ref = model(preprocess(images), training=False)
    for key in ("bbox", "classes", "landmarks"):
        np.testing.assert_allclose(out[key], ref[key].numpy(), atol=ATOL_HEADS, rtol=0, err_msg=key)


@pytest.mark.parametrize("size", SIZES)
def test_detections_equal_the_detector(runners, detector, photo, size):
    image = _image(photo, size)
    out = runners["baked"](images=image[None])  # BGR export, threshold 0.02 baked
    det = detector.detect(image)
    _assert_same(det, out["detection_boxes"][0], out["detection_scores"][0], out["detection_landmarks"][0],
                 out["num_detections"][0])


def test_a_batch_gives_each_image_its_own_detections(runners, detector, photo):
    images = np.stack([photo, np.ascontiguousarray(photo[::-1, ::-1])])
    out = runners["baked"](images=images)
    assert out["num_detections"].shape == (2,)
    for i, image in enumerate(images):
        _assert_same(detector.detect(image), out["detection_boxes"][i], out["detection_scores"][i],
                     out["detection_landmarks"][i], out["num_detections"][i])


@pytest.mark.parametrize("score, iou", [(0.5, 0.4), (0.02, 0.3)])
def test_threshold_inputs_equal_the_detector(bundled_model, runners, photo, score, iou):
    model, config = bundled_model
    image = _image(photo, (333, 517))
    det = Detector(model=model, config=config, score_threshold=score, iou_threshold=iou).detect(image)
    out = runners["thresholds"](images=np.ascontiguousarray(image[None, ..., ::-1]),
                                score_threshold=np.float32(score), iou_threshold=np.float32(iou))
    _assert_same(det, out["detection_boxes"][0], out["detection_scores"][0], out["detection_landmarks"][0],
                 out["num_detections"][0])


def test_onnx_network_heads_and_detections(bundled_model, detector, photo):
    model, config = bundled_model
    a, p = config.anchors, config.postprocess
    net = OnnxNetwork(model, num_threads=2, postprocess=dict(
        pre_nms_top_k=p.pre_nms_top_k, max_detections=p.max_detections, variances=a.variances,
        min_sizes=a.min_sizes, steps=a.steps, clip=a.clip))
    for size in (None, (333, 517)):
        image = _image(photo, size)
        out = net(image[None])
        ref = model(preprocess(image[None]), training=False)
        for key in ("bbox", "classes", "landmarks"):
            np.testing.assert_allclose(out[key], ref[key].numpy(), atol=ATOL_HEADS, rtol=0, err_msg=key)
        d = net.detect(image[None], np.ones((1, 2)), 0.02, detector.iou_threshold)
        _assert_same(detector.detect(image), d["boxes"][0], d["scores"][0], d["landmarks"][0], d["num_detections"][0],
                     d["anchor_indices"][0])
    with pytest.raises(ValueError, match="expected uint8 images"):
        net(photo)


def test_an_existing_foreign_file_is_refused_before_any_work(bundled_model, tmp_path):
    model, config = bundled_model
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("my notes")
    with pytest.raises(ExportError, match="exists and is not an ONNX model"):
        export_onnx(model, config, foreign, ExportSettings())
    assert foreign.read_text() == "my notes"
    (tmp_path / "m.yaml").write_text("format: tflite\n")
    with pytest.raises(ExportError, match="is not an ONNX export description"):
        export_onnx(model, config, tmp_path / "m", ExportSettings())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml", "notes.onnx"]


def test_an_export_replaces_its_own_files(exports, bundled_model, tmp_path):
    """A second export over the first replaces model and description (both recognised as ours)."""
    import shutil

    model, config = bundled_model
    target = tmp_path / "raw.onnx"
    shutil.copy(exports["raw"], target)
    shutil.copy(exports["raw"].with_suffix(".yaml"), target.with_suffix(".yaml"))
    export_onnx(model, config, target, ExportSettings(), raw=True)
    info = yaml.safe_load(target.with_suffix(".yaml").read_text())
    assert info["raw"] is True and sorted(p.name for p in tmp_path.iterdir()) == ["raw.onnx", "raw.yaml"]


@pytest.mark.parametrize("argv, message", [
    (["--input-size", "320x320"], "--input-size: only for --format tflite (an ONNX model takes any size)"),
    (["--quantize", "int8"], "--quantize: only for --format tflite"),
    (["--raw", "--threshold-inputs"], "--threshold-inputs: a --raw export has no thresholds"),
    (["--score-threshold", "2"], "score threshold must be in [0, 1]"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    assert main(["export", "--format", "onnx", "--output", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_threshold_inputs_only_for_onnx(tmp_path, capsys):
    assert main(["export", "--format", "tflite", "--threshold-inputs", "--output", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--threshold-inputs: only for --format onnx" in err and "\n" not in err


def test_without_the_extra_the_command_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` raises ImportError
    assert main(["export", "--format", "onnx", "--output", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert ONNX_MISSING in err and "retinaface-tf[onnx]" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_default_output_names():
    from pathlib import Path

    from retinaface_tf.commands.export import default_output
    assert default_output("onnx") == Path("exported/retinaface.onnx")
    assert default_output("onnx", raw=True) == Path("exported/retinaface_raw.onnx")
    assert default_output("onnx", threshold_inputs=True) == Path("exported/retinaface_thresholds.onnx")


@pytest.mark.slow
def test_resnet50_exports_equal_keras_and_the_detector(photo, tmp_path):
    """The ResNet-50 network (Keras' random initialisation: only the graph matters here) through the
    same export."""
    import keras

    from retinaface_tf.config import Config
    from retinaface_tf.models.retinaface import build_from_config

    keras.utils.set_random_seed(0)
    config = Config.preset("resnet50")
    model = build_from_config(config)
    image = _image(photo, (333, 517))
    raw = onnx_runner(export_onnx(model, config, tmp_path / "raw", ExportSettings(), raw=True))
    out = raw(images=np.ascontiguousarray(image[None, ..., ::-1]))
    ref = model(preprocess(image[None]), training=False)
    for key in ("bbox", "classes", "landmarks"):
        scale = max(1.0, float(np.abs(ref[key]).max()))  # random weights: outputs far from unit size
        np.testing.assert_allclose(out[key], ref[key].numpy(), atol=ATOL_HEADS * scale, rtol=0, err_msg=key)
    det = Detector(model=model, config=config, score_threshold=0.02).detect(image)
    run = onnx_runner(export_onnx(model, config, tmp_path / "det", ExportSettings.from_config(
        config, channel_order="bgr", score_threshold=0.02)))
    out = run(images=image[None])
    assert len(det) > 0
    # random weights give many faces of (nearly) the same score, whose order is a tie
    _assert_same_up_to_ties(det, out["detection_boxes"][0], out["detection_scores"][0], out["detection_landmarks"][0],
                            out["num_detections"][0])


@pytest.mark.slow
def test_wider_ap_through_onnx_equals_the_detector(runners, detector, widerface_dir):
    """The 310 WIDER val images through the ONNX export (threshold 0.02 baked, as the evaluation)
    and through the Detector: the same faces in every image (ties to 1e-5 in either order), the same
    easy / medium / hard AP."""
    from retinaface_tf.evaluation import widerface as W

    gt = W.load_ground_truth(widerface_dir / "ground_truth")
    images = W.list_images(widerface_dir / "val" / "images", gt)
    assert len(images) == 310
    ours, theirs = {}, {}
    for key, path in images.items():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        det = detector.detect(image)
        out = runners["baked"](images=image[None])
        n = int(out["num_detections"][0])
        # up to 750 faces at 0.02: a few pairs tie to 1e-6 and may come in either order
        _assert_same_up_to_ties(det, out["detection_boxes"][0], out["detection_scores"][0],
                                out["detection_landmarks"][0], n, str(key))
        boxes, scores = out["detection_boxes"][0, :n], out["detection_scores"][0, :n]
        for preds, b, s in ((ours, boxes, scores), (theirs, det.boxes, det.scores)):
            preds[key] = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2], s[:, None]], axis=1).astype(np.float64)
    a, b = W.evaluate_predictions(ours, gt), W.evaluate_predictions(theirs, gt)
    for setting in ("easy", "medium", "hard"):
        assert abs(a.ap[setting] - b.ap[setting]) < 1e-4, (setting, a.ap, b.ap)


# ---------------------------------------------------------------------- every layer type of the networks
def _layer_cases():
    """``(id, build)``: ``build(x)`` adds layers to the Keras input ``x`` ([B, H, W, 8] float32, or
    uint8 [B, H, W, 3] for ``MeanBorder``) and returns the output: every layer type the fused
    networks use, and those a ResNet backbone adds (7x7 stride-2 convolution, ReLU6, residual
    addition, 3x3 stride-2 max pooling after a one-pixel zero padding)."""
    from keras import layers

    from retinaface_tf.models.fused import FusedConv, MeanBorder, SplitHeads, UpsampleLikeConcat
    from retinaface_tf.models.layers import UpsampleLike

    cases = []
    for k, stride, padding in ((1, 1, "valid"), (3, 1, "same"), (3, 2, "same"), (3, 2, "symmetric"),
                               (3, 2, "valid"), (7, 2, "symmetric")):
        for activation in (None, "relu", "leaky_relu"):
            cases.append((f"conv{k}x{k}/{stride}-{padding}-{activation}", lambda x, k=k, s=stride, p=padding, a=activation:
                          FusedConv(5, k, strides=s, padding=p, activation=a, negative_slope=0.1)(x)))
    for depthwise in ("grouped", "native"):
        for stride in (1, 2):
            cases.append((f"depthwise-{depthwise}/{stride}", lambda x, d=depthwise, s=stride: FusedConv(
                8, 3, strides=s, padding="symmetric", activation="leaky_relu", negative_slope=0.1, depthwise=d)(x)))
    cases += [
        ("mean_border", lambda x: FusedConv(4, 3, strides=2, padding="valid", activation="relu")(
            MeanBorder((104, 117, 123), pad=1)(x))),
        ("upsample_like", lambda x: UpsampleLike()([FusedConv(8, 3, strides=2, padding="symmetric")(x), x])),
        ("upsample_like_concat", lambda x: UpsampleLikeConcat()([FusedConv(8, 3, strides=2, padding="symmetric")(x), x])),
        ("add_concatenate", lambda x: layers.Concatenate(axis=-1)([layers.Add()([x, x * 0.5]), x])),
        ("reshape_concatenate_split", lambda x: SplitHeads(["a", "b"], [2, 6])(layers.Concatenate(axis=1)(
            [layers.Reshape((-1, 8))(x), layers.Reshape((-1, 8))(FusedConv(8, 1)(x))]))),
        ("relu_leaky_relu", lambda x: layers.LeakyReLU(negative_slope=0.1)(layers.ReLU()(x) - 0.5 * x)),
        ("relu6_residual", lambda x: layers.ReLU(max_value=6.0)(layers.Add()([FusedConv(8, 3)(x), x * 4.0]))),
        ("relu6_activation", lambda x: layers.Activation("relu6")(FusedConv(8, 1)(x) * 4.0)),
        ("zero_padding_max_pooling", lambda x: layers.MaxPooling2D(3, strides=2)(layers.ZeroPadding2D(1)(x))),
    ]
    return cases


@pytest.mark.parametrize("case", [c[0] for c in _layer_cases()])
def test_each_layer_type_converts_exactly(case):
    import keras
    import tensorflow as tf

    from retinaface_tf.models.fused import default_depthwise
    from retinaface_tf.runtimes.onnx import OnnxSession, to_onnx

    if case.startswith("depthwise-grouped") and default_depthwise() != "grouped":
        pytest.skip("TensorFlow without oneDNN cannot run a grouped convolution fused with its activation "
                    "(the fused network takes native depthwise convolutions there)")
    build = dict(_layer_cases())[case]
    uint8 = case == "mean_border"
    x = keras.Input((None, None, 3 if uint8 else 8), dtype="uint8" if uint8 else "float32")
    model = keras.Model(x, build(x))
    rng = np.random.default_rng(len(case))
    for layer in model.layers:  # FusedConv has zero weights until set: random ones
        if layer.weights:
            layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    spec = tf.TensorSpec([None, None, None, x.shape[-1]], x.dtype, name="x")

    @tf.function(input_signature=[spec])
    def fn(t):
        out = model(t, training=False)
        return out if isinstance(out, dict) else {"y": out}

    session = OnnxSession(to_onnx(fn.get_concrete_function()).SerializeToString(), num_threads=1)
    for shape in ((1, 16, 16), (2, 17, 23)):  # even and odd sizes (asymmetric "same" padding, odd upsampling)
        data = (rng.integers(0, 256, (*shape, 3)).astype(np.uint8) if uint8
                else rng.normal(size=(*shape, 8)).astype(np.float32))
        got = session(x=data)
        want = {k: v.numpy() for k, v in fn(tf.constant(data)).items()}
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].shape == want[key].shape, (case, shape, key)
            np.testing.assert_allclose(got[key], want[key], atol=1e-4, rtol=1e-5, err_msg=f"{case} {shape} {key}")
