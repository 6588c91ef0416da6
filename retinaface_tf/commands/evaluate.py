"""``retinaface-tf evaluate``: WIDER FACE easy / medium / hard AP with the official protocol.

Either runs the detector over ``--images`` (optionally writing the predictions in the official
layout) or scores an existing ``--predictions`` folder from any detector.

Outputs, checked before any work (nothing written on error): ``--save-predictions`` must be a new
or empty folder outside ``--images`` and ``--ground-truth``; ``--plot`` may replace only a plot
(a file matplotlib wrote), never a folder or any other file. Every image header is checked
(pixel limit ``--max-pixels``) before the detector runs. Prediction files are written atomically
one by one: if writing stops (a full disk), the files written before are complete.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from retinaface_tf.commands import add_model_args, add_quiet_arg, add_runtime_arg, add_threshold_args
from retinaface_tf.errors import RetinaFaceError, UsageError
from retinaface_tf.evaluation import widerface as W
from retinaface_tf.evaluation.tta import TestTimeAugmentation, predict_images
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, is_lock_file, max_pixels_arg, output_locks, probe_image
from retinaface_tf.inference import Detector
from retinaface_tf.vis.pr_curves import save_pr_curves

DEFAULT_PLOT = "widerface_pr_curves.png"


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + ". Run the detector with --images, "
                       "or score an existing prediction folder with --predictions.")
    p.add_argument("--ground-truth", "-g", required=True, metavar="DIR",
                   help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    p.add_argument("--images", metavar="DIR", help="WIDER_val/images (EVENT/NAME.jpg); a subset of events or images "
                   "is scored against their own ground truth only")
    p.add_argument("--predictions", metavar="DIR", help="score this prediction folder (EVENT/NAME.txt) instead of "
                   "running the detector; with --images, every listed image must have a file")
    p.add_argument("--save-predictions", metavar="DIR", help="write the detector's predictions here in the official layout")
    p.add_argument("--events", metavar="E1,E2", help="only these events (comma-separated folder names)")
    p.add_argument("--complete", action="store_true",
                   help="require a prediction for every ground-truth image (official full-val scoring)")
    p.add_argument("--scale", choices=("original", "reference", "pyramid"), default="original",
                   metavar="{original,reference,pyramid}",
                   help="test scale: original size (default); the reference's short side 1600 / long side 2150; "
                        "or the RetinaFace pyramid (short sides 500..1700) with flip and box voting")
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_true", default=None,
                      help="also run each scale horizontally flipped (default: only with --scale pyramid)")
    flip.add_argument("--no-flip", dest="flip", action="store_false", help="never run flipped passes")
    p.add_argument("--merge", choices=("vote", "nms"), default="vote", metavar="{vote,nms}",
                   help="how several passes are merged: box voting (default) or NMS")
    add_threshold_args(p, score_default=0.02, old_score=None,
                       score_help="keep detections above this score (default 0.02, the reference's evaluation setting)")
    p.add_argument("--max-detections", type=int, default=5000, metavar="N",
                   help="detections kept per image (default 5000: the reference's test_widerface.py keeps "
                        "every box after NMS of the top 5000)")
    p.add_argument("--max-pixels", type=max_pixels_arg, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images larger than this from their header, before decoding (default "
                        f"{DEFAULT_MAX_PIXELS // 10**6}M pixels; K/M/G suffixes allowed)")
    p.add_argument("--plot", default=DEFAULT_PLOT, metavar="PNG",
                   help=f"save the PR curves here (default ./{DEFAULT_PLOT})")
    p.add_argument("--no-plot", action="store_true", help="do not save PR curves")
    p.add_argument("--json", action="store_true", help="print the APs (and counts) as JSON on stdout")
    add_quiet_arg(p)
    add_model_args(p)
    add_runtime_arg(p)
    return p


def _inside(path, folder) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_writable_parent(path: Path, flag: str) -> None:
    """The folder that will hold ``path`` exists (or can be made under an existing folder) and
    takes a new file."""

    base = _nearest_existing(path.parent if path.name else path)
    if not base.is_dir():
        raise UsageError(f"{flag} {path}: {base} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".evaluate-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {base}: {exc.strerror}") from None


def _is_matplotlib_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return b"matplotlib" in head.lower()


def _check_outputs(args) -> None:
    """Every output location is checked before any work; nothing is written when one is bad."""

    inputs = [("--ground-truth", args.ground_truth), ("--images", args.images), ("--predictions", args.predictions)]
    if args.save_predictions:
        out = Path(args.save_predictions)
        for flag, folder in inputs:
            if folder and (_inside(out, folder) or _inside(folder, out)):
                raise UsageError(f"--save-predictions {out}: overlaps {flag} {folder}; give a new folder elsewhere")
        if os.path.lexists(out):
            if not out.is_dir():
                raise UsageError(f"--save-predictions {out}: exists and is not a folder; give a new or empty folder")
            try:
                entries = sorted(e for e in os.listdir(out) if not is_lock_file(e))
            except OSError as exc:
                raise UsageError(f"--save-predictions {out}: cannot list the folder: {exc.strerror}") from None
            if entries:
                raise UsageError(f"--save-predictions {out}: folder is not empty (it holds {entries[0]!r}); "
                               "give a new or empty folder (nothing was changed)")
            _check_writable_parent(out / "x", "--save-predictions")
        else:
            _check_writable_parent(out, "--save-predictions")
    if not args.no_plot:
        plot = Path(args.plot)
        try:
            from matplotlib.backend_bases import FigureCanvasBase
            formats = FigureCanvasBase.get_supported_filetypes()
        except ImportError:
            formats = None  # save_pr_curves says how to install it
        if formats is not None and plot.suffix and plot.suffix[1:].lower() not in formats:
            raise UsageError(f"--plot {plot}: matplotlib cannot write {plot.suffix} files "
                           f"(use one of .{', .'.join(sorted(formats))})")
        if os.path.lexists(plot):
            if plot.is_dir():
                raise UsageError(f"--plot {plot}: is a folder; give a file name for the PR-curve image")
            if plot.is_symlink() or not plot.is_file():
                raise UsageError(f"--plot {plot}: exists and is not a regular file (nothing was changed)")
            if not _is_matplotlib_file(plot):
                raise UsageError(f"--plot {plot}: exists and is not a plot (only a file matplotlib wrote is "
                               "replaced); give another --plot (nothing was changed)")
        for flag, folder in (("--predictions", args.predictions), ("--save-predictions", args.save_predictions)):
            if folder and _inside(plot, folder):  # a stray file would break the EVENT/NAME.txt layout
                raise UsageError(f"--plot {plot}: lies inside {flag} {folder}; give a file elsewhere")
        _check_writable_parent(plot, "--plot")


def _create_folder(path: Path, flag: str) -> None:

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create the folder: {exc.strerror}") from None


def _check_args(args) -> None:
    if not args.images and not args.predictions:
        raise UsageError("give --images (run the detector) or --predictions (score a prediction folder)")
    if args.predictions and args.save_predictions:
        raise UsageError("--save-predictions needs the detector (--images without --predictions)")
    if not (math.isfinite(args.score_threshold) and 0 <= args.score_threshold <= 1):
        raise UsageError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.iou_threshold is not None and not (math.isfinite(args.iou_threshold) and 0 <= args.iou_threshold <= 1):
        raise UsageError(f"--iou-threshold must be in [0, 1], got {args.iou_threshold}")
    if args.max_detections < 1:
        raise UsageError(f"--max-detections must be >= 1, got {args.max_detections}")


def _scored_predictions(args, gt, events) -> tuple[dict, str]:
    """``--predictions``: the prediction folder's files for the selected images → ``(predictions, mode)``."""
    expected = None
    if args.images:
        expected = list(W.list_images(args.images, gt, events=events))
    elif args.complete:
        expected = [k for k in gt.images if events is None or k[0] in events]
    preds = W.read_predictions(args.predictions, gt, expected=expected)
    if expected is not None:
        preds = {k: preds[k] for k in expected}
    elif events:
        preds = {k: v for k, v in preds.items() if k[0] in events}
    if not preds:
        raise UsageError(f"{args.predictions}: no prediction files for the selected events")
    return preds, f"predictions from {args.predictions}"


