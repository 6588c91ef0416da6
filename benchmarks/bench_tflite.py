"""TFLite inference speed: ms per 640x640 image, end to end (decode + NMS inside the model).

    python benchmarks/bench_tflite.py [--repeats 50] [--threads 2] [--size 640x640] [--json]

Each variant (float32, float16 weights, dynamic-range int8 weights, full-integer int8 network)
is exported with ``retinaface_tf.serving.export_tflite`` (application settings: score > 0.5, NMS
0.4, K 750) and run with the LiteRT interpreter (XNNPACK, ``--threads``) on the bundled demo
photo letterboxed to the input size; the figure is the median of ``--repeats`` timed calls of
the signature runner (uint8 image in, padded detections out). A float32 ``raw`` row (network
only, head outputs) is given for comparison with the network-only Keras / PyTorch figures.
int8 is calibrated on the WIDER train images in ``../shared`` when present (else the demo
photo): speed does not depend on it. ``tflite_rows`` is what ``bench_inference.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = (("fp32", "none", False), ("fp16", "fp16", False), ("dynamic", "dynamic", False),
            ("int8", "int8", False), ("fp32 raw (network only)", "none", True))


def _calibration_images(count: int = 32) -> list:
    shared = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared")) / "widerface" / "train" / "images"
    images = sorted(shared.rglob("*.jpg"))[:count] if shared.is_dir() else []
    if not images:
        from retinaface_tf.fileio import bundled_image
        images = [bundled_image()]
    return images


def tflite_rows(repeats: int = 50, *, input_size: tuple[int, int] = (640, 640), threads: int = 2,
                variants=VARIANTS, out_dir: str | os.PathLike | None = None) -> list[dict]:
    """Export each variant and time it. Returns ``[{"name", "ms", "size_mib", "quantize",
    "raw", "threads", "width", "height"}, ...]``."""
    import cv2
    import numpy as np

    from retinaface_tf.serving import ExportSettings, export_tflite, letterbox, tflite_runner
    from retinaface_tf.fileio import bundled_image
    from retinaface_tf.models.weights import load_model

    model, config = load_model()
    settings = ExportSettings.from_config(config, score_threshold=0.5)
    batch, _ = letterbox(cv2.imread(str(bundled_image())), input_size)
    calibration = _calibration_images()
    h, w = input_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir or tmp)
        for label, quantize, raw in variants:
            path = export_tflite(model, config, folder / f"retinaface_{label.split()[0]}{'_raw' if raw else ''}.tflite",
                                 settings, input_size=input_size, quantize=quantize, raw=raw,
                                 calibration_images=calibration)
            runner = tflite_runner(path, num_threads=threads)
            for _ in range(3):
                runner(images=batch)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                out = runner(images=batch)
                times.append(time.perf_counter() - t)
            faces = None if raw else int(np.asarray(out["num_detections"])[0])
            rows.append({"name": f"tflite {label} {w}x{h}", "ms": round(statistics.median(times) * 1000, 2),
                         "size_mib": round(path.stat().st_size / 2**20, 2), "quantize": quantize, "raw": raw,
                         "threads": threads, "width": w, "height": h, "faces": faces})
    return rows


def main(argv=None) -> int:
    from retinaface_tf.commands.export import parse_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", default="640x640", help="WIDTHxHEIGHT (default 640x640)")
    p.add_argument("--keep", default=None, help="keep the exported .tflite files in this folder")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    rows = tflite_rows(args.repeats, input_size=parse_size(args.size), threads=args.threads, out_dir=args.keep)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':<36}{'ms/img':>8}{'MiB':>7}{'faces':>7}  ({args.threads} threads, median of {args.repeats})")
    for r in rows:
        print(f"{r['name']:<36}{r['ms']:>8.2f}{r['size_mib']:>7.2f}{'' if r['faces'] is None else r['faces']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
