"""Box formats, named once.

The vocabulary is Keras' (``keras.utils.bounding_boxes``); tests check every conversion here
against ``keras.utils.bounding_boxes.convert_format``.

- ``XYXY``             pixel ``[x1, y1, x2, y2]``: exported / returned detections.
- ``REL_XYXY``         ``XYXY`` divided by image width/height: boxes in the training pipeline.
- ``CENTER_XYWH``      pixel ``[cx, cy, w, h]``.
- ``REL_CENTER_XYWH``  normalised ``[cx, cy, w, h]``: anchors (priors).
- ``YXYX``             ``[y1, x1, y2, x2]``: only at the ``tf.image`` NMS boundary.
- ``XYWH``             ``[x, y, w, h]`` of the *top-left corner*: WIDER FACE label files and the
                       official prediction layout. Never used for a centre format.

Landmarks are ``[..., 5, 2]`` (x, y) in the order left eye, right eye, nose, left mouth corner,
right mouth corner.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

XYXY = "xyxy"
REL_XYXY = "rel_xyxy"
CENTER_XYWH = "center_xywh"
REL_CENTER_XYWH = "rel_center_xywh"
YXYX = "yxyx"
XYWH = "xywh"


def _check(boxes, name: str):
    if boxes.shape[-1] is not None and boxes.shape[-1] != 4:
        raise ValueError(f"{name}: boxes must have shape [..., 4], got {boxes.shape}")


def center_xywh_to_xyxy(boxes):
    """``[..., 4]`` (rel_)center_xywh → (rel_)xyxy, TF or numpy (same type out)."""
    _check(boxes, "center_xywh_to_xyxy")
    cxcy, wh = boxes[..., :2], boxes[..., 2:]
    if isinstance(boxes, np.ndarray):
        return np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=-1)
    return tf.concat([cxcy - wh / 2, cxcy + wh / 2], axis=-1)


def xyxy_to_center_xywh(boxes):
    """``[..., 4]`` (rel_)xyxy → (rel_)center_xywh, TF or numpy."""
    _check(boxes, "xyxy_to_center_xywh")
    xy1, xy2 = boxes[..., :2], boxes[..., 2:]
    if isinstance(boxes, np.ndarray):
        return np.concatenate([(xy1 + xy2) / 2, xy2 - xy1], axis=-1)
    return tf.concat([(xy1 + xy2) / 2, xy2 - xy1], axis=-1)


def xyxy_to_yxyx(boxes):
    """``[..., 4]`` xyxy → yxyx (the ``tf.image`` NMS boundary)."""
    _check(boxes, "xyxy_to_yxyx")
    return tf.gather(boxes, [1, 0, 3, 2], axis=-1)


def xywh_to_xyxy(boxes):
    """Top-left ``xywh`` (WIDER files) → ``xyxy``, numpy."""
    boxes = np.asarray(boxes, dtype=np.float64)
    _check(boxes, "xywh_to_xyxy")
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes):
    """``xyxy`` → top-left ``xywh`` (official WIDER prediction layout), numpy."""
    boxes = np.asarray(boxes, dtype=np.float64)
    _check(boxes, "xyxy_to_xywh")
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def iou_matrix(boxes_a, boxes_b):
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` ``xyxy`` boxes (any consistent scale) → ``[N, M]``.

    Areas without the +1 pixel convention (the reference's matcher uses none either).
    """
    _check(boxes_a, "iou_matrix")
    _check(boxes_b, "iou_matrix")
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    inter_wh = tf.maximum(tf.minimum(a[..., 2:], b[..., 2:]) - tf.maximum(a[..., :2], b[..., :2]), 0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return tf.math.divide_no_nan(inter, union)


def iou_matrix_np(boxes_a: np.ndarray, boxes_b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """Numpy twin of :func:`iou_matrix`; ``plus_one`` uses the (x2 - x1 + 1) pixel areas of
    the reference's NMS and of the WIDER evaluation."""
    boxes_a = np.asarray(boxes_a, dtype=np.float64)
    boxes_b = np.asarray(boxes_b, dtype=np.float64)
    _check(boxes_a, "iou_matrix_np")
    _check(boxes_b, "iou_matrix_np")
    one = 1.0 if plus_one else 0.0
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one, 0.0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one, 0.0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
    area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)
