"""A folder of photos of different sizes: batched (padded into one canvas per batch) against one
by one, in the same run, on the WIDER val images in ``../shared`` (issue 13 §3).

For each mode the ``Detector`` runs ``iter_detect`` over the image files (read inside, as
``retinaface-tf detect`` does) at the evaluation threshold 0.02, original size. It reports
images per second (best of ``--rounds``; the two modes alternate) and the WIDER easy / medium /
hard AP of each mode's detections.

    python benchmarks/bench_batching.py [--batch-size 8] [--rounds 3] [--limit N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared"))


def run_mode(detector, paths: list[Path]) -> tuple[list, float]:
    results = [None] * len(paths)
    t0 = time.perf_counter()
    for i, det in detector.iter_detect([str(p) for p in paths]):
        if isinstance(det, Exception):
            raise det
        results[i] = det
    return results, time.perf_counter() - t0


def main(argv=None) -> int:
    from retinaface_tf.evaluation.tta import detections_to_rows
    from retinaface_tf.evaluation.widerface import evaluate_predictions, list_images, load_ground_truth
    from retinaface_tf.inference import Detector
    from retinaface_tf.models.weights import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(SHARED / "widerface" / "val" / "images"))
    p.add_argument("--ground-truth", default=str(SHARED / "widerface" / "ground_truth"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.ground_truth).is_dir():
        print(f"skipped: {args.ground_truth} not found (set RETINAFACE_SHARED)", file=sys.stderr)
        return 0
    gt = load_ground_truth(args.ground_truth)
    images = list_images(args.images, gt)
    if args.limit:
        images = dict(list(images.items())[:args.limit])
    keys, paths = list(images), list(images.values())
    model, config = load_model()
    modes = {"one by one": Detector(model=model, config=config, score_threshold=0.02, batch_size=1),
             f"batched ({args.batch_size}, mixed sizes)": Detector(model=model, config=config, score_threshold=0.02,
                                                                  batch_size=args.batch_size)}
    for det in modes.values():  # build both graphs before timing
        run_mode(det, paths[:2])
    best = {name: float("inf") for name in modes}
    dets = {}
    for r in range(args.rounds):
        order = list(modes) if r % 2 == 0 else list(modes)[::-1]
        for name in order:
            dets[name], seconds = run_mode(modes[name], paths)
            best[name] = min(best[name], seconds)
    rows = []
    for name in modes:
        preds = {k: detections_to_rows(d.boxes, d.scores) for k, d in zip(keys, dets[name])}
        ap = evaluate_predictions(preds, gt).ap
        rows.append({"mode": name, "images_per_second": round(len(paths) / best[name], 2),
                     "easy": round(100 * ap["easy"], 2), "medium": round(100 * ap["medium"], 2),
                     "hard": round(100 * ap["hard"], 2)})
    one, batched = rows
    summary = {"images": len(paths), "rounds": args.rounds, "cpu_count": os.cpu_count(), "rows": rows,
               "speedup": round(batched["images_per_second"] / one["images_per_second"], 3),
               "ap_difference": {s: round(batched[s] - one[s], 2) for s in ("easy", "medium", "hard")}}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{len(paths)} images, best of {args.rounds} rounds (modes alternating)")
    print(f"{'mode':32s} {'img/s':>7s} {'easy':>6s} {'medium':>7s} {'hard':>6s}")
    for row in rows:
        print(f"{row['mode']:32s} {row['images_per_second']:7.2f} {row['easy']:6.2f} {row['medium']:7.2f} "
              f"{row['hard']:6.2f}")
    print(f"batched / one by one: {summary['speedup']:.3f}x; AP difference {summary['ap_difference']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
