"""Anchor matching: faces of one image → per-anchor labels and encoded targets.

A vectorised port of the reference's ``utils/box_utils.py: match`` (no Python loop over faces or
anchors), numerically equal to it on ``multibox_loss.npz``:

1. ``IoU[F, N]`` between the faces (``rel_xyxy``) and the anchors (``rel_center_xywh`` →
   ``rel_xyxy``), areas without the +1 pixel convention.
2. Each face's best anchor. A face whose best IoU is below ``force_match_min_iou`` (0.2) is
   "hard": if every face is hard, the image is all background.
3. Each anchor's best face. The best anchor of every *non-hard* face gets IoU 2 (forced match);
   the best anchor of *every* face (hard ones too, as in the reference's loop
   ``best_truth_idx[best_prior_idx[j]] = j``) is assigned to that face, the highest face index
   winning when faces share a best anchor (the reference's loop order).
4. Label = the face's label (1 with landmarks, -1 without) where IoU >= ``match_threshold``
   (0.35), else 0 (background).

Targets are encoded with the variances. Unlike the reference, the targets of anchors that do not
use them (box targets of background anchors, landmark targets of anchors whose label is not 1)
are set to 0, so nothing non-finite can leak into a loss.
"""

from __future__ import annotations

import tensorflow as tf

from retinaface_tf.config import AnchorConfig, LossConfig
from retinaface_tf.ops.box_coder import encode_boxes, encode_landmarks
from retinaface_tf.ops.boxes import center_xywh_to_xyxy, iou_matrix


def match_anchors_padded(boxes, landmarks, labels, valid, anchors, *, match_threshold: float = LossConfig.match_threshold,
                         force_match_min_iou: float = LossConfig.force_match_min_iou, variances=AnchorConfig.variances):
    """:func:`match_anchors` on ``P`` padded face slots (static shapes: compiles under XLA).

    ``boxes [P, 4]``, ``landmarks [P, 5, 2]``, ``labels [P]``, ``valid [P]`` bool (False = padding,
    ignored), ``anchors [N, 4]``; returns as :func:`match_anchors`.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    landmarks = tf.reshape(tf.convert_to_tensor(landmarks, tf.float32), [-1, 5, 2])
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
    valid = tf.convert_to_tensor(valid, tf.bool)
    num_anchors = tf.shape(anchors)[0]
    num_slots = tf.shape(boxes)[0]

    overlaps = iou_matrix(boxes, center_xywh_to_xyxy(anchors))  # [P, N]
    overlaps = tf.where(valid[:, None], overlaps, -1.0)
    best_anchor = tf.argmax(overlaps, axis=1, output_type=tf.int32)  # [P]
    valid_face = (tf.reduce_max(overlaps, axis=1) >= force_match_min_iou) & valid
    best_face = tf.argmax(overlaps, axis=0, output_type=tf.int32)  # [N]
    best_face_iou = tf.reduce_max(overlaps, axis=0)

    # Padding slots go to an extra segment N that is sliced off. Empty segments of
    # unsorted_segment_max hold the dtype's minimum, hence the > 0 / >= 0 tests.
    segment = tf.where(valid, best_anchor, num_anchors)
    forced_fill = tf.math.unsorted_segment_max(tf.cast(valid_face, tf.int32), segment, num_anchors + 1)[:-1] > 0
    best_face_iou = tf.where(forced_fill, 2.0, best_face_iou)
    forced_face = tf.math.unsorted_segment_max(tf.range(num_slots), segment, num_anchors + 1)[:-1]
    best_face = tf.where(forced_face >= 0, forced_face, best_face)

    anchor_labels = tf.gather(labels, best_face)
    anchor_labels = tf.where(best_face_iou < match_threshold, 0, anchor_labels)
    anchor_labels = tf.where(tf.reduce_any(valid_face), anchor_labels, tf.zeros_like(anchor_labels))

    box_t = encode_boxes(tf.gather(boxes, best_face), anchors, variances)
    landmark_t = encode_landmarks(tf.gather(landmarks, best_face), anchors, variances)
    box_t = tf.where((anchor_labels != 0)[:, None], box_t, 0.0)
    landmark_t = tf.where((anchor_labels > 0)[:, None], landmark_t, 0.0)
    return box_t, anchor_labels, landmark_t


def match_anchors(boxes, landmarks, labels, anchors, *, match_threshold: float = LossConfig.match_threshold,
                  force_match_min_iou: float = LossConfig.force_match_min_iou, variances=AnchorConfig.variances):
    """Match the faces of one image to the anchors.

    Args:
      boxes: ``[F, 4]`` float32 ``rel_xyxy`` faces (F may be 0); widths and heights must be > 0.
      landmarks: ``[F, 5, 2]`` (or ``[F, 10]``) float32 relative (x, y) landmarks.
      labels: ``[F]`` face labels: 1 = with landmarks, -1 = without (any numeric dtype).
      anchors: ``[N, 4]`` float32 ``rel_center_xywh``.
      match_threshold: IoU from which an anchor is a positive of its best face.
      force_match_min_iou: a face's best anchor is forced positive only if its IoU reaches this.
      variances: the box coder's ``(center, size)`` variances.

    Returns:
      ``(box_targets [N, 4] float32, anchor_labels [N] int32 in {1, -1, 0},
      landmark_targets [N, 10] float32)``: box deltas (zero where the label is 0) and landmark
      deltas (zero where the label is not 1).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    num_faces = tf.shape(boxes)[0]
    # One padding slot makes F = 0 need no special case (no argmax over an empty axis).
    pad = [[0, 1], [0, 0]]
    return match_anchors_padded(
        tf.pad(boxes, pad), tf.pad(tf.reshape(tf.cast(landmarks, tf.float32), [-1, 10]), pad),
        tf.pad(tf.cast(labels, tf.int32), [[0, 1]]), tf.range(num_faces + 1) < num_faces, anchors,
        match_threshold=match_threshold, force_match_min_iou=force_match_min_iou, variances=variances)


