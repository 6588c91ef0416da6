"""WIDER FACE evaluation benchmarks.

``scoring``: how long the official-protocol scoring of a full-size val prediction set takes.
A prediction folder is synthesised for all 3,226 val images from ``wider_face_val.mat``: every
face jittered (a few missed), plus random false positives, ~300 boxes per image with scores
spread like a 0.02-threshold detector's; then it is read and scored from disk.

``tta``: AP and time per image of each test mode (original size, flip, the reference's
1600/2150 scale, the RetinaFace pyramid + flip + box voting) on the real val subset in
``../shared/widerface/val`` with the bundled official weights.

    python benchmarks/bench_evaluation.py                       # scoring only
    python benchmarks/bench_evaluation.py --part tta --json     # detector modes (slow: minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from machine import describe  # noqa: E402

SHARED = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared"))


def synthesise_predictions(gt, out_dir: Path, *, boxes_per_image: int = 300, seed: int = 0) -> int:
    """Write a full prediction set for ``gt`` under ``out_dir``; returns the number of boxes."""
    from retinaface_tf.evaluation.widerface import write_prediction_file

    rng = np.random.default_rng(seed)
    total = 0
    for (event, name), truth in gt.images.items():
        faces = truth.boxes
        found = faces[rng.uniform(size=len(faces)) < 0.85]
        wh = np.maximum(found[:, 2:], 1)
        jit = found + np.c_[rng.normal(0, 0.08, (len(found), 2)) * wh, rng.normal(0, 0.08, (len(found), 2)) * wh]
        # Larger faces score higher, as a real detector's do.
        tp_scores = np.clip(0.3 + 0.7 * np.tanh(np.sqrt(wh.prod(1)) / 40) + rng.normal(0, 0.1, len(found)), 0.021, 1)
        n_fp = max(boxes_per_image - len(found), 0)
        xy = rng.uniform(0, 1000, (n_fp, 2))
        fp_wh = rng.uniform(4, 80, (n_fp, 2))
        fp_scores = 0.02 + 0.98 * rng.beta(0.4, 6, n_fp)
        xywh = np.r_[jit, np.c_[xy, fp_wh]]
        scores = np.r_[tp_scores, fp_scores].astype(np.float32)
        order = np.argsort(-scores)
        xyxy = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]][order]
        write_prediction_file(out_dir, event, name, xyxy, scores[order])
        total += len(scores)
    return total


def bench_scoring(gt_dir: Path, boxes_per_image: int) -> dict:
    from retinaface_tf.evaluation import widerface as W

    t0 = time.perf_counter()
    gt = W.load_ground_truth(gt_dir)
    t_gt = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        n_boxes = synthesise_predictions(gt, Path(tmp), boxes_per_image=boxes_per_image)
        t0 = time.perf_counter()
        preds = W.read_predictions(tmp, gt, expected=gt.images)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = W.evaluate_predictions(preds, gt)
        t_score = time.perf_counter() - t0
    return {"images": res.num_images, "boxes": n_boxes, "load_ground_truth_s": round(t_gt, 2),
            "read_predictions_s": round(t_read, 2), "score_s": round(t_score, 2),
            "total_s": round(t_gt + t_read + t_score, 2),
            "ap": {s: round(res.ap[s], 4) for s in W.SETTINGS}}


MODES = {
    "original": dict(scale="original"),
    "original+flip": dict(scale="original", flip=True),
    "reference": dict(scale="reference"),
    "pyramid+flip+vote": dict(scale="pyramid", flip=True, merge="vote"),
}


def bench_tta(widerface_dir: Path, modes: list[str], events: list[str] | None, max_detections: int) -> list[dict]:
    from retinaface_tf.evaluation import widerface as W
    from retinaface_tf.evaluation.tta import TestTimeAugmentation, predict_images
    from retinaface_tf.inference import Detector

    gt = W.load_ground_truth(widerface_dir / "ground_truth")
    images = W.list_images(widerface_dir / "val" / "images", gt, events=events)
    detector = Detector(score_threshold=0.02, max_detections=max_detections)
    detector.detect(np.zeros((64, 64, 3), np.uint8))  # trace once outside the timings
    rows = []
    for mode in modes:
        tta = TestTimeAugmentation(max_detections=max_detections, **MODES[mode])
        t0 = time.perf_counter()
        preds, spi = predict_images(detector, images, tta=tta, progress=sys.stderr.isatty())
        wall = time.perf_counter() - t0
        res = W.evaluate_predictions(preds, gt)
        rows.append({"mode": mode, "description": tta.describe(), "images": res.num_images,
                     **{s: round(res.ap[s], 5) for s in W.SETTINGS},
                     "seconds_per_image": round(spi, 3), "wall_s": round(wall, 1)})
        print(f"  {mode}: {rows[-1]}", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("scoring", "tta", "all"), default="scoring")
    p.add_argument("--ground-truth", type=Path, default=SHARED / "widerface" / "ground_truth")
    p.add_argument("--boxes-per-image", type=int, default=300)
    p.add_argument("--modes", default=",".join(MODES), help="tta modes: " + ", ".join(MODES))
    p.add_argument("--events", default=None, help="tta: only these events (comma-separated)")
    p.add_argument("--max-detections", type=int, default=5000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    out = {"machine": describe()}
    if args.part in ("scoring", "all"):
        out["scoring"] = bench_scoring(args.ground_truth, args.boxes_per_image)
    if args.part in ("tta", "all"):
        modes = [m for m in args.modes.split(",") if m]
        bad = [m for m in modes if m not in MODES]
        if bad:
            p.error(f"unknown mode {bad[0]!r}")
        events = args.events.split(",") if args.events else None
        out["tta"] = bench_tta(args.ground_truth.parent, modes, events, args.max_detections)

    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"machine: {out['machine']}")
    if "scoring" in out:
        s = out["scoring"]
        print(f"\nscoring a full val prediction set ({s['images']} images, {s['boxes']} boxes)")
        print(f"{'load ground truth':<22}{s['load_ground_truth_s']:>8.2f} s")
        print(f"{'read predictions':<22}{s['read_predictions_s']:>8.2f} s")
        print(f"{'score (3 settings)':<22}{s['score_s']:>8.2f} s")
        print(f"{'total':<22}{s['total_s']:>8.2f} s   (AP of the synthetic set: {s['ap']})")
    if "tta" in out:
        print(f"\n{'mode':<20}{'easy':>8}{'medium':>8}{'hard':>8}{'s/img':>8}")
        for r in out["tta"]:
            print(f"{r['mode']:<20}{100 * r['easy']:>8.2f}{100 * r['medium']:>8.2f}{100 * r['hard']:>8.2f}"
                  f"{r['seconds_per_image']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
