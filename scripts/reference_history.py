"""A ``history.csv`` for a run of the PyTorch reference's own ``train.py`` (``train_reference.py``),
in the layout ``retinaface-tf train`` writes, so ``retinaface-tf plot-run OURS REF`` draws both.

Losses per epoch are the means of the reference's per-iteration log lines (``Loc``, ``Cla``,
``Landm``; total = loc_weight x Loc + Cla + Landm, as its train.py sums them); WIDER val AP is
measured with our own evaluation (the reference's test settings: original size, score > 0.02,
NMS 0.4) on each checkpoint the reference saved (``*_epoch_N.pth`` after epoch N, ``*_Final.pth``
after the last epoch), read without PyTorch.

usage: python scripts/reference_history.py SAVE_DIR LOG --val-images DIR --val-ground-truth DIR
       [--output SAVE_DIR/history.csv] [--loc-weight 2.0]
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"Epoch:(\d+)/(\d+) .*?Loc: ([-\d.naif]+) Cla: ([-\d.naif]+) Landm: ([-\d.naif]+) .*?LR: ([\d.e-]+)")
COLUMNS = ["epoch", "bbox_loss", "classes_loss", "landmarks_loss", "learning_rate", "loss",
           "val_easy_ap", "val_hard_ap", "val_medium_ap"]


def parse_log(path: Path, loc_weight: float) -> tuple[dict[int, dict], int]:
    """``{epoch (0-based): {column: mean}}`` and the number of epochs the run was set to."""
    per_epoch: dict[int, list] = defaultdict(list)
    total = 0
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        m = LINE.search(line)
        if m:
            epoch, total = int(m[1]) - 1, int(m[2])
            per_epoch[epoch].append(tuple(float(m[i]) for i in (3, 4, 5, 6)))
    if not per_epoch:
        sys.exit(f"{path}: no 'Epoch:E/N || ... Loc: ... Cla: ... Landm: ... LR: ...' lines")
    rows = {}
    for epoch, values in sorted(per_epoch.items()):
        loc, cla, landm = (sum(v[i] for v in values) / len(values) for i in range(3))
        rows[epoch] = {"bbox_loss": loc, "classes_loss": cla, "landmarks_loss": landm, "learning_rate": values[-1][3],
                       "loss": loc_weight * loc + cla + landm}
    return rows, total


def checkpoints(save_dir: Path, epochs: int) -> dict[int, Path]:
    """``{epoch (0-based) after which it was saved: path}``."""
    out = {}
    for path in save_dir.glob("*.pth"):
        m = re.search(r"_epoch_(\d+)\.pth$", path.name)
        if m:
            out[int(m[1]) - 1] = path
        elif path.name.endswith("_Final.pth") and epochs:
            out[epochs - 1] = path
    return dict(sorted(out.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("save_dir", type=Path)
    ap.add_argument("log", type=Path)
    ap.add_argument("--val-images", type=Path, required=True)
    ap.add_argument("--val-ground-truth", type=Path, required=True)
    ap.add_argument("--output", type=Path)
    ap.add_argument("--loc-weight", type=float, default=2.0)
    args = ap.parse_args(argv)

    from retinaface_tf.config import Config
    from retinaface_tf.evaluation.tta import predict_images
    from retinaface_tf.evaluation.widerface import evaluate_predictions, list_images, load_ground_truth
    from retinaface_tf.fileio import write_text_atomic
    from retinaface_tf.inference import Detector

    rows, epochs = parse_log(args.log, args.loc_weight)
    gt = load_ground_truth(args.val_ground_truth)
    images = list_images(args.val_images, gt)
    for epoch, path in checkpoints(args.save_dir, epochs).items():
        detector = Detector(path, Config.load("mobilenet025"), score_threshold=0.02)
        preds, _ = predict_images(detector, images, progress=False)
        ap_ = evaluate_predictions(preds, gt).ap
        rows.setdefault(epoch, {}).update({f"val_{k}_ap": v for k, v in ap_.items()})
        print(f"{path.name}: after epoch {epoch + 1}: easy {ap_['easy']:.4f} medium {ap_['medium']:.4f} "
              f"hard {ap_['hard']:.4f}", file=sys.stderr)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", restval="nan")
    writer.writeheader()
    for epoch, row in sorted(rows.items()):
        writer.writerow({"epoch": epoch, **row})
    out = write_text_atomic(args.output or args.save_dir / "history.csv", buf.getvalue())
    print(f"wrote {out} ({len(rows)} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