_match_jit = tf.function(match_anchors_padded, jit_compile=True, reduce_retracing=False)
DEFAULT_BUCKETS = (16, 64, 256, 1024)


def match_anchors_bucketed(boxes, landmarks, labels, anchors, *, buckets=DEFAULT_BUCKETS, match_threshold: float = LossConfig.match_threshold,
                           force_match_min_iou: float = LossConfig.force_match_min_iou, variances=AnchorConfig.variances):
    """:func:`match_anchors` compiled with XLA: faces are padded to the smallest of ``buckets``
    that holds them (one compiled program per bucket, so shapes stay static); images with more
    faces than the last bucket take the uncompiled path. About 2.5x less CPU per image inside
    ``tf.data``. Results equal :func:`match_anchors` except where two IoUs are within float
    rounding of each other (XLA may round an IoU differently in the last bit, e.g. 0.31928253
    vs 0.3192826), where the other of the two near-equal anchors / faces can be chosen."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    landmarks = tf.reshape(tf.cast(landmarks, tf.float32), [-1, 10])
    labels = tf.cast(labels, tf.int32)
    num_faces = tf.shape(boxes)[0]
    kwargs = dict(match_threshold=match_threshold, force_match_min_iou=force_match_min_iou, variances=variances)

    def padded(size):
        def run():
            pad = [[0, size - num_faces], [0, 0]]
            return _match_jit(tf.ensure_shape(tf.pad(boxes, pad), [size, 4]),
                              tf.ensure_shape(tf.pad(landmarks, pad), [size, 10]),
                              tf.ensure_shape(tf.pad(labels, [[0, size - num_faces]]), [size]),
                              tf.range(size) < num_faces, anchors, **kwargs)
        return run

    branches = [padded(size) for size in buckets]
    branches.append(lambda: match_anchors(boxes, landmarks, labels, anchors, **kwargs))
    index = tf.reduce_sum(tf.cast(num_faces > tf.constant(buckets, tf.int32), tf.int32))
    return tf.switch_case(index, branches)
