"""Training speed: images/second of model.fit at batch 16, 640x640.

    python benchmarks/bench_train.py [--steps 10] [--batch-size 16] [--image-size 640]
        [--label-file ../shared/widerface/train/label.txt --images ../shared/widerface/train/images] [--json]

Rows: "memory" fits one fixed batch held in memory (network + MultiBoxLoss + TorchSGD update:
the training step alone); "pipeline" reads, augments and matches the real images on the fly
(the full `retinaface-tf train` path). Both under the strategy `train` uses (MirroredStrategy
over the GPUs, or the CPU). Timing skips the first steps (tracing / XLA compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from retinaface_tf.environment import use_training_settings  # noqa: E402

# what `retinaface-tf train` runs with (oneDNN, the caching allocator), unless told otherwise
if "--tensorflow-defaults" not in sys.argv:
    use_training_settings()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from machine import cpu_name  # noqa: E402
from retinaface_tf.config import Config  # noqa: E402
from retinaface_tf.data.pipeline import build_dataset, dataset_kwargs  # noqa: E402
from retinaface_tf.training import build_training_model, make_strategy  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "widerface", "train")


class StepTimer(keras.callbacks.Callback):
    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.times, self._t = warmup, [], None

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch >= self.warmup:
            self.times.append(time.perf_counter() - self._t)


def synthetic_batch(batch: int, size: int):
    """``batch`` noise images of ``size``² with one matched face each, as ``fit`` takes them
    (images, targets, masks): a step on it costs what a step on real images does."""
    from retinaface_tf.data.pipeline import encode_faces
    from retinaface_tf.ops.anchors import generate_anchors_np
    from retinaface_tf.ops.faces import Faces

    anchors = tf.constant(generate_anchors_np(size, size))
    faces = Faces(boxes=[[0.1, 0.1, 0.3, 0.35]], landmarks=[[0.2, 0.2] * 5], has_landmarks=[True],
                  ids=[0]).to_tensors()
    targets, masks = encode_faces(faces, anchors)
    return (tf.random.normal([batch, size, size, 3], 0, 50),
            {k: tf.stack([v] * batch) for k, v in targets.items()},
            {k: tf.stack([v] * batch) for k, v in masks.items()})


def measure(dataset, cfg, strategy, *, steps: int, warmup: int, batch: int) -> float:
    with strategy.scope():
        model = build_training_model(cfg, steps_per_epoch=steps + warmup, global_batch=batch)
    timer = StepTimer(warmup)
    model.fit(dataset, epochs=1, steps_per_epoch=steps + warmup, callbacks=[timer], verbose=0)
    return batch / float(np.median(timer.times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=640)
    p.add_argument("--label-file", default=os.path.join(SHARED, "label.txt"))
    p.add_argument("--images", default=os.path.join(SHARED, "images"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--tensorflow-defaults", action="store_true",
                   help="TensorFlow's own settings, not those `retinaface-tf train` sets (oneDNN, BFC allocator)")
    args = p.parse_args(argv)

    cfg = Config.preset("mobilenet025").override({"data.image_size": str(args.image_size),
                                                   "train.batch_size": str(args.batch_size)})
    strategy = make_strategy()
    have_data = os.path.exists(args.label_file)
    if not have_data:
        print(f"(pipeline row skipped: {args.label_file} not found)", file=sys.stderr)
    pipeline = None
    if have_data:
        pipeline = build_dataset(args.label_file, args.images, batch_size=args.batch_size, training=True,
                                 repeat=True, seed=0, **dataset_kwargs(cfg))
        batch = next(iter(pipeline))
    else:  # a synthetic batch with a few matched faces: the step costs the same
        batch = synthetic_batch(args.batch_size, args.image_size)
    memory = tf.data.Dataset.from_tensors(batch).repeat()
    rows = [{"name": "memory (fixed batch)", "images_per_second": round(
        measure(memory, cfg, strategy, steps=args.steps, warmup=args.warmup, batch=args.batch_size), 2)}]
    if pipeline is not None:
        rows.append({"name": "pipeline (real images)", "images_per_second": round(
            measure(pipeline, cfg, strategy, steps=args.steps, warmup=args.warmup, batch=args.batch_size), 2)})
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
               "gpu": [d.name for d in tf.config.list_physical_devices("GPU")],
               "replicas": strategy.num_replicas_in_sync,
               "settings": {k: os.environ.get(k) for k in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC")}}
    if args.json:
        print(json.dumps({"machine": machine, "batch_size": args.batch_size, "image_size": args.image_size,
                          "rows": rows}, indent=1))
        return 0
    print(f"# {machine['cpu']}, {machine['cores']} cores, TF {machine['tensorflow']}, GPU: {machine['gpu'] or 'none'}; "
          f"batch {args.batch_size}, {args.image_size}x{args.image_size}")
    print(f"{'row':<26}{'images/s':>10}")
    for r in rows:
        print(f"{r['name']:<26}{r['images_per_second']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
