"""``retinaface-tf detect``: faces in files or folders → annotated images + JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from retinaface_tf.commands import add_model_args


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="image files or folders (default: the bundled demo photo)")
    p.add_argument("--output", "-o", default="detections",
                   help="folder for annotated images and detections.json (default: ./detections)")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum face score (default 0.5)")
    p.add_argument("--max-size", type=int, default=None,
                   help="downscale images whose long side exceeds this many pixels (default: original size)")
    p.add_argument("--batch-size", type=int, default=8, help="images of equal size per inference batch (default 8)")
    p.add_argument("--json", action="store_true", help="print the detections as JSON on stdout")
    p.add_argument("--no-draw", action="store_true", help="do not write annotated images")
    add_model_args(p)
    return p


def _output_names(paths: list[str], roots: list[str]) -> list[str]:
    """Relative output names: folder inputs keep their sub-paths, files their base name;
    clashes get a numeric suffix."""
    names, seen = [], {}
    for path in paths:
        root = next((r for r in roots if os.path.isdir(r) and os.path.commonpath([os.path.abspath(r), os.path.abspath(path)]) == os.path.abspath(r)), None)
        rel = os.path.relpath(path, root) if root else os.path.basename(path)
        stem, ext = os.path.splitext(rel)
        n = seen.get(rel, 0)
        seen[rel] = n + 1
        names.append(rel if n == 0 else f"{stem}_{n}{ext}")
    return names


def run(args) -> int:
    from retinaface_tf.cli import CliError
    from retinaface_tf.fileio import bundled_image, list_images

    if args.threshold < 0 or args.threshold > 1:
        raise CliError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.max_size is not None and args.max_size < 32:
        raise CliError(f"--max-size must be >= 32, got {args.max_size}")
    roots = args.paths or [str(bundled_image())]
    paths = list_images(roots)
    if not paths:
        raise CliError(f"no images found in {', '.join(roots)}")

    import cv2
    from tqdm import tqdm

    from retinaface_tf.errors import RetinaFaceError
    from retinaface_tf.fileio import atomic_file, read_image, write_text_atomic
    from retinaface_tf.inference import Detector
    from retinaface_tf.visualize import draw_detections

    detector = Detector(args.weights, args.config, score_threshold=args.threshold, max_size=args.max_size,
                        batch_size=args.batch_size)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _output_names(paths, roots)
    originals: dict[int, object] = {}  # read once: detected, then drawn, then dropped

    def load():
        for i, path in enumerate(paths):
            try:
                originals[i] = read_image(path)
            except RetinaFaceError as exc:
                yield exc
                continue
            yield originals[i]

    records: list[dict | None] = [None] * len(paths)
    failed = 0
    progress = tqdm(total=len(paths), unit="img", disable=len(paths) < 2, file=sys.stderr)
    for i, result in detector.iter_detect(load()):
        progress.update(1)
        image = originals.pop(i, None)
        if isinstance(result, Exception):
            failed += 1
            progress.write(f"error: {result}", file=sys.stderr)
            records[i] = {"image": paths[i], "error": str(result)}
            continue
        record = {"image": paths[i], "width": image.shape[1], "height": image.shape[0], "faces": result.to_list()}
        if not args.no_draw:
            target = out_dir / names[i]
            target = target.with_suffix(".jpg") if target.suffix.lower() not in (".jpg", ".jpeg", ".png") else target
            try:
                with atomic_file(target, suffix=target.suffix) as tmp:  # cv2 picks the format by suffix
                    if not cv2.imwrite(str(tmp), draw_detections(image, result)):
                        raise OSError("cannot write annotated image")
            except OSError as exc:
                failed += 1
                progress.write(f"error: {target}: {exc.strerror or exc}", file=sys.stderr)
            else:
                record["annotated"] = str(target)
        records[i] = record
    progress.close()
    text = json.dumps({"threshold": args.threshold, "box_format": "xyxy (pixels, original image)",
                       "landmark_order": ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"],
                       "images": records}, indent=1)
    write_text_atomic(out_dir / "detections.json", text)
    if args.json:
        print(text)
    else:
        faces = sum(len(r.get("faces", [])) for r in records)
        print(f"{len(paths) - failed}/{len(paths)} images, {faces} faces (score > {args.threshold}); "
              f"results in {out_dir}/detections.json" + ("" if args.no_draw else f" and annotated images in {out_dir}/"))
    if failed:
        print(f"{failed} of {len(paths)} images failed", file=sys.stderr)
    return 1 if failed else 0
