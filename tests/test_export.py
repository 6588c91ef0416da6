"""Exports: SavedModel signatures reloaded in a fresh process, the README's REST example, input
errors, atomic writes, TFLite float32 / int8 (small, fast settings; the AP comparison is in
test_export_slow.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.cli import main
from retinaface_tf.models import preprocess
from retinaface_tf.serving import (DETECTION_KEYS, RAW_KEYS, SIGNATURES, ExportSettings, calibration_dataset,
                                   export_saved_model, export_tflite, letterbox, tflite_runner)

REPO = Path(__file__).resolve().parents[1]
WIDER_VAL = ["0--Parade/0_Parade_Parade_0_102.jpg", "12--Group/12_Group_Group_12_Group_Group_12_354.jpg",
             "50--Celebration_Or_Party/50_Celebration_Or_Party_birthdayparty_50_134.jpg"]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image_paths(reference_dir, widerface_dir):
    """The reference photo (1024x624) and three WIDER val photos of other sizes."""
    return [reference_dir / "biubug6_test.jpg"] + [widerface_dir / "val" / "images" / p for p in WIDER_VAL]


@pytest.fixture(scope="module")
def detectors(bundled_model):
    from retinaface_tf.inference import Detector
    model, config = bundled_model
    return {thr: Detector(model=model, config=config, score_threshold=thr) for thr in (0.5, 0.02)}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, bundled_model):
    """Exported through the CLI on its defaults alone (SavedModel into ./exported/retinaface; RGB, score 0.5,
    IoU 0.4, K 750), from another working folder."""
    work = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        assert main(["export"]) == 0
    out = work / "exported" / "retinaface"
    assert sorted(p.name for p in work.iterdir()) == ["exported"] and sorted(p.name for p in out.iterdir()) == ["1"]
    return out / "1"


@pytest.fixture(scope="module")
def loaded(saved_model):
    return tf.saved_model.load(str(saved_model))


def _decode_rgb(data: bytes) -> np.ndarray:
    """OpenCV's pixels (what the Detector reads with cv2.imread), as RGB."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy()


