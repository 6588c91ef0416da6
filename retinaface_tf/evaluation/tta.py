"""Test scales and test-time augmentation for evaluation.

Three test scales:

- ``original``: one pass at the image's own size (the reference's ``test_widerface.py``
  default, ``origin_size=True``).
- ``reference``: one pass with the short side resized to 1600 unless the long side would then
  exceed 2150 (the reference's ``origin_size=False``).
- ``pyramid``: the original RetinaFace (insightface) test mode: the image is resized to each of
  the short sides ``(500, 800, 1100, 1400, 1700)`` relative to a base of 800 short / 1200 long,
  each scale also run horizontally flipped, and all detections merged by *box voting*.

Each pass goes through :class:`retinaface_tf.inference.Detector` (decode + NMS in TF), so the
merge votes over every pass's post-NMS detections. The merge is the only numpy part.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from tqdm import tqdm

from retinaface_tf.config import PostprocessConfig
from retinaface_tf.constants import MIRROR_LANDMARK_ORDER
from retinaface_tf.errors import TtaError
from retinaface_tf.evaluation.widerface import write_prediction_file
from retinaface_tf.fileio import read_image
from retinaface_tf.inference import Detections
from retinaface_tf.ops.boxes import iou_matrix_np

TEST_SCALES = ("original", "reference", "pyramid")
MERGES = ("vote", "nms")
PYRAMID_SHORT_SIDES = (500, 800, 1100, 1400, 1700)


def reference_resize(height: int, width: int, *, target_size: int = 1600, max_size: int = 2150) -> float:
    """The reference's ``origin_size=False`` factor: short side to ``target_size`` unless the long
    side would round to more than ``max_size``, then long side to ``max_size``."""
    scale = target_size / min(height, width)
    if np.round(scale * max(height, width)) > max_size:
        scale = max_size / max(height, width)
    return float(scale)


def pyramid_resizes(height: int, width: int, *, short_sides=PYRAMID_SHORT_SIDES, target_size: int = 800,
                    max_size: int = 1200) -> list[float]:
    """insightface's pyramid: a base factor (short side ``target_size``, long side at most
    ``max_size``) times ``short_side / target_size`` for each short side."""
    base = reference_resize(height, width, target_size=target_size, max_size=max_size)
    return [float(s) / target_size * base for s in short_sides]


def flip_detections(boxes: np.ndarray, landmarks: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Map detections of a horizontally flipped image back to the original.

    ``boxes [K, 4]`` pixel ``xyxy``, ``landmarks [K, 5, 2]``; continuous pixel coordinates
    (pixel ``i`` spans ``[i, i + 1)``, as the decoder's anchor centres ``(j + 0.5) * step`` are),
    so ``x -> width - x``; left and right landmarks swap.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    out = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    lms = np.asarray(landmarks, dtype=np.float32).copy()
    lms[..., 0] = width - lms[..., 0]
    return out, lms[:, list(MIRROR_LANDMARK_ORDER)]


def merge_detections(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, *,
                     iou_threshold: float = PostprocessConfig.iou_threshold,
                     vote: bool = True, max_detections: int = PostprocessConfig.max_detections):
    """Greedy merge of detections pooled from several passes.

    Boxes are taken in descending score; each takes every remaining box with IoU >=
    ``iou_threshold`` (``+1`` pixel areas, as the reference NMS). With ``vote`` (box voting), the
    kept box and landmarks are the score-weighted mean of the group and its score the group's
    maximum; without, the top box is kept as is (NMS). Unlike the widely copied insightface
    ``bbox_vote``, a box with no neighbour is kept too.

    Args: ``boxes [N, 4]`` pixel ``xyxy``, ``scores [N]``, ``landmarks [N, 5, 2]``.
    Returns ``(boxes [K, 4], scores [K], landmarks [K, 5, 2])`` float32, descending score,
    ``K <= max_detections``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    order = np.argsort(-scores, kind="stable")
    boxes, scores, landmarks = boxes[order], scores[order], landmarks[order]
    remaining = np.arange(len(scores))
    out_b, out_s, out_l = [], [], []
    while remaining.size and len(out_s) < max_detections:
        top = remaining[0]
        iou = iou_matrix_np(boxes[top:top + 1], boxes[remaining], plus_one=True)[0]
        group = iou >= iou_threshold
        group[0] = True
        members = remaining[group]
        if vote and members.size > 1:
            w = scores[members]
            out_b.append((boxes[members] * w[:, None]).sum(0) / w.sum())
            out_l.append((landmarks[members] * w[:, None, None]).sum(0) / w.sum())
        else:
            out_b.append(boxes[top])
            out_l.append(landmarks[top])
        out_s.append(scores[top])
        remaining = remaining[~group]
    k = len(out_s)
    return (np.array(out_b, dtype=np.float32).reshape(k, 4), np.array(out_s, dtype=np.float32).reshape(k),
            np.array(out_l, dtype=np.float32).reshape(k, 5, 2))


