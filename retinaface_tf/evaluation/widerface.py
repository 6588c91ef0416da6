"""WIDER FACE evaluation with the official protocol (``wider_eval.m``), vectorised in numpy.

Protocol, as the MATLAB toolbox defines it:

- Ground truth: ``wider_face_val.mat`` (``event_list``, ``file_list``, ``face_bbx_list``, boxes
  top-left ``xywh`` in pixels) and ``wider_{easy,medium,hard}_val.mat`` whose ``gt_list`` holds,
  per image, the 1-based indices of the faces that count in that setting. The other faces are
  *ignored*: a prediction matching one is neither a true nor a false positive.
- Predictions: one file per image (see :func:`read_prediction_file`), sorted by descending score
  per image (``read_pred.m`` sorts; the popular Python port does not, which only matters for
  files not already in score order).
- Scores are normalised over the whole prediction set: ``(s - min) / (max - min)``. The Python
  port starts its running ``max`` at 0 and ``min`` at 1, MATLAB at ``realmin`` / ``realmax``;
  both give the true min / max for probabilities in ``[0, 1]``. We use the true min / max.
- Each prediction, in score order, takes the face it overlaps most (IoU with ``+1`` pixel areas,
  ``x2 = x + w``). At IoU >= 0.5 with an ignored face it is dropped (neither TP nor FP); with a
  counted face it recalls that face if no earlier prediction did; a second prediction on an
  already recalled face stays a proposal (a false positive).
- 1000 thresholds ``1 - t / 1000`` (t = 1..1000); at each, proposals and recalled faces are summed
  over images; precision = recalled / proposals, recall = recalled / counted faces.
  Images without ground-truth faces or without predictions add nothing but their faces still
  count in the recall denominator.
- AP: VOC style, the area under the monotone (right-to-left maximum) precision envelope.

Everything per image is array code: the per-prediction loop of ``image_eval`` reduces to "first
prediction (in score order) to reach each counted face", i.e. ``np.unique(..., return_index)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from retinaface_tf import fileio
from retinaface_tf.data.widerface import load_mat, wider_mat_events
from retinaface_tf.errors import GroundTruthError, PredictionError
from retinaface_tf.ops.boxes import iou_matrix_np, xywh_to_xyxy

SETTINGS = ("easy", "medium", "hard")
GROUND_TRUTH_FILES = ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# one prediction file lists one image's faces (a few kB); only regular files up to this are read
MAX_PREDICTION_BYTES = 64 << 20

ImageKey = tuple  # (event, image name without extension)


# ----------------------------------------------------------------------------- ground truth
@dataclasses.dataclass(frozen=True)
class ImageTruth:
    """Ground truth of one image.

    ``boxes [G, 4]`` float64 top-left ``xywh`` pixels; ``keep`` maps each setting (``easy``,
    ``medium``, ``hard``) to a bool ``[G]`` mask of the faces that count in it (the rest are
    ignored).
    """

    event: str
    name: str
    boxes: np.ndarray
    keep: Mapping[str, np.ndarray]


class GroundTruth:
    """WIDER FACE ground truth: ``{(event, image name): ImageTruth}`` in the official order."""

    def __init__(self, images: Mapping[ImageKey, ImageTruth], source: str = "<ground truth>"):
        self.images = dict(images)
        self.source = source

    @classmethod
    def from_boxes(cls, boxes: Mapping[ImageKey, np.ndarray], keep: Mapping[ImageKey, Mapping[str, Iterable[int]]] | None = None):
        """Build ground truth by hand: ``boxes[(event, name)]`` is ``[G, 4]`` top-left ``xywh``;
        ``keep[(event, name)][setting]`` lists the 0-based indices that count (default: all
        faces count in every setting)."""
        images = {}
        for key, b in boxes.items():
            b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
            masks = {}
            for s in SETTINGS:
                m = np.ones(len(b), dtype=bool)
                if keep is not None and key in keep and s in keep[key]:
                    m = np.zeros(len(b), dtype=bool)
                    m[list(keep[key][s])] = True
                masks[s] = m
            images[tuple(key)] = ImageTruth(key[0], key[1], b, masks)
        return cls(images, source="<hand-built>")

    def __len__(self) -> int:
        return len(self.images)

    def __contains__(self, key) -> bool:
        return tuple(key) in self.images

    @property
    def events(self) -> list[str]:
        return list(dict.fromkeys(e for e, _ in self.images))

    def event_images(self, event: str) -> list[str]:
        return [n for e, n in self.images if e == event]

    def num_faces(self, setting: str) -> int:
        """Faces that count in ``setting`` (the recall denominator)."""
        return int(sum(int(im.keep[setting].sum()) for im in self.images.values()))

    def subset(self, keys: Iterable[ImageKey]) -> "GroundTruth":
        """Ground truth cut to ``keys`` (kept in the official order). Unknown keys raise."""
        wanted = {tuple(k) for k in keys}
        unknown = wanted - self.images.keys()
        if unknown:
            event, name = sorted(unknown)[0]
            raise PredictionError(f"{event}/{name}: image not in the ground truth {self.source}")
        return GroundTruth({k: v for k, v in self.images.items() if k in wanted}, self.source)


def load_ground_truth(directory: str | os.PathLike) -> GroundTruth:
    """Read the official val ground truth from ``directory`` (the toolbox's ``ground_truth``
    folder with ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GroundTruthError(f"{directory}: ground-truth folder not found")
    mats = {}
    for fname in GROUND_TRUTH_FILES:
        path = directory / fname
        if not path.exists():
            raise GroundTruthError(f"{path}: missing (the folder needs {', '.join(GROUND_TRUTH_FILES)})")
        mats[fname] = (path, load_mat(path, error=GroundTruthError))
    path, main = mats["wider_face_val.mat"]
    events = wider_mat_events(main, path, error=GroundTruthError)
    gt_lists = {}
    for s in SETTINGS:  # per event, per image: the 1-based indices of the faces that count
        spath, smat = mats[f"wider_{s}_val.mat"]
        if "gt_list" not in smat:
            raise GroundTruthError(f"{spath}: no field 'gt_list'")
        gl = smat["gt_list"].ravel()
        if len(gl) != len(events):
            raise GroundTruthError(f"{spath}: gt_list has {len(gl)} events, wider_face_val.mat has {len(events)}")
        gt_lists[s] = (spath, gl)

    images = {}
    for i, (event, event_images) in enumerate(events):
        for j, (name, boxes) in enumerate(event_images):
            keep = {}
            for s, (spath, gl) in gt_lists.items():
                cell = gl[i].ravel()
                if len(cell) != len(event_images):
                    raise GroundTruthError(f"{spath}: event {event!r} has {len(cell)} images, "
                                           f"wider_face_val.mat has {len(event_images)}")
                idx = np.asarray(cell[j]).astype(np.int64).ravel()
                if idx.size and (idx.min() < 1 or idx.max() > len(boxes)):
                    raise GroundTruthError(f"{spath}: {event}/{name}: face index out of range 1..{len(boxes)}")
                mask = np.zeros(len(boxes), dtype=bool)
                mask[idx - 1] = True
                keep[s] = mask
            images[(event, name)] = ImageTruth(event, name, boxes, keep)
    return GroundTruth(images, source=str(directory))


def list_images(directory: str | os.PathLike, ground_truth: GroundTruth, *,
                events: Iterable[str] | None = None) -> dict[ImageKey, Path]:
    """The val images under ``directory/EVENT/NAME.jpg`` as ``{(event, name): path}`` in the
    ground truth's order (a subset of events or images is fine). Event folders and images the
    ground truth does not know raise :class:`PredictionError` naming them; ``events`` keeps only
    those events."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PredictionError(f"{directory}: image folder not found")
    wanted = set(events) if events is not None else None
    known = set(ground_truth.events)
    if wanted is not None and wanted - known:
        raise PredictionError(f"{directory}: unknown event {sorted(wanted - known)[0]!r} (not in the ground truth)")
    found = {}
    for event_dir in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted is not None and event_dir.name not in wanted:
            continue
        if event_dir.name not in known:
            raise PredictionError(f"{event_dir}: unknown event {event_dir.name!r} (not in the ground truth {ground_truth.source})")
        for f in event_dir.iterdir():
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            key = (event_dir.name, f.stem)
            if key not in ground_truth:
                raise PredictionError(f"{f}: image not in event {event_dir.name!r} of the ground truth")
            found[key] = f
    if not found:
        raise PredictionError(f"{directory}: no images found (expected EVENT/IMAGE.jpg)")
    return {k: found[k] for k in ground_truth.images if k in found}


# ----------------------------------------------------------------------------- prediction files
def read_prediction_file(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """Read one prediction file in the official layout.

    Line 1: image name (any folder prefix and ``.jpg`` are dropped); line 2: number of faces;
    then one ``x y w h score`` line per face (top-left ``xywh`` pixels; extra whitespace and
    blank lines are fine). Returns ``(name, [N, 5] float64)``. Raises :class:`PredictionError`
    naming the file and line when it is malformed or the count disagrees.
    """
    path = Path(path)
    raw = fileio.read_regular_file(path, max_bytes=MAX_PREDICTION_BYTES, what="prediction file",
                                   error=PredictionError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PredictionError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    if len(lines) < 2:
        raise PredictionError(f"{path}: expected an image-name line and a count line, got {len(lines)} line(s)")
    name = lines[0].strip().replace("\\", "/").split("/")[-1]
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    if not name:
        raise PredictionError(f"{path}:1: empty image name")
    try:
        count = int(float(lines[1].strip()))
    except ValueError:
        raise PredictionError(f"{path}:2: expected the number of faces, got {lines[1].strip()[:40]!r}") from None
    rows, linenos = [], []
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise PredictionError(f"{path}:{lineno}: expected 'x y w h score' (5 numbers), got {len(parts)} field(s)")
        rows.append(parts)
        linenos.append(lineno)
    try:
        boxes = np.array(rows, dtype=np.float64).reshape(-1, 5)
    except ValueError:
        for lineno, parts in zip(linenos, rows):
            try:
                [float(p) for p in parts]
            except ValueError:
                raise PredictionError(f"{path}:{lineno}: non-numeric value in {' '.join(parts)[:60]!r}") from None
        raise
    if not np.isfinite(boxes).all():
        bad = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
        raise PredictionError(f"{path}: box {bad + 1} has a non-finite value")
    if count != len(boxes):
        raise PredictionError(f"{path}:2: count says {count} faces but the file has {len(boxes)} box lines")
    return name, boxes


def read_predictions(directory: str | os.PathLike, ground_truth: GroundTruth | None = None, *,
                     expected: Iterable[ImageKey] | None = None) -> dict[ImageKey, np.ndarray]:
    """Read a prediction folder ``directory/EVENT/IMAGE.txt`` (the official layout).

    Returns ``{(event, image name): [N, 5] float64 top-left xywh + score}``. With
    ``ground_truth``, event folders and image files it does not know raise
    :class:`PredictionError`. With ``expected`` (keys), every one of those images must have a
    file (the error names the first missing one); otherwise whatever is present is returned.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PredictionError(f"{directory}: prediction folder not found")
    known_events = set(ground_truth.events) if ground_truth is not None else None
    preds: dict[ImageKey, np.ndarray] = {}
    for event_dir in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        event = event_dir.name
        if known_events is not None and event not in known_events:
            raise PredictionError(f"{event_dir}: unknown event {event!r} (not in the ground truth {ground_truth.source})")
        for f in sorted(event_dir.glob("*.txt")):
            name, boxes = read_prediction_file(f)
            if name != f.stem:
                raise PredictionError(f"{f}:1: names image {name!r} but the file is {f.name}")
            key = (event, name)
            if ground_truth is not None and key not in ground_truth:
                raise PredictionError(f"{f}: image {name!r} is not in event {event!r} of the ground truth")
            preds[key] = boxes
    if expected is not None:
        missing = [k for k in expected if tuple(k) not in preds]
        if missing:
            e, n = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PredictionError(f"{directory / e / (n + '.txt')}: missing prediction file{more}")
    if not preds:
        raise PredictionError(f"{directory}: no prediction files (expected EVENT/IMAGE.txt)")
    return preds


def format_prediction_lines(name: str, boxes_xyxy: np.ndarray, scores: np.ndarray) -> str:
    """The official layout exactly as the reference's ``test_widerface.py`` writes it: name,
    count, then ``int(x1) int(y1) int(x2)-int(x1) int(y2)-int(y1) score`` (Python ``int``
    truncation toward zero; the score as float32's shortest repr)."""
    boxes = np.trunc(np.asarray(boxes_xyxy, dtype=np.float64)).astype(np.int64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    out = [name, str(len(boxes))]
    for (x1, y1, x2, y2), s in zip(boxes, scores):
        out.append(f"{x1} {y1} {x2 - x1} {y2 - y1} {str(s)} ")
    return "\n".join(out) + "\n"


def write_prediction_file(directory: str | os.PathLike, event: str, name: str, boxes_xyxy, scores) -> Path:
    """Write ``directory/event/name.txt`` (see :func:`format_prediction_lines`) atomically: a
    reader or a failure (a full disk) never leaves a half-written file. A failure is a one-line
    :class:`PredictionError` naming the file."""
    path = Path(directory) / event / f"{name}.txt"
    try:
        fileio.write_text_atomic(path, format_prediction_lines(name, boxes_xyxy, scores))
    except OSError as exc:
        raise PredictionError(f"{path}: cannot write the prediction file: {exc.strerror or exc}") from None
    return path


# ----------------------------------------------------------------------------- protocol
def thresholds(num: int = 1000) -> np.ndarray:
    """``[num]`` float64 score thresholds ``1 - t / num`` for t = 1..num (descending)."""
    return 1.0 - (np.arange(num, dtype=np.float64) + 1.0) / num


def normalise_scores(predictions: Mapping[ImageKey, np.ndarray]) -> dict[ImageKey, np.ndarray]:
    """Copy of ``predictions`` with column 4 mapped to ``(s - min) / (max - min)`` over all
    images. When every score is equal (no spread), all become 1.0: every box then counts at
    every threshold (the port divides by zero there)."""
    nonempty = [p[:, 4] for p in predictions.values() if len(p)]
    out = {k: np.array(v, dtype=np.float64).reshape(-1, 5) for k, v in predictions.items()}
    if not nonempty:
        return out
    lo = min(float(s.min()) for s in nonempty)
    hi = max(float(s.max()) for s in nonempty)
    diff = hi - lo
    for v in out.values():
        v[:, 4] = (v[:, 4] - lo) / diff if diff > 0 else 1.0
    return out


def match_predictions(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction's best face: ``(index [N] int64, IoU [N] float64)`` (first index on
    ties), IoU with ``+1`` pixel areas on ``xyxy = (x, y, x + w, y + h)``."""
    overlaps = iou_matrix_np(xywh_to_xyxy(pred_xywh[:, :4]), xywh_to_xyxy(gt_xywh), plus_one=True)
    best = overlaps.argmax(axis=1)
    return best, overlaps[np.arange(len(best)), best]


def image_pr_counts(scores_desc: np.ndarray, best_gt: np.ndarray, best_iou: np.ndarray, keep: np.ndarray,
                    thresh: np.ndarray, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-threshold ``(proposals [T], recalled faces [T])`` of one image (``img_pr_info``).

    Args:
      scores_desc: ``[N]`` normalised scores, descending (the predictions' order).
      best_gt, best_iou: ``[N]`` each prediction's best face and its IoU (:func:`match_predictions`).
      keep: ``[G]`` bool, faces that count in this setting.
      thresh: ``[T]`` thresholds.
    """
    matched = best_iou >= iou_threshold
    kept = keep[best_gt]
    proposal = ~(matched & ~kept)
    hits = np.flatnonzero(matched & kept)
    first = np.zeros(len(scores_desc), dtype=np.int64)
    if hits.size:
        _, first_pos = np.unique(best_gt[hits], return_index=True)
        first[hits[first_pos]] = 1
    # Number of predictions with score >= t (scores are sorted, so the reference's "last index
    # with score >= t" is this count minus one).
    n = np.searchsorted(-scores_desc, -thresh, side="right")
    cum_p = np.concatenate([[0], np.cumsum(proposal, dtype=np.int64)])
    cum_r = np.concatenate([[0], np.cumsum(first)])
    return cum_p[n], cum_r[n]


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC AP: area under the right-to-left maximum envelope of precision, summed where recall
    changes, with sentinels (0, 0) in front and (1, 0) at the end."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclasses.dataclass
class EvaluationResult:
    """APs and PR curves of one evaluation.

    ``ap[setting]`` float (NaN when the scored images have no face in that setting);
    ``precision[setting]`` / ``recall[setting]`` ``[T]`` float64 at ``thresholds`` (descending;
    precision is NaN where no prediction reaches the threshold); ``num_faces[setting]`` faces
    counted; ``num_images`` images scored; ``num_predictions`` boxes read.
    """

    ap: dict
    precision: dict
    recall: dict
    thresholds: np.ndarray
    num_faces: dict
    num_images: int
    num_predictions: int
    num_ground_truth_images: int

    def to_dict(self) -> dict:
        return {
            "easy": self.ap["easy"], "medium": self.ap["medium"], "hard": self.ap["hard"],
            "images": self.num_images, "faces": dict(self.num_faces), "predictions": self.num_predictions,
            "ground_truth_images": self.num_ground_truth_images,
        }

    def format_table(self) -> str:
        lines = [f"{'setting':<8} {'AP':>7} {'faces':>7}"]
        for s in SETTINGS:
            ap = self.ap[s]
            lines.append(f"{s:<8} {('  n/a' if math.isnan(ap) else f'{100 * ap:6.2f}%'):>7} {self.num_faces[s]:>7}")
        subset = "" if self.num_images == self.num_ground_truth_images else f" (subset of {self.num_ground_truth_images})"
        lines.append(f"scored {self.num_images} images{subset}, {self.num_predictions} predictions")
        return "\n".join(lines)


def evaluate_predictions(predictions: Mapping[ImageKey, np.ndarray], ground_truth: GroundTruth, *,
                         iou_threshold: float = 0.5, num_thresholds: int = 1000) -> EvaluationResult:
    """Score ``predictions`` (``{(event, name): [N, 5] top-left xywh + score}``) against
    ``ground_truth`` restricted to exactly those images (a subset run counts only their faces).

    Raises :class:`PredictionError` for an image the ground truth does not have.
    """
    gt = ground_truth.subset(predictions.keys())
    preds = normalise_scores(predictions)
    thresh = thresholds(num_thresholds)
    proposals = {s: np.zeros(num_thresholds, dtype=np.int64) for s in SETTINGS}
    recalled = {s: np.zeros(num_thresholds, dtype=np.int64) for s in SETTINGS}
    for key, truth in gt.images.items():
        pred = preds[key]
        if len(truth.boxes) == 0 or len(pred) == 0:
            continue
        order = np.argsort(-pred[:, 4], kind="stable")
        pred = pred[order]
        best_gt, best_iou = match_predictions(pred, truth.boxes)
        for s in SETTINGS:
            p, r = image_pr_counts(pred[:, 4], best_gt, best_iou, truth.keep[s], thresh, iou_threshold)
            proposals[s] += p
            recalled[s] += r
    ap, precision, recall, num_faces = {}, {}, {}, {}
    for s in SETTINGS:
        num_faces[s] = gt.num_faces(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision[s] = np.where(proposals[s] > 0, recalled[s] / np.maximum(proposals[s], 1), np.nan)
        recall[s] = recalled[s] / num_faces[s] if num_faces[s] else np.full(num_thresholds, np.nan)
        # No proposal at a threshold means no recall there either, so NaN precision (a 0/0 in the
        # port) never weighs in the AP; 0 is equivalent and keeps the envelope finite.
        ap[s] = voc_ap(recall[s], np.nan_to_num(precision[s], nan=0.0)) if num_faces[s] else float("nan")
    return EvaluationResult(ap=ap, precision=precision, recall=recall, thresholds=thresh, num_faces=num_faces,
                            num_images=len(gt), num_predictions=int(sum(len(p) for p in predictions.values())),
                            num_ground_truth_images=len(ground_truth))


def evaluate_folder(prediction_dir: str | os.PathLike, ground_truth: GroundTruth | str | os.PathLike, *,
                    expected: Iterable[ImageKey] | None = None, iou_threshold: float = 0.5) -> EvaluationResult:
    """Read ``prediction_dir`` and score it (see :func:`read_predictions`,
    :func:`evaluate_predictions`)."""
    if not isinstance(ground_truth, GroundTruth):
        ground_truth = load_ground_truth(ground_truth)
    preds = read_predictions(prediction_dir, ground_truth, expected=expected)
    return evaluate_predictions(preds, ground_truth, iou_threshold=iou_threshold)
