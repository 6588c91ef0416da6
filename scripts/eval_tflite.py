"""WIDER FACE AP of TFLite exports at one fixed input size (float32 vs int8, ...).

TFLite inputs have a fixed size, so every variant is evaluated the same way: each val image is
letterboxed into ``--input-size`` (``retinaface_tf.serving.letterbox``), run through the model
(decode + NMS inside, score > 0.02, NMS 0.4, K 750: the reference's evaluation settings), and
the detections are mapped back to original pixels. What matters is the gap between variants;
``--keras`` adds the Keras Detector on the same letterboxed inputs as a check that float32
TFLite equals it. int8 is calibrated on WIDER *train* images (not the val images scored).

    python scripts/eval_tflite.py --widerface ../shared/widerface --modes none,int8 --keras --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retinaface_tf.evaluation.widerface import evaluate_predictions, list_images, load_ground_truth  # noqa: E402
from retinaface_tf.serving import ExportSettings, export_tflite, letterbox, tflite_runner  # noqa: E402

EVAL_SETTINGS = dict(score_threshold=0.02, iou_threshold=0.4, max_detections=750, pre_nms_top_k=5000)


def export_variants(out_dir: Path, modes, input_size, calibration_images, calibration_count: int = 100) -> dict:
    """``{mode: .tflite path}`` exported with the evaluation settings."""
    from retinaface_tf.models.weights import load_model

    model, config = load_model()
    settings = ExportSettings(**EVAL_SETTINGS)
    return {mode: export_tflite(model, config, out_dir / f"retinaface_{mode}.tflite", settings, input_size=input_size,
                                quantize=mode, calibration_images=calibration_images,
                                calibration_count=calibration_count)
            for mode in modes}


def _to_wider(boxes, scores, scale):
    """Pixel ``xyxy`` in the letterboxed input → ``[N, 5]`` top-left ``xywh`` + score in the
    original image (the prediction-file convention: ``w = x2 - x1``)."""
    boxes = boxes / scale
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], scores[:, None]], axis=1).astype(np.float64)


def predict_tflite(path, images: dict, input_size, *, num_threads: int = 2):
    """Run one .tflite over ``{key: image path}``; returns predictions and ms per image
    (inference only)."""
    import cv2

    runner = tflite_runner(path, num_threads=num_threads)
    preds, seconds = {}, 0.0
    for key, image_path in images.items():
        batch, scale = letterbox(cv2.imread(str(image_path)), input_size)
        t = time.perf_counter()
        out = runner(images=batch)
        seconds += time.perf_counter() - t
        n = int(out["num_detections"][0])
        preds[key] = _to_wider(out["detection_boxes"][0, :n], out["detection_scores"][0, :n], scale)
    return preds, 1000 * seconds / max(1, len(images))


def predict_keras(images: dict, input_size):
    import cv2

    from retinaface_tf.inference import Detector

    detector = Detector(**{k: v for k, v in EVAL_SETTINGS.items()})
    preds, seconds = {}, 0.0
    for key, image_path in images.items():
        batch, scale = letterbox(cv2.imread(str(image_path)), input_size)
        t = time.perf_counter()
        det = detector.detect(batch[0, ..., ::-1])
        seconds += time.perf_counter() - t
        preds[key] = _to_wider(det.boxes, det.scores, scale)
    return preds, 1000 * seconds / max(1, len(images))


def evaluate_variants(widerface: Path, *, modes=("none", "int8"), input_size=(640, 640), keras: bool = False,
                      calibration_count: int = 100, limit: int | None = None, out_dir: Path | None = None) -> dict:
    """``{name: {"easy", "medium", "hard", "ms", "images"}}`` for each variant."""
    gt = load_ground_truth(widerface / "ground_truth")
    images = list_images(widerface / "val" / "images", gt)
    if limit:
        images = dict(list(images.items())[:limit])
    calibration = sorted((widerface / "train" / "images").rglob("*.jpg"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_variants(Path(out_dir or tmp), modes, input_size, calibration, calibration_count)
        for mode, path in paths.items():
            preds, ms = predict_tflite(path, images, input_size)
            results[f"tflite_{mode}"] = {**evaluate_predictions(preds, gt).to_dict(), "ms": ms,
                                         "size_mib": path.stat().st_size / 2**20}
    if keras:
        preds, ms = predict_keras(images, input_size)
        results["keras"] = {**evaluate_predictions(preds, gt).to_dict(), "ms": ms}
    return results


def main(argv=None) -> int:
    from retinaface_tf.commands.export import parse_size

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widerface", type=Path, default=REPO.parent / "shared" / "widerface")
    p.add_argument("--input-size", default="640x640", help="WIDTHxHEIGHT (default 640x640)")
    p.add_argument("--modes", default="none,int8", help="comma-separated quantize modes (none, fp16, dynamic, int8)")
    p.add_argument("--keras", action="store_true", help="also the Keras Detector on the same letterboxed inputs")
    p.add_argument("--calibration-count", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="only the first N val images")
    p.add_argument("--out", type=Path, default=None, help="keep the .tflite files here")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    size = parse_size(args.input_size)
    results = evaluate_variants(args.widerface, modes=args.modes.split(","), input_size=size, keras=args.keras,
                                calibration_count=args.calibration_count, limit=args.limit, out_dir=args.out)
    print(f"WIDER val subset, letterboxed to {size[0]}x{size[1]}, score > 0.02, NMS 0.4")
    print(f"{'model':<16} {'easy':>7} {'medium':>7} {'hard':>7} {'ms/img':>7} images")
    for name, r in results.items():
        print(f"{name:<16} {100 * r['easy']:7.2f} {100 * r['medium']:7.2f} {100 * r['hard']:7.2f} {r['ms']:7.1f} {r['images']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