@dataclasses.dataclass(frozen=True)
class TestTimeAugmentation:
    """How to run the detector at test time.

    ``scale``: ``original`` | ``reference`` | ``pyramid`` (see the module docstring);
    ``flip``: also run each scale mirrored (default: only for ``pyramid``);
    ``merge``: ``vote`` (box voting) or ``nms`` for pooling several passes;
    ``merge_iou``: IoU for the merge (0.4 as insightface's voting and the reference NMS).
    """

    __test__ = False  # not a pytest class despite the name

    scale: str = "original"
    flip: bool | None = None
    merge: str = "vote"
    merge_iou: float = PostprocessConfig.iou_threshold
    short_sides: tuple = PYRAMID_SHORT_SIDES
    max_detections: int = PostprocessConfig.max_detections

    def __post_init__(self):
        if self.scale not in TEST_SCALES:
            raise TtaError(f"test scale must be one of {', '.join(TEST_SCALES)}, got {self.scale!r}")
        if self.merge not in MERGES:
            raise TtaError(f"merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
        if self.flip is None:
            object.__setattr__(self, "flip", self.scale == "pyramid")

    def resizes(self, height: int, width: int) -> list[float]:
        if self.scale == "original":
            return [1.0]
        if self.scale == "reference":
            return [reference_resize(height, width)]
        return pyramid_resizes(height, width, short_sides=self.short_sides)

    @property
    def passes_per_scale(self) -> int:
        return 2 if self.flip else 1

    def describe(self) -> str:
        parts = {"original": "original size", "reference": "short side 1600 / long side <= 2150",
                 "pyramid": "pyramid short sides " + "/".join(str(s) for s in self.short_sides)}[self.scale]
        if self.flip:
            parts += " + horizontal flip"
        n = (len(self.short_sides) if self.scale == "pyramid" else 1) * self.passes_per_scale
        if n > 1:
            parts += f", {self.merge} merge at IoU {self.merge_iou}"
        return parts

    def detect(self, detector, image: np.ndarray):
        """Detections of one BGR uint8 ``[H, W, 3]`` image under this augmentation, in its pixels
        (:class:`retinaface_tf.inference.Detections`)."""
        h, w = image.shape[:2]
        resizes = self.resizes(h, w)
        if len(resizes) == 1 and not self.flip:
            return detector.detect(image, resize=None if resizes[0] == 1.0 else resizes[0])
        flipped = np.ascontiguousarray(image[:, ::-1]) if self.flip else None
        boxes, scores, lms = [], [], []
        for r in resizes:
            r_arg = None if r == 1.0 else r
            d = detector.detect(image, resize=r_arg)
            boxes.append(d.boxes), scores.append(d.scores), lms.append(d.landmarks)
            if flipped is not None:
                d = detector.detect(flipped, resize=r_arg)
                fb, fl = flip_detections(d.boxes, d.landmarks, w)
                boxes.append(fb), scores.append(d.scores), lms.append(fl)
        b, s, lm = merge_detections(np.concatenate(boxes), np.concatenate(scores), np.concatenate(lms),
                                    iou_threshold=self.merge_iou, vote=self.merge == "vote",
                                    max_detections=self.max_detections)
        return Detections(b, s, lm)


def detections_to_rows(boxes_xyxy: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``[K, 5]`` float64 rows exactly as a prediction file written by
    :func:`retinaface_tf.evaluation.widerface.format_prediction_lines` reads back (integer
    top-left ``xywh`` truncated as the reference writes them, float32 scores), so scoring in
    memory equals scoring the written files."""
    b = np.trunc(np.asarray(boxes_xyxy, dtype=np.float64)).reshape(-1, 4) + 0.0  # + 0.0: no -0.0
    # The file holds float32's shortest repr, which reads back as the float64 nearest to that
    # decimal, not as the float32 value widened; go through the same text.
    s = np.array([float(str(v)) for v in np.asarray(scores, dtype=np.float32).reshape(-1)], dtype=np.float64)
    s = s.reshape(-1, 1)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2], s], axis=1)


def predict_images(detector, images: Mapping[tuple, Path], *, tta: TestTimeAugmentation | None = None,
                   output_dir: str | Path | None = None, progress: bool = True,
                   on_image: Callable | None = None, max_pixels: int | None = None) -> tuple[dict, float]:
    """Run ``detector`` over ``images`` (``{(event, name): path}``).

    Returns ``(predictions, seconds per image)`` with predictions ``{(event, name): [K, 5]}`` in
    the prediction-file representation (:func:`detections_to_rows`). With ``output_dir``, each
    image's file is also written there as ``EVENT/NAME.txt`` in the official layout (each file
    atomically). Images above ``max_pixels`` pixels (default: the detector's limit) are refused
    from their header.
    """
    tta = tta or TestTimeAugmentation()
    bar = tqdm(total=len(images), unit="img", disable=not progress, file=sys.stderr)
    preds = {}
    elapsed = 0.0
    limit = getattr(detector, "max_pixels", None) if max_pixels is None else max_pixels
    for key, path in images.items():
        image = read_image(path, max_pixels=limit)
        t0 = time.perf_counter()
        det = tta.detect(detector, image)
        elapsed += time.perf_counter() - t0
        preds[key] = detections_to_rows(det.boxes, det.scores)
        if output_dir is not None:
            write_prediction_file(output_dir, key[0], key[1], det.boxes, det.scores)
        if on_image is not None:
            on_image(key, det)
        bar.update(1)
    bar.close()
    return preds, elapsed / max(len(images), 1)
