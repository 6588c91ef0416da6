"""``retinaface-tf detect FOLDER`` (read, detect, draw, write the annotated images and
detections.json) against the bare ``Detector`` on the same photos already decoded in memory,
side by side in one process (issue 30 §3: detect >= 85 % of the bare Detector's images/s).

    python benchmarks/detect_folder.py [--limit N] [--rounds R] [--runtime auto] [--json]

Photos: the WIDER FACE val images under ``../shared/widerface/val/images`` (or
``$RETINAFACE_SHARED``), the first ``--limit`` sorted (default: all 310). One ``Detector`` is
built first (its start-up is not timed on either side); each round times

- ``bare``: ``list(detector.iter_detect(decoded))`` on the photos decoded beforehand;
- ``detect``: ``retinaface-tf detect FOLDER --output TMP`` run in-process (``cli.main``) with that
  Detector (reading, drawing, encoding and writing included), a new output folder each round;

alternating which goes first; each side keeps its best round. Reported: images/s of each and the
ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import describe  # noqa: E402

SHARED = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--images", type=Path, default=SHARED / "widerface" / "val" / "images")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        print(f"skipped: no photos at {args.images} (set RETINAFACE_SHARED)", file=sys.stderr)
        return 0

    import cv2

    from retinaface_tf.commands import detect as detect_command
    from retinaface_tf.cli import main as cli_main
    from retinaface_tf.inference import Detector

    paths = sorted(p for p in args.images.rglob("*.jpg"))[:args.limit]
    with tempfile.TemporaryDirectory(prefix="retinaface-folder-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for p in paths:  # one flat folder of the photos (links: nothing copied)
            (folder / f"{p.parent.name}__{p.name}").symlink_to(p)
        detector = Detector(runtime=args.runtime)
        decoded = [cv2.imread(str(p)) for p in paths]
        list(detector.iter_detect(decoded[:8]))  # warm-up: graphs built, caches filled

        real_detector = detect_command.Detector
        detect_command.Detector = lambda *a, **k: detector  # the command runs the Detector built above
        best = {"bare": float("inf"), "detect": float("inf")}
        faces = {}
        try:
            for r in range(args.rounds):
                order = ("bare", "detect") if r % 2 == 0 else ("detect", "bare")
                for side in order:
                    start = time.perf_counter()
                    if side == "bare":
                        faces["bare"] = sum(len(d) for _, d in detector.iter_detect(decoded))
                    else:
                        rc = cli_main(["detect", str(folder), "--output", str(Path(tmp) / f"out{r}"), "-q"])
                        assert rc == 0, rc
                        report = json.loads((Path(tmp) / f"out{r}" / "detections.json").read_text())
                        faces["detect"] = sum(len(i.get("faces", [])) for i in report["images"])
                    best[side] = min(best[side], time.perf_counter() - start)
                    print(f"round {r + 1}: {side} {time.perf_counter() - start:.2f} s", file=sys.stderr)
        finally:
            detect_command.Detector = real_detector
    n = len(paths)
    result = {"machine": describe(), "images": n, "runtime": detector.runtime, "faces": faces,
              "seconds": {k: round(v, 3) for k, v in best.items()},
              "images_per_s": {k: round(n / v, 2) for k, v in best.items()},
              "ratio": round(best["bare"] / best["detect"], 3)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{n} photos, runtime {detector.runtime}: bare Detector {n / best['bare']:.2f} images/s, "
              f"detect {n / best['detect']:.2f} images/s ({100 * result['ratio']:.0f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
