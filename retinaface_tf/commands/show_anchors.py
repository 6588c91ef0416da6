"""``retinaface-tf show-anchors``: the anchors matched to each face of a training image after the
training augmentation, drawn per pyramid level, and a table of faces left without an anchor."""

from __future__ import annotations

from pathlib import Path

from retinaface_tf.commands import parse_overrides
from retinaface_tf.config import Config
from retinaface_tf.data.widerface import read_annotations
from retinaface_tf.errors import UsageError
from retinaface_tf.fileio import read_image
from retinaface_tf.vis.anchor_view import find_entry, format_table, match_view
from retinaface_tf.vis.draw import draw_anchor_view
from retinaface_tf.vis.writer import write_png


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + ". Runs one seeded training augmentation and "
                       "the anchor matcher exactly as the training pipeline does.")
    p.add_argument("image", metavar="IMAGE", help="a training image listed in the label file")
    p.add_argument("--label-file", required=True, metavar="FILE",
                   help="retinaface_gt label.txt (or wider_face_*_bbx_gt.txt / .mat) that lists IMAGE (required)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="augmentation seed (default 0); try several")
    p.add_argument("--no-augment", action="store_true",
                   help="no crop / colour / mirror: only pad to a square and resize (the validation path)")
    p.add_argument("--config", default="mobilenet025", metavar="CONFIG",
                   help="config name or YAML whose anchors / data / loss settings are used (default mobilenet025)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set anchors.min_sizes='[[8,16],[32,64],[128,256]]' "
                        "--set loss.match_threshold=0.3 --set data.image_size=320")
    p.add_argument("--output", "-o", default=None, metavar="PNG",
                   help="picture to write (default ./IMAGE-STEM_anchors.png)")
    p.add_argument("--scale", type=float, default=1.0, metavar="F", help="enlarge the drawing (default 1)")
    return p


def run(args) -> int:
    if not 0.25 <= args.scale <= 8:
        raise UsageError(f"--scale must be in [0.25, 8], got {args.scale}")
    cfg = Config.load(args.config)
    if args.set:
        cfg = cfg.override(parse_overrides(args.set))

    read_image(args.image)  # missing / unreadable image: one-line error before anything else
    entry = find_entry(read_annotations(args.label_file, skip_empty=False), args.image)
    view = match_view(Path(args.image).read_bytes(), entry, seed=args.seed, augment=not args.no_augment,
                      data=cfg.data, anchors=cfg.anchors, loss=cfg.loss, source=args.image)
    output = Path(args.output) if args.output else Path(f"{Path(args.image).stem}_anchors.png")
    write_png(output, draw_anchor_view(view, scale=args.scale))
    how = f"augmentation seed {args.seed}" if not args.no_augment else "no augmentation"
    print(f"{entry.path}: {entry.num_faces} face(s), {how}, {cfg.data.image_size}x{cfg.data.image_size}, "
          f"{len(view.anchors_xyxy)} positive anchors")
    print(format_table(view))
    print(f"wrote {output}")
    return 0