def _detected_predictions(args, gt, events, log) -> tuple[dict, str, float]:
    """``--images``: the detector's predictions → ``(predictions, mode, seconds per image)``."""
    images = W.list_images(args.images, gt, events=events)
    if args.complete and len(images) != len(gt):
        missing = next(k for k in gt.images if k not in images)
        raise UsageError(f"--complete: {args.images}/{missing[0]}/{missing[1]}.jpg is missing "
                         f"({len(gt) - len(images)} of {len(gt)} images)")
    for path in images.values():  # every header before any work: a bad image fails now, not in an hour
        probe_image(path, max_pixels=args.max_pixels)
    tta = TestTimeAugmentation(scale=args.scale, flip=args.flip, merge=args.merge,
                               max_detections=args.max_detections)
    detector = Detector(args.weights, args.config, score_threshold=args.score_threshold,
                        iou_threshold=args.iou_threshold, max_detections=args.max_detections,
                        max_pixels=args.max_pixels, runtime=args.runtime)
    if args.save_predictions:
        _create_folder(Path(args.save_predictions), "--save-predictions")
    log(f"detecting faces in {len(images)} images: {tta.describe()}")
    done = []
    try:
        preds, seconds_per_image = predict_images(detector, images, tta=tta, output_dir=args.save_predictions,
                                                  progress=not args.quiet, max_pixels=args.max_pixels,
                                                  on_image=lambda key, det: done.append(key))
    except RetinaFaceError as exc:
        if not args.save_predictions:
            raise
        raise type(exc)(f"{exc} (stopped after {len(done)} of {len(images)} images; their prediction files "
                        f"in {args.save_predictions} are complete)") from None
    if args.save_predictions:
        log(f"predictions written to {args.save_predictions}")
    return preds, tta.describe(), seconds_per_image


