"""``retinaface-tf explain``: saliency and Grad-CAM++ maps of one face's score, over the photo."""

from __future__ import annotations

import argparse
from pathlib import Path

from retinaface_tf.commands import add_model_args, add_threshold_args
from retinaface_tf.errors import UsageError
from retinaface_tf.fileio import bundled_image, read_image
from retinaface_tf.models.weights import load_model
from retinaface_tf.vis.draw import overlay
from retinaface_tf.vis.explain import explain_face
from retinaface_tf.vis.writer import write_png


def _face(value: str):
    if value == "largest":
        return value
    try:
        face = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a face number or 'largest', got {value!r}") from None
    if face < 0:
        raise argparse.ArgumentTypeError(f"face number must be >= 0, got {face}")
    return face


def _box(value: str):
    try:
        box = [float(v) for v in value.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected x1,y1,x2,y2 in pixels, got {value!r}")
    return box


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + ". Writes IMAGE-STEM_faceN_saliency.png "
                       "(SmoothGrad) and IMAGE-STEM_faceN_gradcampp.png (Grad-CAM++ at the SSH output of the face's "
                       "pyramid level), both the size of the photo.")
    p.add_argument("image", metavar="IMAGE", nargs="?", default=None,
                   help="photo to explain (default: the bundled demo photo)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--face", type=_face, default=0, metavar="N",
                       help="which detection: 0 = highest score (the order `detect` lists faces in), or 'largest' "
                            "(default 0)")
    which.add_argument("--box", type=_box, default=None, metavar="X1,Y1,X2,Y2",
                       help="explain the anchor whose predicted box best fits this pixel box instead of a detection "
                            "(e.g. a face the detector misses)")
    p.add_argument("--output", "-o", default="explain", metavar="DIR", help="output folder (default ./explain)")
    add_threshold_args(p, score_default=0.5, iou=False, dest="threshold")
    p.add_argument("--target", choices=("logodds", "probability"), default="logodds", metavar="{logodds,probability}",
                   help="explained value: the anchor's face log-odds (default; keeps gradients for confident faces) "
                        "or its softmax face probability")
    p.add_argument("--smooth-samples", type=int, default=16, metavar="N",
                   help="SmoothGrad noisy copies averaged (default 16; 0 = plain gradient)")
    p.add_argument("--smooth-noise", type=float, default=0.1, metavar="F",
                   help="SmoothGrad noise std as a fraction of the input's value range (default 0.1)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="SmoothGrad noise seed (default 0)")
    p.add_argument("--max-size", type=int, default=None, metavar="N",
                   help="downscale images whose long side exceeds N pixels before the network (maps are drawn at "
                        "the original size)")
    add_model_args(p)
    return p


def run(args) -> int:

    if not 0 <= args.threshold <= 1:
        raise UsageError(f"--score-threshold must be in [0, 1], got {args.threshold}")
    if args.smooth_samples < 0:
        raise UsageError(f"--smooth-samples must be >= 0, got {args.smooth_samples}")
    if args.smooth_noise < 0:
        raise UsageError(f"--smooth-noise must be >= 0, got {args.smooth_noise}")
    if args.max_size is not None and args.max_size < 32:
        raise UsageError(f"--max-size must be >= 32, got {args.max_size}")
    if args.box is not None and not (args.box[2] > args.box[0] and args.box[3] > args.box[1]):
        raise UsageError(f"--box must be x1,y1,x2,y2 with x2 > x1 and y2 > y1, got {','.join(f'{v:g}' for v in args.box)}")

    source = args.image or str(bundled_image())  # as `detect` does without paths
    image = read_image(source)  # a bad file fails before the model loads
    model, config = load_model(args.weights, args.config)
    e = explain_face(image, model=model, config=config, face=args.face, box=args.box,
                     score_threshold=args.threshold, target=args.target, smooth_samples=args.smooth_samples,
                     smooth_noise=args.smooth_noise, seed=args.seed, max_size=args.max_size, source=source)
    a = config.anchors
    label = f"face {e.face_index}" if e.face_index >= 0 else "box"
    anchor = (f"anchor {e.anchor.index} (level {e.anchor.level + 1}, stride {a.steps[e.anchor.level]}, "
              f"{int(round(e.anchor.anchor_xyxy[2] - e.anchor.anchor_xyxy[0]))}px)")
    short = f"{label}, score {e.score:.3f}, level {e.anchor.level + 1}"
    stem = Path(source).stem
    name = f"face{e.face_index}" if e.face_index >= 0 else "box"
    out = Path(args.output)
    written = []
    for kind, heat, caption in (
            ("saliency", e.saliency, f"SmoothGrad saliency: {short}"),
            ("gradcampp", e.gradcam_pp, f"Grad-CAM++ at ssh{e.anchor.level + 1}_relu: {short}")):
        written.append(write_png(out / f"{stem}_{name}_{kind}.png", overlay(image, heat, box=e.box, caption=caption)))
    box = ", ".join(f"{v:.0f}" for v in e.box)
    print(f"{label}: box [{box}] score {e.score:.4f}, {anchor}, {args.target} explained")
    for path in written:
        print(f"wrote {path}")
    return 0
