"""``retinaface-tf train``: model.fit under tf.distribute, resumable."""

from __future__ import annotations

import json
import os

from retinaface_tf import fileio
from retinaface_tf.commands import add_quiet_arg, parse_overrides
from retinaface_tf.config import Config
from retinaface_tf.errors import UsageError
from retinaface_tf.evaluation.validation import WiderValidation
from retinaface_tf.training import train


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=(
        "Train RetinaFace with model.fit on every GPU (MirroredStrategy; the CPU when there is none), or on "
        "several machines (MultiWorkerMirroredStrategy) when TF_CONFIG is set. Re-running the same command "
        "resumes an interrupted run from its last completed epoch."))
    data = p.add_argument_group("training data (required: --label-file and --images, or --tfrecords)")
    data.add_argument("--label-file", metavar="FILE",
                      help="retinaface_gt label.txt (or wider_face_*_bbx_gt.txt / .mat); required without --tfrecords")
    data.add_argument("--images", metavar="DIR",
                      help="folder the label file's image paths are relative to; required with --label-file")
    data.add_argument("--tfrecords", metavar="PATTERN",
                      help="TFRecord shard pattern (make-tfrecords' output) instead of --label-file / --images")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="run folder, e.g. runs/NAME (required)")
    p.add_argument("--config", default="mobilenet025", metavar="CONFIG",
                   help="config name (mobilenet025, mobilenet025_short, mobilenet025_short_plus, mobilenet050, mobilenet100, "
                        "mobilenetv2, resnet18, resnet34, resnet50: shipped with the package) "
                        "or YAML file (default mobilenet025)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set train.batch_size=16 --set data.image_size=320")
    p.add_argument("--epochs", type=int, metavar="N", help="shortcut for --set train.epochs=N")
    p.add_argument("--batch-size", type=int, metavar="N", help="global batch; shortcut for --set train.batch_size=N")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (GPU only)")
    p.add_argument("--weights", metavar="WEIGHTS",
                   help="initial full-model weights for fine-tuning: mobilenet025 (the bundled model), a model or "
                        "run folder, a .weights.h5 or a RetinaFace .pth")
    p.add_argument("--backbone-weights", metavar="WEIGHTS",
                   help="ImageNet backbone: converted backbone.weights.h5 (or its folder), or an ImageNet .pth: the "
                        "reference mobilenetV1X0.25_pretrain.tar, torchvision resnet18/34/50-*.pth, mobilenet_v2-*.pth")
    p.add_argument("--steps-per-epoch", type=int, metavar="N",
                   help="default: ceil(images / batch size); required with --tfrecords")
    p.add_argument("--val-images", metavar="DIR", help="WIDER val images folder (EVENT/NAME.jpg) for AP during training")
    p.add_argument("--val-ground-truth", metavar="DIR",
                   help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    p.add_argument("--val-every", type=int, default=0, metavar="N", help="evaluate AP every N epochs (default 0: never)")
    p.add_argument("--val-max-images", type=int, metavar="N", help="evaluate on the first N val images only")
    p.add_argument("--max-pixels", type=fileio.max_pixels_arg, default=fileio.DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse training images larger than this, from their header, before any step (default "
                        f"{fileio.DEFAULT_MAX_PIXELS // 10**6}M; K/M/G suffixes allowed)")
    add_quiet_arg(p, "one line per epoch instead of a progress bar")
    return p


def _is_chief_process() -> bool:
    """Whether this process writes the run folder: no ``TF_CONFIG`` cluster, or its chief (the
    ``chief`` task, else worker 0). Only the chief takes the run folder's lock."""
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    except ValueError:
        return True  # make_strategy reports the malformed TF_CONFIG
    if not isinstance(tf_config, dict) or not tf_config.get("cluster"):
        return True
    task = tf_config.get("task") or {}
    kind, index = task.get("type"), task.get("index", 0)
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in tf_config["cluster"]


def run(args) -> int:
    # one run per run folder at a time: a second train into it is refused at once, naming the first
    with fileio.output_locks([(args.output if _is_chief_process() else None, "--output")]):
        return _run(args)


def _run(args) -> int:
    # Every check before any work: a bad config or flag fails with one line and leaves --output
    # untouched.
    cfg = Config.load(args.config)
    overrides = parse_overrides(args.set)
    if args.epochs is not None:
        overrides["train.epochs"] = str(args.epochs)
    if args.batch_size is not None:
        overrides["train.batch_size"] = str(args.batch_size)
    if args.mixed_precision:
        overrides["train.mixed_precision"] = "true"
    if overrides:
        cfg = cfg.override(overrides)
    if args.weights and args.backbone_weights:
        raise UsageError("give --weights (fine-tuning) or --backbone-weights (ImageNet start), not both")
    if bool(args.val_images) != bool(args.val_ground_truth):
        raise UsageError("--val-images and --val-ground-truth go together")
    for flag, value, low in (("--steps-per-epoch", args.steps_per_epoch, 1), ("--val-every", args.val_every, 0),
                             ("--val-max-images", args.val_max_images, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    validation = None
    if args.val_images and args.val_every:  # the ground truth and image list are read now, before any step
        validation = WiderValidation(args.val_images, args.val_ground_truth, every=args.val_every, config=cfg,
                                     max_images=args.val_max_images)
    history = train(cfg, output_dir=args.output, label_file=args.label_file, images_dir=args.images,
                    tfrecord_pattern=args.tfrecords, weights=args.weights, backbone_weights=args.backbone_weights,
                    validation=validation, steps_per_epoch=args.steps_per_epoch, verbose=2 if args.quiet else "auto",
                    max_pixels=args.max_pixels)
    last = {k: round(float(v[-1]), 4) for k, v in history.history.items()} if history.history else {}
    print(f"done: {args.output} (last epoch: {last})")
    return 0
