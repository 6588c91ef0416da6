"""Encode / decode boxes and landmarks against anchors with variances (the reference's
``encode``/``decode``/``encode_landm``/``decode_landm``), broadcasting over leading dims.

Anchors are ``rel_center_xywh`` ``[..., 4]``; boxes are ``rel_xyxy`` ``[..., 4]``; landmarks are
``[..., 5, 2]`` relative (x, y); box deltas ``[..., 4]`` = (dx, dy, dw, dh); landmark deltas
``[..., 10]`` = (x0, y0, ..., x4, y4).
"""

from __future__ import annotations

import tensorflow as tf

from retinaface_tf.config import AnchorConfig


def encode_boxes(boxes, anchors, variances=AnchorConfig.variances):
    """``rel_xyxy`` boxes → deltas. ``log`` of a zero width gives -inf: callers drop empty faces."""
    centers = (boxes[..., :2] + boxes[..., 2:]) / 2.0
    wh = boxes[..., 2:] - boxes[..., :2]
    d_xy = (centers - anchors[..., :2]) / (variances[0] * anchors[..., 2:])
    d_wh = tf.math.log(wh / anchors[..., 2:]) / variances[1]
    return tf.concat([d_xy, d_wh], axis=-1)


def decode_boxes(deltas, anchors, variances=AnchorConfig.variances):
    """Deltas ``[..., 4]`` → ``rel_xyxy`` boxes ``[..., 4]``."""
    centers = anchors[..., :2] + deltas[..., :2] * variances[0] * anchors[..., 2:]
    wh = anchors[..., 2:] * tf.exp(deltas[..., 2:] * variances[1])
    top_left = centers - wh / 2.0
    return tf.concat([top_left, top_left + wh], axis=-1)


def encode_landmarks(landmarks, anchors, variances=AnchorConfig.variances):
    """Relative landmarks ``[..., 5, 2]`` → deltas ``[..., 10]``."""
    a = anchors[..., None, :]
    d = (landmarks - a[..., :2]) / (variances[0] * a[..., 2:])
    return tf.reshape(d, tf.concat([tf.shape(d)[:-2], [10]], axis=0))


def decode_landmarks(deltas, anchors, variances=AnchorConfig.variances):
    """Deltas ``[..., 10]`` → relative landmarks ``[..., 5, 2]``."""
    d = tf.reshape(deltas, tf.concat([tf.shape(deltas)[:-1], [5, 2]], axis=0))
    a = anchors[..., None, :]
    return a[..., :2] + d * variances[0] * a[..., 2:]
