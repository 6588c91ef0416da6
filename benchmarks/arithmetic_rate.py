"""What a speed ratio against the reference asks of the CPU's float32 arithmetic.

    python benchmarks/arithmetic_rate.py [--rounds 3] [--repeats 10] [--json]

A ratio target on the same network is an arithmetic-rate target: the reference and we compute
the same convolutions, so running ``k`` times faster than the reference's ``t_ref`` means
doing the network's ``F`` floating-point operations at ``k · F / t_ref`` FLOP/s. This script
measures, alternately in one run (reference, ours, reference, ... each in its own process,
never two at once; each side keeps its best per case, as ``side_by_side.py`` does):

- the reference: ``../shared/peer/bench_reference.py --what infer`` (PyTorch 2 threads, median
  of 10 ms per image at 640x640, 640x480, 1920x1080 and 640x640 batch 8);
- ours (a worker process, 2 cores): every convolution's multiply-accumulates at each size,
  counted from the fused network's layers (``2 FLOP per MAC``; nothing else in the network is
  arithmetic of that order); the float32 rate of a 2048^3 ``tf.matmul`` (oneDNN, both cores:
  the practical peak); and our fastest float32 engine, the LiteRT network of
  ``Detector(runtime="litert")`` (``runtimes.litert.LiteRTNetwork``'s ``heads``, XNNPACK, one
  image per call as the Detector runs it), on 2 threads and on 1 thread (median of
  ``--repeats`` after 2 warm-up calls).

Printed per case: GFLOP per image, the reference's ms and GFLOP/s, the rate a 3x (and 3.5x)
ratio needs for the network alone (decode and NMS come on top for the Detector's target), the
matmul peak, and the rates LiteRT reaches. Where the needed rate is above the matmul peak, no
float32 change that keeps the arithmetic (exact outputs) can reach the ratio on that machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from side_by_side import CASES, SHARED, alternate, case_key, run_reference  # noqa: E402

NEEDED = (3.0, 3.5)


def network_macs(network, size) -> int:
    """Multiply-accumulates of every convolution of a fused network (``fuse_for_inference`` /
    ``fuse_for_tflite``: flat, its convolutions :class:`~retinaface_tf.models.fused.FusedConv`)
    on one ``size`` (H, W) image."""
    import keras
    import numpy as np

    from retinaface_tf.models.fused import FusedConv

    convs = [layer for layer in network.layers if isinstance(layer, FusedConv)]
    probe = keras.Model(network.inputs, [layer.output for layer in convs])
    dtype = network.inputs[0].dtype
    outs = probe([np.zeros((1, *size, 3), dtype=dtype)], training=False)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]  # one convolution: one tensor
    total = 0
    for layer, out in zip(convs, outs):
        _, h, w, c = out.shape
        cin = 1 if layer.depthwise else int(layer.kernel.shape[2])
        total += int(h) * int(w) * c * cin * layer.kernel_size ** 2
    return total


def worker(repeats: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from bench_inference import _time
    from retinaface_tf.models.fused import fuse_for_inference
    from retinaface_tf.runtimes.litert import LiteRTNetwork
    from retinaface_tf.models.weights import load_model

    model, _ = load_model()
    fused = fuse_for_inference(model)
    nets = {threads: LiteRTNetwork(model, num_threads=threads) for threads in (2, 1)}
    rng = np.random.RandomState(0)
    out = {}
    for (h, w), batch in CASES:
        image = rng.randint(0, 256, (1, h, w, 3)).astype(np.uint8)
        row = {"gmac": network_macs(fused, (h, w)) / 1e9}
        for threads, net in nets.items():
            row[f"litert_{threads}t_ms"] = _time(lambda: net(image), repeats)
        out[case_key((h, w), batch)] = row
    out["matmul_ms"] = matmul_ms()
    return out


def matmul_ms() -> float:
    """Best ms of a 2048^3 float32 ``tf.matmul`` (oneDNN, all cores): the scale for every rate."""
    import tensorflow as tf

    from bench_inference import _time

    a, b = tf.random.normal([2048, 2048]), tf.random.normal([2048, 2048])
    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    return min(_time(lambda: matmul(a, b).numpy(), 3) for _ in range(3))


def run_worker(repeats: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--repeats", str(repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"our worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(rounds: int, repeats: int, python: str, peer: Path, log=print) -> dict:
    ref, ours, history = alternate(rounds, lambda: run_reference(python, peer), lambda: run_worker(repeats), log)
    table = []
    peak = 2 * 2048 ** 3 / ours["matmul_ms"] / 1e6
    for (h, w), batch in CASES:
        key = case_key((h, w), batch)
        row, ref_ms = ours[key], ref.get(key)
        gflop = 2 * row["gmac"]
        entry = {"case": f"{w}x{h} b{batch}", "gflop": round(gflop, 3), "reference_ms": round(ref_ms, 2) if ref_ms else None,
                 "reference_gflops": round(gflop / ref_ms * 1e3, 1) if ref_ms else None,
                 "matmul_gflops": round(peak, 1),
                 "litert_2t_ms": round(row["litert_2t_ms"], 2),
                 "litert_2t_gflops": round(gflop / row["litert_2t_ms"] * 1e3, 1),
                 "litert_1t_gflops_x2": round(2 * gflop / row["litert_1t_ms"] * 1e3, 1)}
        for k in NEEDED:
            entry[f"needed_{k:g}x_gflops"] = round(k * gflop / ref_ms * 1e3, 1) if ref_ms else None
        table.append(entry)
    return {"rounds": rounds, "repeats": repeats, "reference": ref, "ours": ours, "table": table,
            "history": history}


def print_table(result: dict) -> None:
    cols = ["case", "gflop", "reference_ms", "reference_gflops", "needed_3x_gflops", "needed_3.5x_gflops",
            "matmul_gflops", "litert_2t_ms", "litert_2t_gflops", "litert_1t_gflops_x2"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for row in result["table"]:
        print("| " + " | ".join(str(row.get(c)) for c in cols) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--python", default=os.environ.get("REFERENCE_PYTHON", "/tmp/refenv/bin/python"))
    ap.add_argument("--peer", type=Path, default=SHARED / "peer")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.repeats)))
        return 0
    if not (args.peer / "bench_reference.py").exists():
        raise SystemExit(f"the reference's benchmark is not at {args.peer} (set RETINAFACE_SHARED or --peer)")
    result = measure(args.rounds, args.repeats, args.python, args.peer,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1) if args.json else "", end="")
    if not args.json:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
