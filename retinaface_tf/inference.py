"""Inference: image(s) → faces, through the same decode + NMS graph every export uses.

>>> from retinaface_tf import Detector
>>> det = Detector()                       # bundled official mobilenet0.25 weights
>>> faces = det.detect(cv2.imread("photo.jpg"))
>>> faces.boxes, faces.scores, faces.landmarks   # pixel xyxy [K,4], [K], pixel [K,5,2]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from retinaface_tf.config import Config
from retinaface_tf.errors import RetinaFaceError
from retinaface_tf.fileio import bundled_model_dir, read_image, to_bgr_uint8

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.yaml"


class WeightsError(RetinaFaceError):
    pass


def resolve_weights(weights: str | os.PathLike | None, config: Config | str | os.PathLike | None = None):
    """Find the weights file and its config.

    ``weights`` may be ``None`` (bundled model), a folder holding ``model.weights.h5`` and
    ``config.yaml`` (what ``convert`` and ``train`` write), a ``.weights.h5`` file (config from
    ``config`` or a ``config.yaml`` beside it), or a reference ``.pth`` (converted in memory).
    Returns ``(path, Config)``.
    """
    path = Path(weights) if weights is not None else bundled_model_dir()
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file or folder")
    if path.is_dir():
        folder, path = path, path / WEIGHTS_FILE
        if not path.exists():
            raise WeightsError(f"{folder}: folder has no {WEIGHTS_FILE}")
    if config is not None:
        cfg = Config.load(config)
    elif (path.parent / CONFIG_FILE).exists():
        cfg = Config.from_yaml(path.parent / CONFIG_FILE)
    else:
        cfg = Config.preset("mobilenet025")
    return path, cfg


def load_model(weights: str | os.PathLike | None = None, config: Config | str | None = None):
    """Build the Keras network and load weights (see :func:`resolve_weights`). Returns
    ``(model, config)``."""
    from retinaface_tf.models import build_from_config

    path, cfg = resolve_weights(weights, config)
    model = build_from_config(cfg)
    if path.suffix in (".pth", ".pt", ".tar"):
        from retinaface_tf.convert.convert import load_reference_weights
        load_reference_weights(model, path)
    else:
        try:
            model.load_weights(str(path))
        except (ValueError, OSError, KeyError) as exc:
            raise WeightsError(f"{path}: cannot load weights into the {cfg.model.backbone} model: "
                               f"{str(exc).splitlines()[0]}") from None
    return model, cfg


@dataclasses.dataclass
class Detections:
    """Faces found in one image, in that image's pixels.

    ``boxes [K, 4]`` float32 pixel ``xyxy``; ``scores [K]`` float32 face probability, descending;
    ``landmarks [K, 5, 2]`` float32 pixel (x, y): left eye, right eye, nose, left and right
    mouth corner.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

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
      weights: see :func:`resolve_weights` (``None``: bundled official mobilenet0.25).
      config: a :class:`Config`, preset name or YAML path (default: saved with the weights).
      score_threshold: keep faces with probability above this (0.02 reproduces the reference's
        evaluation setting; 0.5 is a sensible default for applications).
      iou_threshold, pre_nms_top_k, max_detections: NMS settings (default: the config's,
        i.e. the reference's 0.4 / 5000 / 750).
      max_size: if set, images whose long side exceeds it are downscaled first (detections are
        still returned in original pixels).
      batch_size: images of equal size are run together in batches of this size.
      model: an already built Keras network (skips loading).
    """

    def __init__(self, weights=None, config=None, *, score_threshold: float = 0.5,
                 iou_threshold: float | None = None, pre_nms_top_k: int | None = None,
                 max_detections: int | None = None, max_size: int | None = None, batch_size: int = 8,
                 model=None):
        import tensorflow as tf

        if model is None:
            model, config = load_model(weights, config)
        elif not isinstance(config, Config):
            config = Config.load(config or "mobilenet025")
        self.model = model
        self.config = config
        post = config.postprocess
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(post.iou_threshold if iou_threshold is None else iou_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k or post.pre_nms_top_k)
        self.max_detections = int(max_detections or post.max_detections)
        self.max_size = max_size
        self.batch_size = max(1, int(batch_size))
        self._infer = tf.function(
            self._infer_fn,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([None, 2], tf.float32),
                             tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32)],
            reduce_retracing=True)

    # ------------------------------------------------------------------ graph
    def _infer_fn(self, images, output_scale, score_threshold, iou_threshold):
        import tensorflow as tf

        from retinaface_tf.models import preprocess
        from retinaface_tf.ops.nms import detect_from_heads

        a = self.config.anchors
        out = self.model(preprocess(images, channel_order="bgr"), training=False)
        return detect_from_heads(out, input_size=(tf.shape(images)[1], tf.shape(images)[2]),
                                 output_scale=output_scale, score_threshold=score_threshold,
                                 iou_threshold=iou_threshold, pre_nms_top_k=self.pre_nms_top_k,
                                 max_detections=self.max_detections, min_sizes=a.min_sizes, steps=a.steps,
                                 clip=a.clip, variances=a.variances)

    # ------------------------------------------------------------------ API
    def _prepare(self, image, resize: float | None):
        import cv2

        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        else:
            image = to_bgr_uint8(image)
        if resize is None and self.max_size and max(image.shape[:2]) > self.max_size:
            resize = self.max_size / max(image.shape[:2])
        if resize is not None and resize != 1.0:
            image = cv2.resize(image, None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)
            return image, 1.0 / resize
        return image, 1.0

    def detect(self, image, *, score_threshold: float | None = None, resize: float | None = None) -> Detections:
        """Detect faces in one image: a BGR ``[H, W, 3]`` array (uint8, or grayscale / BGRA /
        16-bit, converted) or a file path. ``resize`` scales the image first (the reference's
        ``resize``); detections are always in the original image's pixels."""
        return self.detect_batch([image], score_threshold=score_threshold, resize=resize)[0]

    def detect_batch(self, images: Sequence, *, score_threshold: float | None = None,
                     resize: float | None = None) -> list[Detections]:
        """Detect faces in many images; images of equal (resized) size share a batch."""
        prepared = [self._prepare(im, resize) for im in images]
        results: list[Detections | None] = [None] * len(prepared)
        groups: dict[tuple, list[int]] = {}
        for i, (im, _) in enumerate(prepared):
            groups.setdefault(im.shape, []).append(i)
        for idxs in groups.values():
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                for i, det in zip(chunk, self._run([prepared[i] for i in chunk], score_threshold)):
                    results[i] = det
        return results

    def iter_detect(self, images: Iterable, *, score_threshold: float | None = None):
        """Yield ``(index, Detections | RetinaFaceError)`` for many images (paths, arrays, or
        an already raised :class:`RetinaFaceError` standing for an unreadable one), batching
        equal sizes; a bad image yields its error and the rest go on."""
        pending: list[tuple[int, np.ndarray, float]] = []
        for i, image in enumerate(images):
            if isinstance(image, RetinaFaceError):
                yield i, image
                continue
            try:
                im, scale = self._prepare(image, None)
            except RetinaFaceError as exc:
                yield i, exc
                continue
            if pending and (im.shape != pending[0][1].shape or len(pending) >= self.batch_size):
                yield from self._flush(pending, score_threshold)
                pending = []
            pending.append((i, im, scale))
        if pending:
            yield from self._flush(pending, score_threshold)

    def _flush(self, pending, score_threshold):
        dets = self._run([(im, s) for _, im, s in pending], score_threshold)
        for (i, _, _), det in zip(pending, dets):
            yield i, det

    def _run(self, batch, score_threshold) -> list[Detections]:
        images = np.stack([im for im, _ in batch])
        scales = np.array([[s, s] for _, s in batch], dtype=np.float32)
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        out = self._infer(images, scales, np.float32(thr), np.float32(self.iou_threshold))
        boxes, scores, lms, num = (out["boxes"].numpy(), out["scores"].numpy(), out["landmarks"].numpy(),
                                   out["num_detections"].numpy())
        return [Detections(boxes[b, :n], scores[b, :n], lms[b, :n]) for b, n in enumerate(num)]
