"""WIDER FACE AP of the TF Serving SavedModel, beside the Detector on the same images.

Each val image's JPEG bytes go through the SavedModel's ``image_bytes_with_thresholds``
signature (decoded in the graph, each image at its own size; score > 0.02, NMS 0.4: the
reference's evaluation settings), exactly what a TF Serving client sends. ``--unfused`` adds the
graph earlier versions saved (``export_saved_model(fuse=False)``); ``--detector`` adds the
``Detector`` (default, fused) on ``cv2.imread`` of the same files.

    python scripts/eval_saved_model.py --widerface ../shared/widerface [--unfused] [--detector] [--json out.json]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retinaface_tf.evaluation.tta import detections_to_rows  # noqa: E402
from retinaface_tf.evaluation.widerface import evaluate_predictions, list_images, load_ground_truth  # noqa: E402

SCORE, IOU = 0.02, 0.4


def predict_saved_model(path, images: dict):
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["image_bytes_with_thresholds"]
    preds, seconds = {}, 0.0
    for key, image_path in images.items():
        data = tf.constant([Path(image_path).read_bytes()])
        t = time.perf_counter()
        out = signature(image_bytes=data, score_threshold=tf.constant(SCORE), iou_threshold=tf.constant(IOU))
        n = int(out["num_detections"][0])
        # rows as `retinaface-tf evaluate` scores them (integer xywh truncated as the reference writes them)
        preds[key] = detections_to_rows(out["detection_boxes"][0, :n].numpy(), out["detection_scores"][0, :n].numpy())
        seconds += time.perf_counter() - t
    return preds, 1000 * seconds / max(1, len(images))


def predict_detector(images: dict):
    from retinaface_tf.inference import Detector

    detector = Detector(score_threshold=SCORE, iou_threshold=IOU)
    preds, seconds = {}, 0.0
    for key, image_path in images.items():
        t = time.perf_counter()
        det = detector.detect(str(image_path))
        seconds += time.perf_counter() - t
        preds[key] = detections_to_rows(det.boxes, det.scores)
    return preds, 1000 * seconds / max(1, len(images))


def evaluate_saved_model(widerface: Path, *, unfused: bool = False, detector: bool = False,
                         limit: int | None = None) -> dict:
    """``{name: {"easy", "medium", "hard", "images", ..., "ms"}}`` for the SavedModel as ``export``
    writes it (``saved_model``), optionally the unfused one and the Detector."""
    from retinaface_tf.models.weights import load_model
    from retinaface_tf.serving import ExportSettings, export_saved_model

    gt = load_ground_truth(widerface / "ground_truth")
    images = list_images(widerface / "val" / "images", gt)
    if limit:
        images = dict(list(images.items())[:limit])
    model, config = load_model()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fuse in [("saved_model", True)] + ([("saved_model_unfused", False)] if unfused else []):
            path = export_saved_model(model, config, Path(tmp) / name, ExportSettings(), fuse=fuse)
            preds, ms = predict_saved_model(path, images)
            results[name] = {**evaluate_predictions(preds, gt).to_dict(), "ms": ms}
    if detector:
        preds, ms = predict_detector(images)
        results["detector"] = {**evaluate_predictions(preds, gt).to_dict(), "ms": ms}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widerface", type=Path, default=REPO.parent / "shared" / "widerface")
    p.add_argument("--unfused", action="store_true", help="also the unfused SavedModel of earlier versions")
    p.add_argument("--detector", action="store_true", help="also the Detector on the same files")
    p.add_argument("--limit", type=int, default=None, help="only the first N val images")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    results = evaluate_saved_model(args.widerface, unfused=args.unfused, detector=args.detector, limit=args.limit)
    n = next(iter(results.values()))["images"]
    print(f"WIDER val, {n} images at their own size, score > {SCORE}, NMS {IOU}")
    print(f"{'model':<22} {'easy':>7} {'medium':>7} {'hard':>7} {'ms/img':>7}")
    for name, r in results.items():
        print(f"{name:<22} {100 * r['easy']:7.2f} {100 * r['medium']:7.2f} {100 * r['hard']:7.2f} {r['ms']:7.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
