"""Same-process A/B of a change to the Detector's graph, the Detector as it was before the
change against as it is now.

    python benchmarks/ab_detector.py [--change merged-heads|frozen-call] [--rounds 20]

``--change frozen-call`` (commit 538ee26): the frozen graph (a ``wrap_function``) called
directly, against through a concrete ``tf.function`` wrapper. ``--change merged-heads`` (the
default): the merged heads split into bbox / classes / landmarks for every anchor (``SplitV``)
before post-processing, against post-processing that gathers its rows from the merged tensor
first (:class:`retinaface_tf.models.fused.MergedHeads`).

Two Detectors on the bundled model; the first is switched back to the old way. Both are called
in turn on random uint8 images (32x32, 640x480, 640x640, 1920x1080 at batch 1, 640x640 at batch
8), outputs fetched as numpy; each keeps its best time (ms per image). Also checks that both give
identical outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = ((32, 32, 1), (480, 640, 1), (640, 640, 1), (1080, 1920, 1), (640, 640, 8))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--change", choices=("merged-heads", "frozen-call"), default="merged-heads")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)
    import numpy as np
    import tensorflow as tf

    from retinaface_tf.inference import Detector
    from retinaface_tf.models.weights import load_model

    model, config = load_model()
    old, new = Detector(model=model, config=config), Detector(model=model, config=config)
    if args.change == "frozen-call":
        for single in (True, False):
            images = np.zeros((1 if single else 2, 64, 64, 3), np.uint8)
            structure = old._infer(images, np.ones((len(images), 2), np.float32), np.float32(0.5), np.float32(0.4))
            _, frozen = old._graph(single)
            old._graphs[single] = ((lambda f, s: lambda *a: tf.nest.pack_sequence_as(s, f(*a)))(frozen, structure),
                                   frozen)
        variants = {"direct (before)": old, "wrapper (now)": new}
    else:
        old._forward = old.network  # the network's output dict: SplitV of the merged heads in the graph
        variants = {"split (before)": old, "gather first (now)": new}
    print(f"{'case':<16}" + "".join(f"{k:>22}" for k in variants) + "   outputs")
    for h, w, b in CASES:
        images = (np.random.RandomState(0).rand(b, h, w, 3) * 255).astype(np.uint8)
        scale = np.ones((b, 2), np.float32)

        def run(det):
            return [v.numpy() for v in det._infer(images, scale, np.float32(0.5), np.float32(0.4)).values()]

        outs = {k: (run(d), run(d))[1] for k, d in variants.items()}
        same = all(np.array_equal(x, y) for x, y in zip(*outs.values()))
        best = {k: float("inf") for k in variants}
        for _ in range(max(3, args.rounds // 3) if h * w > 1_000_000 else args.rounds):
            for k, d in variants.items():
                t = time.perf_counter()
                run(d)
                best[k] = min(best[k], (time.perf_counter() - t) * 1000 / b)
        print(f"{f'{w}x{h} b{b}':<16}" + "".join(f"{best[k]:>22.2f}" for k in variants)
              + ("   identical" if same else "   DIFFERENT"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
