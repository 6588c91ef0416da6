"""Winograd F(2x2, 3x3) in the fused TensorFlow network: which 3x3 convolutions it pays for.

    python benchmarks/winograd.py [--networks resnet50,resnet18,mobilenetv2,mobilenet025]
        [--thresholds none,64,128,256] [--sizes 640x640,480x640,1080x1920,8x640x640] [--rounds 5] [--json]

For each network (the random-weight fixtures of ``../shared/reference``; ``mobilenet025``: the
bundled weights) and each ``winograd_channels`` threshold, the fused network of
``fuse_for_inference(model, winograd_channels=T)`` is frozen (as the ``Detector``'s ``tf``
runtime runs it) and timed on float input of each size (``HxW`` batch 1, ``BxHxW`` batch B, ms
per image), the thresholds alternating within each round, best of ``--rounds`` rounds of 3 calls
each. Also the largest difference of the raw outputs to the direct network's (``none``).

``none``: no Winograd; ``T``: every 3x3 stride-1 convolution with at least T input and output
channels.

    python benchmarks/winograd.py --layers [--rounds 5]

One layer at a time instead (3x3 stride 1 + bias + ReLU at the ResNet / FPN shapes, frozen
``tf.function``): the direct convolution against ``winograd_conv3x3``, best of ``--rounds``
rounds of 5 calls, and their largest difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(HERE))

FIXTURES = {
    "resnet50": "resnet50_random.pth",
    "resnet18": "yakhyo/yakhyo_resnet18_random.pth",
    "mobilenetv2": "yakhyo/yakhyo_mobilenetv2_random.pth",
    "mobilenet025": None,
}


def parse_size(text: str) -> tuple[int, int, int]:
    parts = [int(v) for v in text.lower().split("x")]
    return (1, *parts) if len(parts) == 2 else tuple(parts)


def run(networks, thresholds, sizes, rounds: int) -> list[dict]:
    import tensorflow as tf

    from retinaface_tf.inference import _frozen
    from retinaface_tf.models.fused import fuse_for_inference
    from retinaface_tf.models.weights import load_model

    rows = []
    rng = np.random.default_rng(0)
    for name in networks:
        fixture = FIXTURES[name]
        model, _ = load_model(None if fixture is None else SHARED / "reference" / fixture)
        calls = {}
        for t in thresholds:
            net = fuse_for_inference(model, winograd_channels=t)
            spec = tf.TensorSpec([None, None, None, 3], tf.float32)
            concrete = tf.function(lambda x, net=net: net(x)).get_concrete_function(spec)
            calls[t] = _frozen(concrete)[0]
        for size in sizes:
            b, h, w = size
            x = tf.constant(rng.uniform(-120, 120, (b, h, w, 3)).astype(np.float32))
            outs = {t: {k: np.asarray(v) for k, v in call(x).items()} for t, call in calls.items()}
            best = {t: float("inf") for t in thresholds}
            for r in range(rounds):
                order = thresholds if r % 2 == 0 else thresholds[::-1]
                for t in order:
                    for _ in range(3):
                        start = time.perf_counter()
                        calls[t](x)["bbox"].numpy()
                        best[t] = min(best[t], (time.perf_counter() - start) / b)
            base = thresholds[0]
            for t in thresholds:
                diff = max(float(np.abs(outs[t][k] - outs[base][k]).max()) for k in outs[base])
                rows.append({"network": name, "size": f"{b}x{h}x{w}", "threshold": t, "ms": best[t] * 1e3,
                             "x_first": best[base] / best[t], "max_abs_diff": diff})
                print(f"{name:12s} {b}x{h}x{w:<5d} winograd_channels={str(t):5s} {best[t] * 1e3:8.2f} ms/image "
                      f"x{best[base] / best[t]:.3f}  max|diff| {diff:.2e}", flush=True)
    return rows


LAYERS = [(160, 64, 64), (80, 128, 128), (80, 256, 128), (80, 256, 256), (40, 256, 256), (20, 512, 512)]


def layers(rounds: int) -> list[dict]:
    import tensorflow as tf

    from retinaface_tf.ops.winograd import winograd_conv3x3, winograd_kernels

    rng = np.random.default_rng(0)
    rows = []
    for size, cin, cout in LAYERS:
        g = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        u = winograd_kernels(g)
        x = tf.constant(rng.standard_normal((1, size, size, cin)).astype(np.float32))
        spec = [tf.TensorSpec([None, None, None, cin], tf.float32)]
        fns = {"direct": tf.function(lambda x: tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, g, 1, "SAME"), bias)),
                                     input_signature=spec),
               "winograd": tf.function(lambda x: tf.nn.relu(winograd_conv3x3(x, u, bias)), input_signature=spec)}
        outs = {k: f(x).numpy() for k, f in fns.items()}
        best = {k: float("inf") for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                start = time.perf_counter()
                for _ in range(5):
                    f(x).numpy()
                best[k] = min(best[k], (time.perf_counter() - start) / 5)
        row = {"size": size, "cin": cin, "cout": cout, "direct_ms": best["direct"] * 1e3,
               "winograd_ms": best["winograd"] * 1e3, "x": best["direct"] / best["winograd"],
               "max_abs_diff": float(np.abs(outs["direct"] - outs["winograd"]).max()),
               "max_abs_output": float(np.abs(outs["direct"]).max())}
        rows.append(row)
        print(f"{size}x{size} {cin}->{cout}: direct {row['direct_ms']:.2f} ms, Winograd {row['winograd_ms']:.2f} ms "
              f"(x{row['x']:.2f}); max|diff| {row['max_abs_diff']:.1e} (outputs up to {row['max_abs_output']:.1f})",
              flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", default="resnet50,resnet18,mobilenetv2,mobilenet025")
    p.add_argument("--thresholds", default="none,64,128,256")
    p.add_argument("--sizes", default="640x640,480x640,1080x1920,8x640x640")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--layers", action="store_true", help="time single layers instead of networks")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from machine import describe

    if args.layers:
        rows = layers(args.rounds)
        if args.json:
            print(json.dumps({"machine": describe(), "layers": rows}, indent=1))
        return 0
    thresholds = [None if t == "none" else int(t) for t in args.thresholds.split(",")]
    rows = run(args.networks.split(","), thresholds, [parse_size(s) for s in args.sizes.split(",")], args.rounds)
    if args.json:
        print(json.dumps({"machine": describe(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
