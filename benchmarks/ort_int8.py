"""int8 against ONNX Runtime's own int8: our TFLite int8 export against the reference network
exported to ONNX and quantized by ONNX Runtime (static QDQ, per channel), both calibrated on the
same WIDER *train* images, with WIDER AP of each and speed side by side (issue 30 §3).

    python benchmarks/ort_int8.py [--ref-python /tmp/refenv/bin/python] [--calibration-count 144]
                                  [--rounds 5] [--limit N] [--json]

1. The reference network with its official weights is exported to ONNX by the reference's own
   code (``../shared/peer/bench_onnx_reference.py --export-only``, the reference venv), then
   ``onnxruntime.quantization.quant_pre_process`` + ``quantize_static`` (QDQ, int8 weights per
   channel, uint8 activations, MinMax calibration) on ``--calibration-count`` WIDER train images
   letterboxed into 640x640, BGR minus the mean, as the reference takes them.
2. Ours: ``export --format tflite`` float32 and int8 (the evaluation settings: score > 0.02,
   NMS 0.4), int8 calibrated on the same train images (``scripts/eval_tflite.py``'s export).
3. AP: the 310 WIDER val images of ``../shared``, each letterboxed into 640x640; ONNX Runtime's
   raw outputs are decoded and NMS'd by our ``ops.nms.postprocess`` with the same settings; the
   TFLite models do it inside. Detections mapped back to original pixels, our ``evaluate``.
4. Speed: a child process importing only ONNX Runtime and LiteRT (no TensorFlow) times, on one
   letterboxed photo, alternating variant by variant each round: ONNX Runtime float32 and int8
   (network only, 2 intra-op threads, all graph optimisations) and our TFLite float32 and int8
   (end to end: uint8 in, detections out, XNNPACK, 2 threads; exported with the default settings,
   score > 0.5, for timing); median of ``--repeats`` calls per
   round, best round per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import describe  # noqa: E402

SHARED = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared"))
SIZE = (640, 640)
BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)

_CHILD = """
import json, statistics, sys, time
import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
onnx_paths, tflite_paths, batch_path, rounds, repeats = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
u8 = np.load(batch_path)                                       # [1, 640, 640, 3] uint8 BGR (letterboxed)
x = np.ascontiguousarray((u8.astype(np.float32) - np.array([104, 117, 123], np.float32)).transpose(0, 3, 1, 2))
rgb = np.ascontiguousarray(u8[..., ::-1])
runs = {}
for name, path in onnx_paths.items():
    so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    runs[name] = lambda sess=sess: sess.run(None, {"input": x})
for name, path in tflite_paths.items():
    run = Interpreter(model_path=path, num_threads=2).get_signature_runner("serving_default")
    runs[name] = lambda run=run: run(images=rgb)
for run in runs.values():
    for _ in range(3):
        run()
best = {name: float("inf") for name in runs}
for _ in range(rounds):
    for name, run in runs.items():
        ts = []
        for _ in range(repeats):
            t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
        best[name] = min(best[name], statistics.median(ts) * 1e3)
