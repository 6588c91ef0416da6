"""TF Serving SavedModel speed: the export as ``export`` writes it (``saved_model_network``:
batch norm folded, native depthwise, RGB flip folded) against the unfused graph of earlier
versions (``export_saved_model(fuse=False)``), same process, alternating.

    python benchmarks/bench_saved_model.py [--rounds 15] [--json]
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/bench_saved_model.py   # a TensorFlow without oneDNN

Both are exported from the bundled model to a temporary folder, loaded with
``tf.saved_model.load`` (what TF Serving runs: the ``serving_default`` signature, uint8 RGB image
in, detections at 0.5 out) and called in turn, round after round, on the bundled photo resized to
each case; each variant keeps its best time (ms per image). The ratio is unfused / fused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = ((640, 640, 1), (480, 640, 1), (1080, 1920, 1), (640, 640, 8))


def saved_model_rows(rounds: int = 15, cases=CASES) -> list[dict]:
    import cv2
    import numpy as np
    import tensorflow as tf

    from retinaface_tf.fileio import bundled_image
    from retinaface_tf.models.weights import load_model
    from retinaface_tf.serving import ExportSettings, export_saved_model

    model, config = load_model()
    photo = cv2.imread(str(bundled_image()))[..., ::-1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fns = {}
        for name, fuse in (("fused (export default)", True), ("unfused", False)):
            path = export_saved_model(model, config, Path(tmp) / name.split()[0], ExportSettings(), fuse=fuse)
            fns[name] = tf.saved_model.load(str(path)).signatures["serving_default"]
        for h, w, b in cases:
            images = tf.constant(np.stack([cv2.resize(photo, (w, h))] * b))
            best = {name: float("inf") for name in fns}
            counts = {}
            for name, fn in fns.items():  # warm-up (first call traces / optimises the graph)
                for _ in range(2):
                    counts[name] = int(fn(images=images)["num_detections"].numpy().sum())
            n = max(3, rounds // 3) if h * w > 1_000_000 else rounds
            for _ in range(n):
                for name, fn in fns.items():
                    t = time.perf_counter()
                    fn(images=images)["num_detections"].numpy()
                    best[name] = min(best[name], (time.perf_counter() - t) * 1000 / b)
            fused, unfused = best["fused (export default)"], best["unfused"]
            rows.append({"case": f"{w}x{h} b{b}", "fused_ms": round(fused, 2), "unfused_ms": round(unfused, 2),
                         "ratio": round(unfused / fused, 2), "faces": counts, "rounds": n})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from retinaface_tf.models.fused import default_depthwise

    rows = saved_model_rows(args.rounds)
    meta = {"onednn": default_depthwise() == "grouped", "load_average": os.getloadavg()[0]}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}))
        return 0
    print(f"oneDNN: {meta['onednn']}, load average {meta['load_average']:.2f}")
    print(f"{'case':<16}{'fused ms':>10}{'unfused ms':>12}{'ratio':>8}  faces")
    for r in rows:
        print(f"{r['case']:<16}{r['fused_ms']:>10.2f}{r['unfused_ms']:>12.2f}{r['ratio']:>7.2f}x  {r['faces']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
