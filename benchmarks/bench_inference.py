"""Inference speed: milliseconds per image, network only and end to end (decode + NMS).

    python benchmarks/bench_inference.py [--repeats 20] [--json] [--no-tflite]

Rows: 640x640, 640x480 (W x H) and 1920x1080 at batch 1, and 640x640 at batch 8. "network" is
the Keras model's forward pass on a preprocessed float batch; "end-to-end" is the Detector's
graph from uint8 pixels to padded detections (preprocess + network + softmax + decode + NMS) at
the application threshold (0.5) and at the evaluation threshold (0.02, many more boxes into
NMS). The input is the bundled demo photo resized to each size, so NMS sees real detections.
TFLite rows (issue 4) come from benchmarks/bench_tflite.py when it and ai-edge-litert exist.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine import cpu_name  # noqa: E402
from retinaface_tf.fileio import bundled_image  # noqa: E402
from retinaface_tf.inference import Detector  # noqa: E402
from retinaface_tf.models import preprocess  # noqa: E402

CASES = [((640, 640), 1), ((480, 640), 1), ((1080, 1920), 1), ((640, 640), 8)]  # (H, W), batch


def _time(fn, repeats: int) -> float:
    fn()  # trace / warm up
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000.0


def run(repeats: int) -> list[dict]:
    det = Detector()
    net = tf.function(lambda x: det.model(x, training=False), reduce_retracing=True)
    photo = cv2.imread(str(bundled_image()))
    rows = []
    for (h, w), batch in CASES:
        images = np.stack([cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR)] * batch)
        x = preprocess(images)
        scale = np.ones((batch, 2), np.float32)
        net_ms = _time(lambda: [t.numpy() for t in net(x).values()], repeats) / batch

        def e2e(thr):
            return lambda: [t.numpy() for t in det._infer(images, scale, np.float32(thr), np.float32(0.4)).values()]

        e2e_ms = _time(e2e(0.5), repeats) / batch
        e2e_eval_ms = _time(e2e(0.02), repeats) / batch
        rows.append({"name": f"keras {w}x{h} b{batch}", "width": w, "height": h, "batch": batch,
                     "network_ms": round(net_ms, 2), "end_to_end_ms": round(e2e_ms, 2),
                     "end_to_end_thr002_ms": round(e2e_eval_ms, 2),
                     "overhead_pct": round(100.0 * (e2e_ms / net_ms - 1.0), 1)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--no-tflite", action="store_true", help="skip the TFLite rows")
    args = p.parse_args(argv)
    rows = run(args.repeats)
    tflite = []
    if not args.no_tflite:
        try:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bench_tflite import tflite_rows  # noqa: E402
            tflite = tflite_rows(repeats=args.repeats)
        except ImportError as exc:
            print(f"(TFLite rows skipped: {exc})", file=sys.stderr)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
               "gpu": [d.name for d in tf.config.list_physical_devices("GPU")]}
    if args.json:
        print(json.dumps({"machine": machine, "keras": rows, "tflite": tflite}, indent=1))
        return 0
    print(f"# {machine['cpu']}, {machine['cores']} cores, TF {machine['tensorflow']}, GPU: {machine['gpu'] or 'none'}")
    print(f"{'case':<22}{'network ms/img':>16}{'e2e ms/img':>12}{'e2e@0.02':>10}{'overhead':>10}")
    for r in rows:
        print(f"{r['name']:<22}{r['network_ms']:>16.2f}{r['end_to_end_ms']:>12.2f}{r['end_to_end_thr002_ms']:>10.2f}"
              f"{r['overhead_pct']:>9.1f}%")
    for r in tflite:
        print(f"{r['name']:<22}{'':>16}{r['ms']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