def assert_same_detections(boxes, scores, landmarks, num, expected, *, k=750):
    """Padded signature outputs of one image equal the Detector's (0.5 px, 1e-4)."""
    n = int(num)
    assert n == len(expected) and n > 0
    np.testing.assert_allclose(boxes[:n], expected.boxes, atol=0.5, rtol=0)
    np.testing.assert_allclose(scores[:n], expected.scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(landmarks[:n], expected.landmarks, atol=0.5, rtol=0)
    assert boxes.shape == (k, 4) and not np.any(boxes[n:]) and not np.any(scores[n:])


# ---------------------------------------------------------------------------- the one post-processing
def test_single_image_branch_equals_batched(bundled_model, reference_dir):
    from retinaface_tf.ops.anchors import generate_anchors
    from retinaface_tf.ops.nms import postprocess

    model, config = bundled_model
    image = cv2.resize(cv2.imread(str(reference_dir / "biubug6_test.jpg")), (640, 480))
    out = model(preprocess(image[None]))
    scores = tf.nn.softmax(out["classes"])[..., 1]
    anchors = generate_anchors(480, 640)
    kw = dict(input_size=(480, 640), output_scale=tf.constant([[1.5, 2.0]]), score_threshold=0.02,
              iou_threshold=0.4, pre_nms_top_k=5000, max_detections=750)
    batched = postprocess(out["bbox"], scores, out["landmarks"], anchors, **kw)
    single = postprocess(out["bbox"], scores, out["landmarks"], anchors, single_image=True, **kw)
    assert int(single["num_detections"][0]) > 100
    for key in batched:
        np.testing.assert_array_equal(single[key].numpy(), batched[key].numpy())
    with pytest.raises(ValueError, match="batch of 1"):
        postprocess(tf.concat([out["bbox"]] * 2, 0), tf.concat([scores] * 2, 0), tf.concat([out["landmarks"]] * 2, 0),
                    anchors, single_image=True, **{**kw, "output_scale": tf.ones([2, 2])})


# ---------------------------------------------------------------------------- SavedModel
FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    inputs = np.load(sys.argv[2], allow_pickle=False)
    calls = json.loads(sys.argv[3])
    results = {}
    for name, (signature, kwargs) in calls.items():
        args = {k: tf.constant(inputs[v]) for k, v in kwargs.items()}
        for key, value in model.signatures[signature](**args).items():
            results[name + "/" + key] = value.numpy()
    assert not any(m.startswith("retinaface_tf") for m in sys.modules), "the package was imported"
    np.savez(sys.argv[4], signatures=np.array(sorted(model.signatures)), **results)
""")


def test_saved_model_in_fresh_process_equals_detector(saved_model, image_paths, detectors, tmp_path):
    encoded = [p.read_bytes() for p in image_paths]  # real 4:2:0 JPEGs (the demo photo and WIDER val)
    decoded = [_decode_rgb(b) for b in encoded]  # cv2.imread's pixels: image_bytes must decode the same
    assert len({d.shape for d in decoded}) == 4  # mixed sizes
    photo_rgb = decoded[0][None]
    same_size = np.stack([cv2.resize(d, (640, 448)) for d in decoded])  # a batch of 4 for `images`
    np.savez(tmp_path / "in.npz", photo=photo_rgb, batch=same_size, bytes1=np.array(encoded[:1], dtype=bytes),
             bytes4=np.array(encoded, dtype=bytes), thr=np.float32(0.02), iou=np.float32(0.4))
    calls = {
        "default1": ["serving_default", {"images": "photo"}],
        "default4": ["serving_default", {"images": "batch"}],
        "thresholds4": ["with_thresholds", {"images": "batch", "score_threshold": "thr", "iou_threshold": "iou"}],
        "bytes1": ["image_bytes", {"image_bytes": "bytes1"}],
        "bytes4": ["image_bytes", {"image_bytes": "bytes4"}],
        "bytes_thresholds4": ["image_bytes_with_thresholds",
                              {"image_bytes": "bytes4", "score_threshold": "thr", "iou_threshold": "iou"}],
        "raw1": ["raw", {"images": "photo"}],
    }
    env = {**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(saved_model), str(tmp_path / "in.npz"),
                           json.dumps(calls), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert sorted(out["signatures"]) == sorted(SIGNATURES)

    def check(name, b, expected):
        assert_same_detections(*(out[f"{name}/{k}"][b] for k in DETECTION_KEYS[:3]), out[f"{name}/num_detections"][b],
                               expected)

    det, det_low = detectors[0.5], detectors[0.02]
    check("default1", 0, det.detect(photo_rgb[0, ..., ::-1]))
    for b, expected in enumerate(det.detect_batch([im[..., ::-1] for im in same_size])):
        check("default4", b, expected)
    for b, expected in enumerate(det_low.detect_batch([im[..., ::-1] for im in same_size])):
        check("thresholds4", b, expected)
    check("bytes1", 0, det.detect(decoded[0][..., ::-1]))
    for b, expected in enumerate(det.detect_batch([d[..., ::-1] for d in decoded])):
        check("bytes4", b, expected)
    for b, expected in enumerate(det_low.detect_batch([d[..., ::-1] for d in decoded])):
        check("bytes_thresholds4", b, expected)
    keras_raw = det.model(preprocess(photo_rgb, channel_order="rgb"))
    for key in RAW_KEYS:
        np.testing.assert_allclose(out[f"raw1/{key}"], keras_raw[key].numpy(), atol=1e-4, rtol=0)
    assert out["bytes_thresholds4/num_detections"].sum() > 2 * out["bytes4/num_detections"].sum()


def _graph_ops(concrete) -> set:
    """Op types of a concrete function's graph and of every function it calls."""
    graph_def = concrete.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def test_saved_model_runs_the_fused_network(loaded):
    """The export saves ``saved_model_network``: no batch-norm arithmetic, native depthwise (no
    grouped convolution, which TensorFlow without oneDNN refuses), the RGB flip folded away, and
    the detection signatures do not split the merged heads of every anchor."""
    ops = _graph_ops(loaded.signatures["serving_default"])
    assert "DepthwiseConv2dNative" in ops and "Conv2D" in ops
    assert not ops & {"ReverseV2", "FusedBatchNormV3", "Rsqrt"}, ops  # the unfused export has ReverseV2 and Rsqrt
    # detections gather rows of the merged heads before slicing (MergedHeads); raw outputs are split
    assert "SplitV" not in ops and "SplitV" in _graph_ops(loaded.signatures["raw"])


ONEDNN_OFF = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    inputs = np.load(sys.argv[2], allow_pickle=False)
    out = {}
    for key, value in model.signatures["serving_default"](images=tf.constant(inputs["photo"])).items():
        out["images/" + key] = value.numpy()
    for key, value in model.signatures["image_bytes"](image_bytes=tf.constant(inputs["bytes"])).items():
        out["bytes/" + key] = value.numpy()
    for key, value in model.signatures["raw"](images=tf.constant(inputs["photo"])).items():
        out["raw/" + key] = value.numpy()
    np.savez(sys.argv[3], **out)
""")


def test_saved_model_bgr_runs_without_onednn(bundled_model, image_paths, detectors, tmp_path):
    """A BGR export (the network takes BGR, the ``image_bytes`` graph flips its RGB decode) loaded
    by a TensorFlow with oneDNN off (as in builds without it) gives the Detector's detections."""
    model, config = bundled_model
    version = export_saved_model(model, config, tmp_path / "bgr", ExportSettings(channel_order="bgr"))
    info = __import__("yaml").safe_load((version / "assets.extra" / "export.yaml").read_text())
    assert info["channel_order"] == "bgr" and info["network"].endswith("_fused")
    photo = image_paths[0]
    bgr = cv2.imread(str(photo))
    np.savez(tmp_path / "in.npz", photo=bgr[None], bytes=np.array([photo.read_bytes()], dtype=bytes))
    env = {**os.environ, "PYTHONPATH": "", "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", ONEDNN_OFF, str(version), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    expected = detectors[0.5].detect(bgr)
    for name in ("images", "bytes"):
        assert_same_detections(*(out[f"{name}/{k}"][0] for k in DETECTION_KEYS), expected)
    keras_raw = detectors[0.5].model(preprocess(bgr[None], channel_order="bgr"))
    for key in RAW_KEYS:
        np.testing.assert_allclose(out[f"raw/{key}"], keras_raw[key].numpy(), atol=1e-4, rtol=0)
    loaded_bgr = tf.saved_model.load(str(version))
    assert "ReverseV2" in _graph_ops(loaded_bgr.signatures["image_bytes"])  # RGB decode → BGR network
    assert "ReverseV2" not in _graph_ops(loaded_bgr.signatures["serving_default"])


def test_saved_model_files_and_cli_listing(saved_model):
    from retinaface_tf.config import Config

    cfg = Config.from_yaml(saved_model / "assets.extra" / "config.yaml")
    assert cfg.postprocess.score_threshold == 0.5 and cfg.postprocess.max_detections == 750
    info = json.loads(json.dumps(__import__("yaml").safe_load((saved_model / "assets.extra" / "export.yaml").read_text())))
    assert info["channel_order"] == "rgb" and sorted(info["signatures"]) == sorted(SIGNATURES)
    assert info["network"].endswith("_fused_rgb")  # saved_model_network: BN folded, RGB flip in the first conv
    assert info["signatures"]["image_bytes_with_thresholds"]["inputs"] == ["image_bytes", "iou_threshold", "score_threshold"]
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip("saved_model_cli not installed beside the interpreter")
    proc = subprocess.run([str(cli), "show", "--dir", str(saved_model), "--all"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in text
    for key in DETECTION_KEYS + RAW_KEYS:
        assert f"outputs['{key}']" in text
    assert "dtype: DT_UINT8" in text and "dtype: DT_STRING" in text
    assert re.search(r"inputs\['images'\] tensor_info:\s+dtype: DT_UINT8\s+shape: \(-1, -1, -1, 3\)", text)


def _readme_section() -> str:
    """The deployment page (docs/deployment.md), where the README's deployment section moved."""
    return (REPO / "docs" / "deployment.md").read_text()


def _tf_serving_predict(model, body: dict) -> dict:
    """What TF Serving's REST predict does with a JSON body: pick the signature, turn
    ``{"b64": ...}`` into bytes, row ("instances") or columnar ("inputs") form into tensors of
    the signature's dtypes, and answer in the same form."""
    signature = model.signatures[body.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]

    def unb64(v):
        if isinstance(v, dict) and set(v) == {"b64"}:
            return base64.b64decode(v["b64"])
        return [unb64(x) for x in v] if isinstance(v, list) else v

    if "instances" in body:
        rows = body["instances"]
        columns = ({name: [row[name] for row in rows] for name in specs} if len(specs) > 1
                   else {next(iter(specs)): rows})
    else:
        columns = body["inputs"] if len(specs) > 1 or isinstance(body["inputs"], dict) and set(body["inputs"]) <= set(specs) \
            else {next(iter(specs)): body["inputs"]}
    assert set(columns) == set(specs), f"TF Serving requires every input: {sorted(specs)}"
    tensors = {name: tf.constant(unb64(value), dtype=specs[name].dtype) for name, value in columns.items()}
    outputs = {k: v.numpy().tolist() for k, v in signature(**tensors).items()}
    if "instances" in body:
        return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(len(body["instances"]))]}
    return {"outputs": outputs}


def test_readme_rest_example_against_loaded_model(loaded, reference_dir, detectors, tmp_path, monkeypatch):
    import urllib.request

    section = _readme_section()
    block = re.search(r"```python\n(import base64, json, urllib.request.*?)```", section, re.S).group(1)
    photo = reference_dir / "biubug6_test.jpg"
    seen = {}

    def fake_urlopen(request):
        assert request.full_url == "http://localhost:8501/v1/models/retinaface:predict"
        body = json.loads(request.data)
        seen["body"] = body
        return io.BytesIO(json.dumps(_tf_serving_predict(loaded, body)).encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    scope: dict = {}
    exec(compile(block, "docs/deployment.md", "exec"), scope)  # noqa: S102 - the docs' own example
    assert seen["body"]["signature_name"] == "image_bytes" and len(seen["body"]["instances"]) == 1
    expected = detectors[0.5].detect(_decode_rgb(photo.read_bytes())[..., ::-1])
    assert scope["n"] == len(expected) == 28
    np.testing.assert_allclose(np.array(scope["boxes"]), expected.boxes, atol=0.5, rtol=0)
    np.testing.assert_allclose(np.array(scope["scores"]), expected.scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(scope["landmarks"]), expected.landmarks, atol=0.5, rtol=0)

    # The columnar thresholds example, "..." replaced by the photo.
    line = re.search(r"`(\{\"signature_name\": \"image_bytes_with_thresholds\".*?\})`", section).group(1)
    body = json.loads(line.replace('"..."', json.dumps(base64.b64encode(photo.read_bytes()).decode())))
    reply = json.loads(json.dumps(_tf_serving_predict(loaded, body)))["outputs"]
    low = detectors[0.02].detect(_decode_rgb(photo.read_bytes())[..., ::-1])
    n = reply["num_detections"][0]
    assert body["inputs"]["score_threshold"] == 0.3 and len(expected) < n < len(low)
    assert min(reply["detection_scores"][0][:n]) > 0.3 >= reply["detection_scores"][0][n]


def test_wrong_input_gives_clear_error(loaded):
    sig = loaded.signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor but is a float tensor"):
        sig["serving_default"](images=tf.zeros([1, 64, 64, 3], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images \[64,64,3\] is not compatible with expected shape \[\?,\?,\?,3\]"):
        sig["serving_default"](images=tf.zeros([64, 64, 3], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images \[1,64,64,4\] is not compatible"):
        sig["raw"](images=tf.zeros([1, 64, 64, 4], tf.uint8))
    for empty in ([1, 0, 64, 3], [0, 64, 64, 3]):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be \[batch, height, width, 3\], each >= 1"):
            sig["with_thresholds"](images=tf.zeros(empty, tf.uint8), score_threshold=tf.constant(0.5),
                                   iou_threshold=tf.constant(0.4))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes \[\] is not compatible with expected shape \[\?\]"):
        sig["image_bytes"](image_bytes=tf.constant(b"x"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        sig["image_bytes"](image_bytes=tf.constant([b"not an image"]))


def test_saved_model_export_is_atomic_and_versioned(bundled_model, tmp_path, monkeypatch):
    from retinaface_tf.serving import saved_model as export

    model, config = bundled_model

    class FakeFn:  # tracing the real signatures is covered elsewhere; this test is about files
        structured_input_signature = ((tf.TensorSpec([None], tf.uint8, name="images"),), {})
        structured_outputs = {"detection_boxes": None}

    class FakeModule:
        def signatures(self):
            return {name: FakeFn() for name in SIGNATURES}

    monkeypatch.setattr(export, "build_export_module", lambda *args, **kwargs: FakeModule())
    target = tmp_path / "m"
    (target / "1").mkdir(parents=True)
    (target / "1" / "saved_model.pb").write_bytes(b"good model")
    (target / "1" / "assets.extra").mkdir()
    (target / "1" / "assets.extra" / "export.yaml").write_text("format: saved_model\n")
    (target / "7").mkdir()
    (target / "notes").mkdir()
    assert export.next_version(target) == 8

    def broken_save(obj, path, signatures=None):
        Path(path, "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(export.tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, config, target, ExportSettings(), version=1)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, config, target, ExportSettings())
    assert (target / "1" / "saved_model.pb").read_bytes() == b"good model"
    assert sorted(p.name for p in target.iterdir()) == ["1", "7", "notes"]  # no temporary left behind

    def fake_save(obj, path, signatures=None):
        assert sorted(signatures) == sorted(SIGNATURES)
        Path(path, "saved_model.pb").write_bytes(b"new")

    monkeypatch.setattr(export.tf.saved_model, "save", fake_save)
    assert export_saved_model(model, config, target, ExportSettings()) == target / "8"
    assert export_saved_model(model, config, target, ExportSettings(), version=1) == target / "1"
    assert (target / "1" / "saved_model.pb").read_bytes() == b"new"
    assert (target / "8" / "assets.extra" / "config.yaml").exists()


# ---------------------------------------------------------------------------- TFLite
SIZE = (320, 320)


@pytest.fixture(scope="module")
def tflite_inputs(image_paths):
    return [letterbox(cv2.imread(str(p)), SIZE) for p in image_paths[:2]]


@pytest.mark.parametrize("fuse", [True, False])
def test_tflite_raw_fp32_equals_keras(bundled_model, tmp_path, tflite_inputs, fuse):
    """The exported network (by default serving.tflite_network's, RGB flip folded into the first
    convolution; ``fuse=False`` the trained model as it is) gives the Keras model's raw outputs."""
    model, config = bundled_model
    path = export_tflite(model, config, tmp_path / "raw", ExportSettings(), input_size=SIZE, raw=True, fuse=fuse)
    assert path.name == "raw.tflite"
    info = __import__("yaml").safe_load(path.with_suffix(".yaml").read_text())
    assert info["network"] == ("retinaface_fused_rgb_uint8" if fuse else model.name)
    runner = tflite_runner(path)
    for batch, _ in tflite_inputs:
        out = runner(images=batch)
        ref = model(preprocess(batch, channel_order="rgb"))
        assert set(out) == set(RAW_KEYS)
        for key in RAW_KEYS:
            assert out[key].shape == ref[key].shape == (1, 4200, {"bbox": 4, "classes": 2, "landmarks": 10}[key])
            np.testing.assert_allclose(out[key], ref[key].numpy(), atol=1e-4, rtol=0)


def test_tflite_fp32_detections_equal_detector(detectors, tmp_path, tflite_inputs, image_paths):
    from retinaface_tf.config import Config

    out_path = tmp_path / "fp32.tflite"
    assert main(["export", "--format", "tflite", "--output", str(out_path), "--input-size", "320x320",
                 "--score-threshold", "0.02"]) == 0
    info = __import__("yaml").safe_load(out_path.with_suffix(".yaml").read_text())
    assert info["input"] == {"name": "images", "dtype": "uint8", "shape": [1, 320, 320, 3]}
    assert Config.from_dict(info["config"]).postprocess.score_threshold == 0.02
    runner = tflite_runner(out_path)
    for (batch, scale), path in zip(tflite_inputs, image_paths):
        out = runner(images=batch)
        expected = detectors[0.02].detect(batch[0, ..., ::-1])
        assert_same_detections(out["detection_boxes"][0], out["detection_scores"][0], out["detection_landmarks"][0],
                               out["num_detections"][0], expected)
        h, w = cv2.imread(str(path)).shape[:2]
        n = int(out["num_detections"][0])
        assert (out["detection_boxes"][0, :n, 2] / scale).max() <= w + 1 and scale == min(320 / h, 320 / w)


def test_tflite_int8_calibrated_through_model_preprocessing(bundled_model, widerface_dir, tmp_path, tflite_inputs):
    from ai_edge_litert.interpreter import Interpreter

    model, config = bundled_model
    calibration = sorted((widerface_dir / "train" / "images").rglob("*.jpg"))[:8]
    rep = list(calibration_dataset(calibration, SIZE, channel_order="rgb")())
    assert len(rep) == 8 and all(r["images"].dtype == np.uint8 and r["images"].shape == (1, *SIZE, 3) for r in rep)
    np.testing.assert_array_equal(rep[0]["images"], letterbox(cv2.imread(str(calibration[0])), SIZE)[0])
    fp32 = export_tflite(model, config, tmp_path / "fp32", ExportSettings(), input_size=SIZE)
    int8 = export_tflite(model, config, tmp_path / "int8", ExportSettings(), input_size=SIZE, quantize="int8",
                         calibration_images=calibration)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size

    # The exported graph is serving.tflite_network's: nothing XNNPACK leaves to the built-in kernels in
    # the network (no standalone RELU, no nearest resize, no RGB->BGR REVERSE_V2: folded into stage1_0).
    # The image itself: bordered with the mean colour in uint8 and cast once (MeanBorder), no
    # subtraction or padding pass over it in float (the mean is folded into stage1_0).
    for path in (fp32, int8):
        interp = Interpreter(model_path=str(path))
        op_names = {op["op_name"] for op in interp._get_ops_details()}
        assert not op_names & {"RELU", "RESIZE_NEAREST_NEIGHBOR", "REVERSE_V2"}, (path.name, op_names)
        shapes = {t["index"]: (tuple(t["shape"]), t["dtype"]) for t in interp.get_tensor_details()}
        on_image = [(op["op_name"], *shapes[op["outputs"][0]]) for op in interp._get_ops_details()
                    if len(shapes[op["outputs"][0]][0]) == 4 and shapes[op["outputs"][0]][0][-1] == 3]
        h, w = SIZE
        assert on_image == [("CONCATENATION", (1, h + 2, w, 3), np.uint8), ("CONCATENATION", (1, h + 2, w + 2, 3), np.uint8),
                            ("CAST", (1, h + 2, w + 2, 3), np.float32)], (path.name, on_image)
    interp = Interpreter(model_path=str(int8))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    out_dtype = {tensors[op["outputs"][0]]["name"]: tensors[op["outputs"][0]]["dtype"] for op in convs}
    assert len(out_dtype) == 56
    assert all((dt == np.float32) == ("stage1_" in name) for name, dt in out_dtype.items())  # INT8_FLOAT_LAYERS
    assert sum(dt == np.int8 for dt in out_dtype.values()) == 45

    # The calibrated range where the int8 part starts equals the Keras activation range over
    # the calibration images fed through the model's own preprocessing (a /255-scaled
    # calibration would give a range ~100x narrower).
    quantize = next(op for op in ops if op["op_name"] == "QUANTIZE"
                    and "stage1_5_pw" in tensors[op["inputs"][0]]["name"])
    scale, zero = tensors[quantize["outputs"][0]]["quantization"]
    lo, hi = scale * (-128 - zero), scale * (127 - zero)
    backbone = model.get_layer("mobilenet025")
    probe = keras.Model(backbone.input, backbone.get_layer("stage1_5_pw_relu").output)
    acts = np.concatenate([probe(preprocess(r["images"], channel_order="rgb")).numpy().ravel() for r in rep])
    assert abs(lo - acts.min()) < 0.03 * (hi - lo) and abs(hi - acts.max()) < 0.03 * (hi - lo), (lo, hi, acts.min(), acts.max())
    # Post-processing stays float32: decoded boxes (EXP), NMS, outputs.
    for op in ops:
        if op["op_name"] in ("SUB", "EXP", "NON_MAX_SUPPRESSION_V4", "SOFTMAX"):
            assert tensors[op["inputs"][0]]["dtype"] == np.float32, op["op_name"]
    assert all(d["dtype"] in (np.float32, np.int32) for d in interp.get_output_details())

    # Detections agree with float32 on a photo not used for calibration.
    (batch, _), = tflite_inputs[:1]
    a, b = tflite_runner(fp32)(images=batch), tflite_runner(int8)(images=batch)
    na, nb = int(a["num_detections"][0]), int(b["num_detections"][0])
    assert na > 10 and abs(na - nb) <= 0.25 * na
    from retinaface_tf.ops.boxes import iou_matrix_np
    iou = iou_matrix_np(a["detection_boxes"][0, :na], b["detection_boxes"][0, :nb], plus_one=True)
    assert (iou.max(axis=1) > 0.5).mean() >= 0.8
    steps = b["detection_scores"][0, :nb] * 256  # scores are not on an 8-bit output grid
    assert np.abs(steps - np.round(steps)).max() > 0.05


def test_tflite_export_is_atomic(bundled_model, tmp_path, monkeypatch):
    from retinaface_tf.serving import tflite as export

    model, config = bundled_model
    good = tmp_path / "m.tflite"
    good.write_bytes(b"\0\0\0\0TFL3 good model")

    def broken(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(export, "convert_tflite", broken)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_tflite(model, config, good, ExportSettings(), input_size=(64, 64))
    assert good.read_bytes() == b"\0\0\0\0TFL3 good model" and sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


@pytest.mark.parametrize("argv, message", [
    (["--format", "tflite", "--quantize", "int8"], "--quantize int8 needs --calibration-images"),
    (["--format", "tflite", "--input-size", "640by480"], "--input-size must be WxH"),
    (["--format", "tflite", "--input-size", "16x16"], "input size must be at least 32x32"),
    (["--format", "saved_model", "--raw"], "--raw: only for --format tflite"),
    (["--format", "tflite", "--version", "3"], "--version: only for --format saved_model"),
    (["--format", "saved_model", "--score-threshold", "1.5"], "score threshold must be in [0, 1]"),
    (["--format", "tflite", "--quantize", "int8", "--calibration-images", "EMPTY"], "no images found in"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "EMPTY").mkdir()
    argv = [a.replace("EMPTY", str(tmp_path / "EMPTY")) for a in argv]
    assert main(["export", "--output", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tflite").exists()


def test_default_output_names():
    from retinaface_tf.commands.export import default_output
    assert default_output("saved_model") == Path("exported/retinaface")
    assert default_output("tflite") == Path("exported/retinaface_fp32_640x640.tflite")
    assert default_output("tflite", "int8", (640, 480), raw=True) == Path("exported/retinaface_int8_640x480_raw.tflite")


def test_parse_size():
    from retinaface_tf.commands.export import parse_size
    assert parse_size("640x480") == (640, 480) and parse_size("320") == (320, 320)  # (width, height)
