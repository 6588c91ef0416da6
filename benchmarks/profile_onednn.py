"""How close the Detector's convolutions are to the CPU's arithmetic floor: oneDNN's own
per-primitive times.

    python benchmarks/profile_onednn.py [--size 640x640] [--calls 15] [--json]

Runs the default ``Detector`` (fused network, oneDNN) in a child process with
``ONEDNN_VERBOSE=1``, which makes oneDNN print every primitive it executes with its
implementation and time. The calls after the first five are kept; for every convolution (by
shape, in call order within its shape) the **minimum** over those calls is its undisturbed time,
the median its typical one. Printed: wall time per call, the sum of the per-primitive minima
and medians, and the primitives by minimum time with their MACs and GFLOP/s (2 FLOP per MAC);
for scale, the GFLOP/s of a large float32 matmul in the same process (the practical peak).
The verbose printing itself costs time, so the wall times here are above the normal ones.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
import numpy as np
from retinaface_tf.inference import Detector
h, w, calls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
det = Detector()
image = (np.random.RandomState(0).rand(1, h, w, 3) * 255).astype(np.uint8)
scale = np.ones((1, 2), np.float32)
for i in range(calls):
    t = time.perf_counter()
    out = det._infer(image, scale, np.float32(0.5), np.float32(0.4))
    [v.numpy() for v in out.values()]
    print(f"@@CALL {i} {(time.perf_counter() - t) * 1000:.3f}", flush=True)
import tensorflow as tf
a, b = tf.random.normal([2048, 2048]), tf.random.normal([2048, 2048])
mm = tf.function(lambda a, b: tf.matmul(a, b))
best = 1e9
for _ in range(8):
    t = time.perf_counter()
    mm(a, b).numpy()
    best = min(best, time.perf_counter() - t)
print(f"@@PEAK {2 * 2048 ** 3 / best / 1e9:.1f}", flush=True)
"""

SHAPE = re.compile(r"(?:g(\d+))?mb(\d+)_ic(\d+)oc(\d+)_ih(\d+)oh(\d+)kh(\d+)sh\d+dh\d+ph\d+_iw(\d+)ow(\d+)kw(\d+)")


def macs(desc: str) -> int:
    """Multiply-accumulates of a oneDNN convolution problem descriptor."""
    m = SHAPE.search(desc)
    if not m:
        return 0
    g, mb, ic, oc, _, oh, kh, _, ow, kw = (int(x) if x else 1 for x in m.groups())
    return mb * oh * ow * oc * (ic // g) * kh * kw


def parse(text: str, skip: int = 5) -> dict:
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith("@@CALL")]
    walls = [float(lines[i].split()[-1]) for i in marks]
    peak = [float(line.split()[-1]) for line in lines if line.startswith("@@PEAK")]
    per_call = []
    for start, end in zip(marks[skip - 1:-1], marks[skip:]):  # primitives executed during call k
        d = collections.defaultdict(list)
        for line in lines[start + 1:end]:
            if ",primitive,exec," in line:
                f = line.split(",")
                d[(f[6], f[-2])].append(float(f[-1]))
        per_call.append(d)
    rows = []
    for key in per_call[0]:
        for j in range(len(per_call[0][key])):
            times = [sorted(c[key])[j] for c in per_call if len(c.get(key, ())) > j]
            rows.append({"impl": key[0], "shape": key[1], "macs": macs(key[1]), "min_ms": min(times),
                         "median_ms": statistics.median(times)})
    rows.sort(key=lambda r: -r["min_ms"])
    total_macs = sum(r["macs"] for r in rows)
    return {"calls": len(per_call), "wall_ms": walls[skip:], "matmul_gflops": peak[0] if peak else None, "primitives": len(rows), "total_gmac": total_macs / 1e9,
            "sum_min_ms": sum(r["min_ms"] for r in rows), "sum_median_ms": sum(r["median_ms"] for r in rows),
            "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x640", help="WIDTHxHEIGHT")
    p.add_argument("--calls", type=int, default=15)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(h), str(w), str(args.calls)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    if ",primitive,exec," not in proc.stdout:
        raise SystemExit("oneDNN printed no primitive: TensorFlow runs without oneDNN here")
    res = parse(proc.stdout)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{args.size}: {res['primitives']} oneDNN primitives per call, {res['total_gmac']:.3f} GMAC; "
          f"{res['calls']} calls kept")
    print(f"wall per call (verbose on): min {min(res['wall_ms']):.2f} ms, median {statistics.median(res['wall_ms']):.2f} ms")
    print(f"sum of per-primitive minima {res['sum_min_ms']:.2f} ms, of medians {res['sum_median_ms']:.2f} ms; "
          f"at the minima {2000 * res['total_gmac'] / res['sum_min_ms']:.0f} GFLOP/s over all convolutions")
    if res["matmul_gflops"]:
        print(f"for scale: a 2048x2048x2048 float32 matmul in the same process ran at {res['matmul_gflops']:.0f} GFLOP/s")
    print(f"{'min ms':>8}{'median':>8}{'MMAC':>8}{'GFLOP/s':>9}  implementation, shape")
    for r in res["rows"][:args.top]:
        rate = 2 * r["macs"] / r["min_ms"] / 1e6 if r["min_ms"] else 0
        print(f"{r['min_ms']:>8.3f}{r['median_ms']:>8.3f}{r['macs'] / 1e6:>8.1f}{rate:>9.0f}  {r['impl']}, {r['shape']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
