"""TFLite inference speed: ms per 640x640 image, end to end (decode + NMS inside the model).

    python benchmarks/bench_tflite.py [--repeats 50] [--threads 2] [--size 640x640] [--json]

Each variant (float32, float16 weights, dynamic-range int8 weights, full-integer int8 network)
is exported with ``retinaface_tf.serving.export_tflite`` (application settings: score > 0.5, NMS
0.4, K 750) and run with the LiteRT interpreter (XNNPACK, ``--threads``) on the bundled demo
photo letterboxed to the input size; the figures are the median and the best of ``--repeats``
timed calls of the signature runner (uint8 image in, padded detections out), all variants
exported first and then timed in one fresh process that imports LiteRT only, alternating call
by call. A float32 ``raw`` row (network
only, head outputs) is given for comparison with the network-only Keras / PyTorch figures.
int8 is calibrated on the WIDER train images in ``../shared`` when present (else the demo
photo): speed does not depend on it. ``tflite_rows`` is what ``bench_inference.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


# Timing runs in a fresh process that imports LiteRT only: in the exporting process TensorFlow's
# own thread pool, just busy with conversion and calibration, competed with XNNPACK's threads for
# the two cores (fp32 medians of 17-22 ms there against 13 ms here, and order-dependent). The child
# opens the interpreters itself, as serving.tflite_runner does, because importing retinaface_tf
# would import TensorFlow into it.
_CHILD = """
import json, statistics, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
paths, batch, repeats, threads = json.loads(sys.argv[1]), np.load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runners = [Interpreter(model_path=p, num_threads=threads).get_signature_runner("serving_default") for p in paths]
for run in runners:
    for _ in range(3):
        out = run(images=batch)
times = [[] for _ in runners]
for _ in range(repeats):  # alternate the variants call by call: a slow minute hits all of them
    for run, ts in zip(runners, times):
        t = time.perf_counter()
        out = run(images=batch)
        ts.append(time.perf_counter() - t)
result = []
for run, ts in zip(runners, times):
    out = run(images=batch)
    faces = int(np.asarray(out["num_detections"])[0]) if "num_detections" in out else None
    result.append({"median_ms": round(statistics.median(ts) * 1e3, 2), "best_ms": round(min(ts) * 1e3, 2),
                   "faces": faces})
print(json.dumps(result))
"""


def time_in_child(paths: list[str], batch_npy: Path, repeats: int, threads: int) -> list[dict]:
    """Time the ``.tflite`` files alternately, call by call, in a process that imports LiteRT only."""
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(paths), str(batch_npy), str(repeats), str(threads)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"TFLite timing failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def tflite_rows(repeats: int = 50, *, input_size: tuple[int, int] = (640, 640), threads: int = 2,
                variants=VARIANTS, out_dir: str | os.PathLike | None = None) -> list[dict]:
    """Export each variant, then time them all (``time_in_child``). Returns ``[{"name", "ms"
    (median), "best_ms", "size_mib", "quantize", "raw", "threads", "width", "height", "faces"},
    ...]``."""
    import cv2
    import numpy as np

    from retinaface_tf.serving import ExportSettings, export_tflite, letterbox
    from retinaface_tf.fileio import bundled_image
    from retinaface_tf.models.weights import load_model

    model, config = load_model()
    settings = ExportSettings.from_config(config, score_threshold=0.5)
    batch, _ = letterbox(cv2.imread(str(bundled_image())), input_size)
    calibration = _calibration_images()
    w, h = input_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir or tmp)
        paths = [export_tflite(model, config, folder / f"retinaface_{label.split()[0]}{'_raw' if raw else ''}.tflite",
                               settings, input_size=input_size, quantize=quantize, raw=raw,
                               calibration_images=calibration)
                 for label, quantize, raw in variants]
        np.save(Path(tmp) / "batch.npy", batch)
        timed = time_in_child([str(p) for p in paths], Path(tmp) / "batch.npy", repeats, threads)
        for (label, quantize, raw), path, t in zip(variants, paths, timed):
            rows.append({"name": f"tflite {label} {w}x{h}", "ms": t["median_ms"], "best_ms": t["best_ms"],
                         "size_mib": round(path.stat().st_size / 2**20, 2), "quantize": quantize, "raw": raw,
                         "threads": threads, "width": w, "height": h, "faces": None if raw else t["faces"]})
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
    print(f"{'model':<40}{'median':>8}{'best':>8}{'MiB':>7}{'faces':>7}  ({args.threads} threads, "
          f"{args.repeats} alternating calls each, ms per image)")
    for r in rows:
        faces = "" if r["faces"] is None else r["faces"]
        print(f"{r['name']:<40}{r['ms']:>8.2f}{r['best_ms']:>8.2f}{r['size_mib']:>7.2f}{faces:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
