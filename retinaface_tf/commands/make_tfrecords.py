"""``retinaface-tf make-tfrecords``: a label file + images folder → the TFRecord shards that
``train --tfrecords`` reads."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from retinaface_tf.data.tfrecord import write_tfrecords
from retinaface_tf.data.widerface import read_annotations
from retinaface_tf.errors import UsageError


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + ". Each record holds the original image "
                       "bytes (never re-encoded) and its faces; every image is checked before anything is written, "
                       "and the shards appear under their final names only once all are complete.")
    p.add_argument("label_file", metavar="LABEL_FILE", help="retinaface_gt label.txt (or wider_face_*_bbx_gt.txt / .mat)")
    p.add_argument("images", metavar="IMAGES", help="folder the label file's image paths are relative to")
    p.add_argument("--output", "-o", required=True, metavar="PREFIX",
                   help="shard prefix: writes PREFIX-00000-of-0000N.tfrecord ... (no shards of that prefix may exist; "
                        "required)")
    p.add_argument("--shards", type=int, default=8, metavar="N", help="number of shards (default 8; images dealt round-robin)")
    return p


def run(args) -> int:
    if args.shards < 1:
        raise UsageError(f"--shards must be >= 1, got {args.shards}")
    prefix = Path(args.output)
    if prefix.is_dir() or str(args.output).endswith(os.sep):
        raise UsageError(f"--output {args.output}: give a shard prefix such as {os.path.join(args.output, 'train')}, "
                         "not a folder")
    existing = sorted(glob.glob(glob.escape(str(prefix)) + "-*-of-*.tfrecord"))
    if existing:
        raise UsageError(f"--output {args.output}: shards with this prefix exist ({existing[0]}); "
                         "choose another prefix (nothing was changed)")
    annotations = read_annotations(args.label_file)
    if not annotations.images:
        raise UsageError(f"{args.label_file}: no image with a usable face")
    # write under a temporary prefix beside the final one, then rename every shard
    tmp_prefix = prefix.parent / f".{prefix.name}.tmp-{os.getpid()}"
    written: list[str] = []
    try:
        written = write_tfrecords(annotations, args.images, tmp_prefix, num_shards=args.shards)
        final = [str(prefix) + w[len(str(tmp_prefix)):] for w in written]
        for src, dst in zip(written, final):
            os.replace(src, dst)
    finally:
        for w in written:
            Path(w).unlink(missing_ok=True)
    faces = sum(im.num_faces for im in annotations.images)
    print(f"wrote {len(final)} shards {prefix}-*-of-{args.shards:05d}.tfrecord: {len(annotations.images)} images, "
          f"{faces} faces; train with --tfrecords '{prefix}-*.tfrecord' --steps-per-epoch N "
          f"(N = ceil({len(annotations.images)} / batch size))")
    return 0