print(json.dumps(best))
"""


class _Calibration:
    """``onnxruntime.quantization.CalibrationDataReader`` over letterboxed train images."""

    def __init__(self, paths):
        self._paths = iter(paths)

    def get_next(self):
        import cv2

        from retinaface_tf.serving import letterbox

        path = next(self._paths, None)
        if path is None:
            return None
        u8, _ = letterbox(cv2.imread(str(path)), SIZE, channel_order="bgr")
        return {"input": np.ascontiguousarray((u8.astype(np.float32) - BGR_MEAN).transpose(0, 3, 1, 2))}


def export_reference(ref_python: str, out: Path) -> Path:
    peer = SHARED / "peer"
    env = dict(os.environ, PYTHONPATH=str(peer / "torchvision_shim"))
    cmd = [ref_python, str(peer / "bench_onnx_reference.py"), str(peer / "Pytorch_Retinaface"),
           str(SHARED / "reference" / "mobilenet0.25_Final.pth"), str(out), "--export-only"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return out


def quantize_reference(fp32: Path, out: Path, calibration) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def predict_onnx(path: Path, images: dict) -> dict:
    """Predictions of the reference's ONNX network (raw outputs) with our decode + NMS."""
    import cv2
    import onnxruntime as ort
    import tensorflow as tf

    from eval_tflite import EVAL_SETTINGS, _to_wider
    from retinaface_tf.ops.anchors import generate_anchors
    from retinaface_tf.ops.nms import postprocess
    from retinaface_tf.serving import letterbox

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    anchors = generate_anchors(tf.constant(SIZE[1]), tf.constant(SIZE[0]), [[16, 32], [64, 128], [256, 512]],
                               [8, 16, 32], False)
    post = tf.function(lambda b, s, l: postprocess(  # noqa: E741
        b, s, l, anchors, input_size=(SIZE[1], SIZE[0]), output_scale=tf.ones([1, 2]),
        score_threshold=EVAL_SETTINGS["score_threshold"], iou_threshold=EVAL_SETTINGS["iou_threshold"],
        pre_nms_top_k=EVAL_SETTINGS["pre_nms_top_k"], max_detections=EVAL_SETTINGS["max_detections"]))
    preds = {}
    for key, image_path in images.items():
        u8, scale = letterbox(cv2.imread(str(image_path)), SIZE, channel_order="bgr")
        x = np.ascontiguousarray((u8.astype(np.float32) - BGR_MEAN).transpose(0, 3, 1, 2))
        bbox, conf, landms = sess.run(None, {"input": x})  # test phase: conf is already softmaxed
        out = post(bbox, conf[..., 1], landms)
        n = int(out["num_detections"][0])
        preds[key] = _to_wider(out["boxes"][0, :n].numpy(), out["scores"][0, :n].numpy(), scale)
    return preds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref-python", default="/tmp/refenv/bin/python")
    p.add_argument("--calibration-count", type=int, default=144)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="only the first N val images (AP)")
    p.add_argument("--out", type=Path, default=None, help="keep the models here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import cv2

    from eval_tflite import export_variants, predict_tflite
    from retinaface_tf.evaluation.widerface import evaluate_predictions, list_images, load_ground_truth
    from retinaface_tf.fileio import bundled_image
    from retinaface_tf.models.weights import load_model
    from retinaface_tf.serving import ExportSettings, export_tflite, letterbox

    widerface = SHARED / "widerface"
    gt = load_ground_truth(widerface / "ground_truth")
    images = list_images(widerface / "val" / "images", gt)
    if args.limit:
        images = dict(list(images.items())[:args.limit])
    calibration = sorted((widerface / "train" / "images").rglob("*.jpg"))[:args.calibration_count]
    out = args.out or Path(tempfile.mkdtemp(prefix="ort-int8-"))
    out.mkdir(parents=True, exist_ok=True)
    onnx = {"ort fp32": export_reference(args.ref_python, out / "reference.onnx")}
    onnx["ort int8 (QDQ)"] = quantize_reference(onnx["ort fp32"], out / "reference_int8.onnx", calibration)
    tflite = export_variants(out, ("none", "int8"), SIZE, calibration, len(calibration))
    tflite = {"tflite fp32 (ours)": tflite["none"], "tflite int8 (ours)": tflite["int8"]}
    # timed as exported by default (score > 0.5; the evaluation's 0.02 makes NMS sort thousands)
    model, config = load_model()
    timed = {name: export_tflite(model, config, out / f"timed_{mode}.tflite", ExportSettings(), input_size=SIZE,
                                 quantize=mode, calibration_images=calibration, calibration_count=len(calibration))
             for name, mode in (("tflite fp32 (ours)", "none"), ("tflite int8 (ours)", "int8"))}

    ap = {}
    for name, path in onnx.items():
        ap[name] = evaluate_predictions(predict_onnx(path, images), gt).to_dict()
    for name, path in tflite.items():
        ap[name] = evaluate_predictions(predict_tflite(path, images, SIZE)[0], gt).to_dict()

    batch, _ = letterbox(cv2.imread(str(bundled_image())), SIZE, channel_order="bgr")
    np.save(out / "batch.npy", batch)
    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({k: str(v) for k, v in onnx.items()}),
                            json.dumps({k: str(v) for k, v in timed.items()}), str(out / "batch.npy"),
                            str(args.rounds), str(args.repeats)], capture_output=True, text=True, check=True)
    ms = json.loads(child.stdout.strip().splitlines()[-1])
    result = {"machine": describe(), "val_images": len(images), "calibration_images": len(calibration),
              "variants": {name: {"ms": round(ms[name], 2), **{k: round(100 * ap[name][k], 2)
                                                               for k in ("easy", "medium", "hard")}}
                           for name in ms}}
    base = ms["ort fp32"]
    print(f"{describe()}; {len(images)} val images letterboxed to 640x640; calibration {len(calibration)} train images")
    print(f"{'variant':<22} {'ms':>7} {'x ORT fp32':>10} {'easy':>7} {'medium':>7} {'hard':>7}")
    for name, row in result["variants"].items():
        print(f"{name:<22} {row['ms']:7.2f} {base / row['ms']:10.2f} {row['easy']:7.2f} {row['medium']:7.2f} "
              f"{row['hard']:7.2f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
