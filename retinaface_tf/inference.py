"""Inference: image(s) → faces, through the same decode + NMS graph every export uses.

>>> from retinaface_tf import Detector
>>> det = Detector()                       # bundled official mobilenet0.25 weights
>>> faces = det.detect(cv2.imread("photo.jpg"))
>>> faces.boxes, faces.scores, faces.landmarks   # pixel xyxy [K,4], [K], pixel [K,5,2]
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable, Sequence

import cv2
import numpy as np
import tensorflow as tf

from retinaface_tf.config import Config
from retinaface_tf.errors import DetectorError, ImageError, RetinaFaceError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, check_max_pixels, read_image, to_bgr_uint8
from retinaface_tf.models.weights import load_model
from retinaface_tf.ops.image import preprocess
from retinaface_tf.ops.nms import detect_from_heads


def check_fraction(name: str, value, *, error=DetectorError) -> float:
    """``value`` as a float in ``[0, 1]``; NaN, infinities and non-numbers raise ``error`` naming
    ``name`` (used for every threshold the API and the command line take)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise error(f"{name} must be a number in [0, 1], got {value!r}")
    return number


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DetectorError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


@dataclasses.dataclass
class Detections:
    """Faces found in one image, in that image's pixels.

    ``boxes [K, 4]`` float32 pixel ``xyxy``; ``scores [K]`` float32 face probability, descending;
    ``landmarks [K, 5, 2]`` float32 pixel (x, y): left eye, right eye, nose, left and right
    mouth corner; ``anchor_indices [K]`` int32: the anchor of the network input each face was
    decoded from (``None`` for detections merged from several passes).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    anchor_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self) -> list[dict]:
        return [
            {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 5),
             "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in lm]}
            for b, s, lm in zip(self.boxes, self.scores, self.landmarks)
        ]


class Detector:
    """RetinaFace detector: decode + NMS run inside one ``tf.function`` (the same
    :func:`retinaface_tf.ops.nms.postprocess` every export uses).

    Args:
      weights: see :func:`retinaface_tf.models.weights.resolve_weights` (``None``: bundled official
        mobilenet0.25).
      config: a :class:`Config`, preset name or YAML path (default: saved with the weights).
      score_threshold: keep faces with probability above this (0.02 reproduces the reference's
        evaluation setting; 0.5 is a sensible default for applications).
      iou_threshold, pre_nms_top_k, max_detections: NMS settings (default: the config's,
        i.e. the reference's 0.4 / 5000 / 750).
      max_size: if set, images whose long side exceeds it are downscaled first (detections are
        still returned in original pixels).
      batch_size: images of equal size are run together in batches of this size (>= 1).
      max_pixels: image files declaring more pixels than this are refused from their header
        before decoding, and no image is resized past it (default
        :data:`retinaface_tf.fileio.DEFAULT_MAX_PIXELS`, 100 megapixels; ``None``: no limit).
      model: an already built Keras network (skips loading).

    Every setting is checked here: a NaN or out-of-range threshold, a zero batch size, ... raise a
    one-line :class:`DetectorError` before any model is loaded.
    """

    def __init__(self, weights=None, config=None, *, score_threshold: float = 0.5,
                 iou_threshold: float | None = None, pre_nms_top_k: int | None = None,
                 max_detections: int | None = None, max_size: int | None = None, batch_size: int = 8,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, model=None):
        score_threshold = check_fraction("score_threshold", score_threshold)
        if iou_threshold is not None:
            iou_threshold = check_fraction("iou_threshold", iou_threshold)
        if pre_nms_top_k is not None:
            pre_nms_top_k = _positive_int("pre_nms_top_k", pre_nms_top_k)
        if max_detections is not None:
            max_detections = _positive_int("max_detections", max_detections)
        if max_size is not None:
            max_size = _positive_int("max_size", max_size)
        batch_size = _positive_int("batch_size", batch_size)
        try:
            self.max_pixels = check_max_pixels(max_pixels)
        except RetinaFaceError as exc:
            raise DetectorError(str(exc)) from None
        if model is None:
            model, config = load_model(weights, config)
        elif not isinstance(config, Config):
            config = Config.load(config or "mobilenet025")
        self.model = model
        self.config = config
        post = config.postprocess
        self.score_threshold = score_threshold
        self.iou_threshold = float(post.iou_threshold if iou_threshold is None else iou_threshold)
        self.pre_nms_top_k = int(post.pre_nms_top_k if pre_nms_top_k is None else pre_nms_top_k)
        self.max_detections = int(post.max_detections if max_detections is None else max_detections)
        self.max_size = max_size
        self.batch_size = batch_size
        self._infer = tf.function(
            self._infer_fn,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([None, 2], tf.float32),
                             tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32)],
            reduce_retracing=True)

    # ------------------------------------------------------------------ graph
    def _infer_fn(self, images, output_scale, score_threshold, iou_threshold):
        a = self.config.anchors
        out = self.model(preprocess(images, channel_order="bgr"), training=False)
        return detect_from_heads(out, input_size=(tf.shape(images)[1], tf.shape(images)[2]),
                                 output_scale=output_scale, score_threshold=score_threshold,
                                 iou_threshold=iou_threshold, pre_nms_top_k=self.pre_nms_top_k,
                                 max_detections=self.max_detections, min_sizes=a.min_sizes, steps=a.steps,
                                 clip=a.clip, variances=a.variances)

    # ------------------------------------------------------------------ API
    def _prepare(self, image, resize: float | None, label: str = "image"):
        """Image (array or path) → ``(network input, (sx, sy) back to the original's pixels)``.
        Every failure is an :class:`ImageError` / :class:`DetectorError` naming ``label`` (or the
        file)."""
        if isinstance(image, (str, bytes, os.PathLike)):
            image = read_image(os.fsdecode(image), max_pixels=self.max_pixels)
        else:
            try:
                image = to_bgr_uint8(image)
            except (ValueError, TypeError) as exc:
                raise ImageError(f"{label}: {exc}") from None
        h, w = image.shape[:2]
        if resize is None and self.max_size and max(h, w) > self.max_size:
            resize = self.max_size / max(h, w)
        if resize is None or resize == 1.0:
            return image, (1.0, 1.0)
        # the reference's cv2.resize(fx=fy=resize), but no side rounds to 0 pixels (a 1 x 20000
        # strip at --max-size 1000): a clamped side maps back with its own factor
        new_w, new_h = int(round(w * resize)), int(round(h * resize))
        if self.max_pixels is not None and max(new_w, 1) * max(new_h, 1) > self.max_pixels:
            raise ImageError(f"{label}: resize={resize:g} makes {max(new_w, 1)}x{max(new_h, 1)} pixels, over the "
                             f"limit of {self.max_pixels / 1e6:g} megapixels (max_pixels)")
        if new_w >= 1 and new_h >= 1:
            image = cv2.resize(image, None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)
            return image, (1.0 / resize, 1.0 / resize)
        new_w, new_h = max(new_w, 1), max(new_h, 1)
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return image, (w / new_w, h / new_h)

    @staticmethod
    def _check_resize(resize):
        if resize is None:
            return None
        try:
            value = float(resize)
        except (TypeError, ValueError):
            raise DetectorError(f"resize must be a finite number > 0, got {resize!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise DetectorError(f"resize must be a finite number > 0, got {resize!r}")
        return value

    def _threshold(self, score_threshold):
        return self.score_threshold if score_threshold is None else check_fraction("score_threshold", score_threshold)

    def detect(self, image, *, score_threshold: float | None = None, resize: float | None = None) -> Detections:
        """Detect faces in one image: a BGR ``[H, W, 3]`` array (uint8, or grayscale / BGRA /
        16-bit, converted) or a file path. ``resize`` scales the image first (the reference's
        ``resize``, a finite factor > 0); detections are always in the original image's pixels.
        A bad image or argument raises a one-line :class:`RetinaFaceError`."""
        return self.detect_batch([image], score_threshold=score_threshold, resize=resize)[0]

    def detect_batch(self, images: Sequence, *, score_threshold: float | None = None,
                     resize: float | None = None) -> list[Detections]:
        """Detect faces in many images; images of equal (resized) size share a batch. The first
        bad image raises (use :meth:`iter_detect` to go on past bad images)."""
        resize = self._check_resize(resize)
        score_threshold = self._threshold(score_threshold)
        prepared = [(*self._prepare(im, resize, _label(im, i)), _label(im, i)) for i, im in enumerate(images)]
        first_of_shape: dict[tuple, int] = {}
        for i, (im, _, _) in enumerate(prepared):
            first_of_shape.setdefault(im.shape, i)
        # every size as one run of batches, sizes in the order they first appear
        order = sorted(range(len(prepared)), key=lambda i: first_of_shape[prepared[i][0].shape])
        results: list[Detections | None] = [None] * len(prepared)
        for i, result in self._batched(((i, prepared[i]) for i in order), score_threshold):
            if isinstance(result, RetinaFaceError):
                raise result
            results[i] = result
        return results

    def iter_detect(self, images: Iterable, *, score_threshold: float | None = None):
        """Yield ``(index, Detections | RetinaFaceError)`` for many images (paths, arrays, or
        an already raised :class:`RetinaFaceError` standing for an unreadable one), batching
        equal sizes. A bad item (unreadable file, ``None``, a wrong array, a batch TensorFlow
        cannot run) yields its error and the rest go on; only a bad ``score_threshold`` raises,
        before anything runs."""
        score_threshold = self._threshold(score_threshold)

        def prepared():
            for i, image in enumerate(images):
                if isinstance(image, RetinaFaceError):
                    yield i, image
                    continue
                label = _label(image, i)
                try:
                    yield i, (*self._prepare(image, None, label), label)
                except RetinaFaceError as exc:
                    yield i, exc
                except (ValueError, TypeError, MemoryError, cv2.error) as exc:
                    yield i, ImageError(f"{label}: {type(exc).__name__}: {_one_line(exc)}")

        yield from self._batched(prepared(), score_threshold)

    def _batched(self, items, score_threshold):
        """``(index, (image, scale, label) | RetinaFaceError)`` → ``(index, Detections |
        RetinaFaceError)``: consecutive images of equal size run together, at most
        ``batch_size`` at a time; errors pass through as they come."""
        pending: list[tuple[int, np.ndarray, tuple, str]] = []
        for i, item in items:
            if isinstance(item, RetinaFaceError):
                yield i, item
                continue
            image, scale, label = item
            if pending and (image.shape != pending[0][1].shape or len(pending) >= self.batch_size):
                yield from self._flush(pending, score_threshold)
                pending = []
            pending.append((i, image, scale, label))
        if pending:
            yield from self._flush(pending, score_threshold)

    def _flush(self, pending, score_threshold):
        try:
            dets = self._run([(im, s) for _, im, s, _ in pending], score_threshold)
        except (tf.errors.OpError, MemoryError) as exc:
            if len(pending) > 1:  # one image may be the cause (memory): run them one by one
                for item in pending:
                    yield from self._flush([item], score_threshold)
                return
            i, _, _, label = pending[0]
            yield i, DetectorError(f"{label}: detection failed: {type(exc).__name__}: {_one_line(exc)}")
            return
        for (i, _, _, _), det in zip(pending, dets):
            yield i, det

    def _run(self, batch, score_threshold) -> list[Detections]:
        images = np.stack([im for im, _ in batch])
        scales = np.array([s for _, s in batch], dtype=np.float32).reshape(-1, 2)
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        out = self._infer(images, scales, np.float32(thr), np.float32(self.iou_threshold))
        boxes, scores, lms, anchors, num = (out[key].numpy() for key in ("boxes", "scores", "landmarks",
                                                                         "anchor_indices", "num_detections"))
        return [Detections(boxes[b, :n], scores[b, :n], lms[b, :n], anchors[b, :n]) for b, n in enumerate(num)]


def _label(image, index: int) -> str:
    """How an image is named in its error: the path, or ``image <index>`` for an array."""
    if isinstance(image, (str, bytes, os.PathLike)):
        return os.fsdecode(image)
    return f"image {index}"


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__
