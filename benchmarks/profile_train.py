"""Where the time of a training step goes: a ``tf.profiler`` trace of ``model.fit`` on one fixed
batch (mobilenet0.25 by default, batch 16, 640x640), op time summed by op type and by layer.

    python benchmarks/profile_train.py [--config mobilenet025] [--batch-size 16] [--image-size 640]
        [--steps 3] [--top 30] [--json]

The step is the one ``bench_train.py``'s "memory" row times (network + MultiBoxLoss + TorchSGD
under the strategy ``train`` uses). Op times are summed over the traced steps and divided by
their count; ops that run in parallel on the inter-op threads each count their own time, so the
sum can exceed the wall time (both are printed).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from retinaface_tf.environment import use_training_settings  # noqa: E402

if "--tensorflow-defaults" not in sys.argv:  # what `retinaface-tf train` runs with
    use_training_settings()

import tensorflow as tf  # noqa: E402

from bench_train import synthetic_batch  # noqa: E402
from machine import cpu_name  # noqa: E402
from profile_inference import _load_xspace  # noqa: E402
from retinaface_tf.config import Config  # noqa: E402
from retinaface_tf.training import build_training_model, make_strategy  # noqa: E402


def _events(logdir: str):
    """``(op name, op type, µs)`` of every op the trace in ``logdir`` ran on the host."""
    space = _load_xspace(logdir)
    plane = next(p for p in space.planes if p.name == "/host:CPU")
    for line in plane.lines:
        for e in line.events:
            name = plane.event_metadata[e.metadata_id].name
            if ":" in name and not name.startswith(("Eager", "ExecutorState", "ThreadpoolListener")):
                op, typ = name.rsplit(":", 1)
                if typ not in ("_Arg", "_Retval", "NoOp", "Identity", "Const"):
                    yield op, typ, e.duration_ps / 1e6


def layer_of(op: str) -> str:
    """The Keras layer an op belongs to (its first name-scope part that is not a wrapper)."""
    parts = [p for p in op.split("/") if p and not p.startswith(("StatefulPartitionedCall", "PartitionedCall",
                                                                  "while", "cond", "functional", "retinaface"))]
    if not parts:
        return op
    if parts[0] in ("gradient_tape", "gradients"):
        return "grad:" + (parts[1] if len(parts) > 1 else "?")
    return parts[0]


def profile(config: str, batch: int, size: int, steps: int) -> dict:
    cfg = Config.preset(config).override({"data.image_size": str(size), "train.batch_size": str(batch)})
    strategy = make_strategy()
    data = tf.data.Dataset.from_tensors(synthetic_batch(batch, size)).repeat()
    with strategy.scope():
        model = build_training_model(cfg, steps_per_epoch=1000, global_batch=batch)
    model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm
    t = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    plain = (time.perf_counter() - t) / steps
    with tempfile.TemporaryDirectory(prefix="retinaface-train-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        t = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
        traced = (time.perf_counter() - t) / steps
        tf.profiler.experimental.stop()
        by_type, by_layer, count = collections.Counter(), collections.Counter(), collections.Counter()
        by_op = collections.Counter()
        for op, typ, us in _events(logdir):
            by_type[typ] += us / steps
            by_layer[layer_of(op)] += us / steps
            by_op[(layer_of(op), typ)] += us / steps
            count[typ] += 1
    total = sum(by_type.values())
    return {"config": config, "batch": batch, "image_size": size, "steps": steps, "cpu": cpu_name(),
            "cores": os.cpu_count(), "step_s": round(plain, 3), "step_s_traced": round(traced, 3),
            "images_per_second": round(batch / plain, 2), "op_time_s": round(total / 1e6, 3),
            "types": [{"type": k, "ms": round(v / 1e3, 1), "pct": round(100 * v / total, 1),
                       "count": count[k] // steps} for k, v in by_type.most_common()],
            "layers": [{"layer": k, "ms": round(v / 1e3, 1), "pct": round(100 * v / total, 1)}
                       for k, v in by_layer.most_common()],
            "ops": [{"layer": k[0], "type": k[1], "ms": round(v / 1e3, 1), "pct": round(100 * v / total, 1)}
                    for k, v in by_op.most_common() if k[1] != "Run"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="mobilenet025")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=640)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--json", action="store_true")
    p.add_argument("--tensorflow-defaults", action="store_true",
                   help="TensorFlow's own settings, not those `retinaface-tf train` sets (oneDNN, BFC allocator)")
    args = p.parse_args(argv)
    r = profile(args.config, args.batch_size, args.image_size, args.steps)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"# {r['cpu']}, {r['cores']} cores; {r['config']} batch {r['batch']} {r['image_size']}²: "
          f"{r['step_s']} s/step ({r['images_per_second']} img/s), traced {r['step_s_traced']} s, "
          f"op time {r['op_time_s']} s/step")
    print(f"\n{'op type':<40}{'ms/step':>10}{'%':>7}{'n':>6}")
    for row in r["types"][:args.top]:
        print(f"{row['type']:<40}{row['ms']:>10}{row['pct']:>7}{row['count']:>6}")
    print(f"\n{'layer':<50}{'ms/step':>10}{'%':>7}")
    for row in r["layers"][:args.top]:
        print(f"{row['layer'][:49]:<50}{row['ms']:>10}{row['pct']:>7}")
    print(f"\n{'layer':<40}{'op type':<40}{'ms/step':>10}{'%':>7}")
    for row in r["ops"][:args.top]:
        print(f"{row['layer'][:39]:<40}{row['type'][:39]:<40}{row['ms']:>10}{row['pct']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
