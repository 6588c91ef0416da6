"""``retinaface-tf detect-dataset SOURCE --output DEST``: the faces of every image of a folder, a
list file or an object store, on Ray Data (a local Ray on 127.0.0.1, or a cluster with
``--address``), into Parquet: ``DEST/faces/`` one row per input, ``DEST/crops/`` one row per
face with ``--crops``. Rerun the same command after an interruption: only inputs without a row
are processed. Exit status 1 when any input was refused (its row says why), 2 on a usage error
(also when Ray is not installed). See docs/datasets.md.
"""

from __future__ import annotations

import sys

from retinaface_tf import fileio
from retinaface_tf.commands import add_model_args, add_runtime_arg
from retinaface_tf.commands.detect import crop_size_arg
from retinaface_tf.datasets.job import run_job


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("source", metavar="SOURCE",
                   help="a folder (walked recursively for the images detect reads), a text file listing image "
                        "paths (one per line, relative to its folder), or a URI: file:///data/photos, "
                        "s3://bucket/prefix (add ?endpoint_override=http://host:port for another S3 service)")
    p.add_argument("--output", "-o", required=True, metavar="DEST",
                   help="folder or URI for faces/ (and crops/) Parquet part files; new, empty, or an earlier "
                        "detect-dataset output made with the same settings (then only missing inputs are processed)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="minimum face score (default 0.5)")
    p.add_argument("--max-size", type=int, default=None,
                   help="downscale images whose long side exceeds this many pixels (default: original size)")
    p.add_argument("--max-pixels", type=fileio.max_pixels_arg, default=fileio.DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images larger than this (default {fileio.DEFAULT_MAX_PIXELS // 10**6}M; "
                        "K/M/G suffixes allowed)")
    p.add_argument("--crops", action="store_true", help="also write aligned face crops (PNG) into DEST/crops/")
    p.add_argument("--crop-size", type=crop_size_arg, default=(112, 112), metavar="W[xH]",
                   help="aligned crop size: 112 (ArcFace 112x112), 96x112, or a size scaled from them (default 112)")
    add_model_args(p)
    add_runtime_arg(p)
    p.add_argument("--workers", type=int, default=None,
                   help="detector actors (default: the cluster's CPUs / --threads-per-worker)")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="TensorFlow threads per actor (default: a node's CPUs, at most 4)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs each actor reserves on a GPU cluster (default 0; untested here)")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    return p


def run(args) -> int:
    summary = run_job(args.source, args.output, score_threshold=args.score_threshold, max_size=args.max_size,
                      max_pixels=args.max_pixels, crops=args.crops, crop_size=args.crop_size, weights=args.weights,
                      config=args.config, runtime=args.runtime, workers=args.workers,
                      threads_per_worker=args.threads_per_worker, gpus_per_worker=args.gpus_per_worker,
                      address=args.address, quiet=args.quiet)
    for error in summary.errors:
        print(f"error: {error}", file=sys.stderr)
    more = summary.refused - len(summary.errors)
    if more > 0:
        print(f"... and {more} more refused (their rows' error column says why)", file=sys.stderr)
    refused = summary.refused + summary.skipped_refused
    if summary.refused and not args.quiet:
        print(f"{summary.refused} of {summary.images} images refused", file=sys.stderr)
    elif summary.skipped_refused and not args.quiet:
        print(f"{summary.skipped_refused} inputs refused by an earlier run", file=sys.stderr)
    return 1 if refused else 0