def run(args) -> int:
    _check_args(args)
    # one run per --save-predictions folder at a time: a second one is refused at once
    with output_locks([(args.save_predictions, "--save-predictions")]):
        return _run(args)


def _run(args) -> int:
    events = [e for e in args.events.split(",") if e] if args.events else None
    _check_outputs(args)

    gt = W.load_ground_truth(args.ground_truth)
    if events:
        unknown = [e for e in events if e not in gt.events]
        if unknown:
            raise UsageError(f"--events: unknown event {unknown[0]!r} (not in {args.ground_truth})")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    seconds_per_image = None
    t0 = time.perf_counter()
    if args.predictions:
        preds, mode = _scored_predictions(args, gt, events)
    else:
        preds, mode, seconds_per_image = _detected_predictions(args, gt, events, log)

    result = W.evaluate_predictions(preds, gt)
    elapsed = time.perf_counter() - t0
    log(f"WIDER FACE val ({mode})")
    log(result.format_table())
    if seconds_per_image is not None:
        log(f"{seconds_per_image:.3f} s per image (detection)")
    if not args.no_plot:
        path = save_pr_curves(result, args.plot, title=f"WIDER FACE val, {result.num_images} images ({mode})")
        log(f"PR curves saved to {path}")
    if args.json:
        out = result.to_dict()
        out["mode"] = mode
        out["seconds"] = round(elapsed, 3)
        if seconds_per_image is not None:
            out["seconds_per_image"] = round(seconds_per_image, 4)
        print(json.dumps(out, indent=1))
    return 0
