"""Anchor matching: the faces of one image → per-anchor labels, encoded targets and matched faces.

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
4. Label = 1 (the face has landmarks) or -1 (it has none) where IoU >= ``match_threshold``
   (0.35), else 0 (background).

Targets are encoded with the variances. Unlike the reference, the targets of anchors that do not
use them (box targets of background anchors, landmark targets of anchors whose label is not 1)
are set to 0, so nothing non-finite can leak into a loss. Faces come as
:class:`~retinaface_tf.ops.faces.Faces` (``rel_xyxy`` boxes); the result is a :class:`Match`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from retinaface_tf.config import AnchorConfig, LossConfig
from retinaface_tf.ops.box_coder import encode_boxes, encode_landmarks
from retinaface_tf.ops.boxes import center_xywh_to_xyxy, iou_matrix
from retinaface_tf.ops.faces import Faces

DEFAULT_BUCKETS = (16, 64, 256, 1024)


class Match(NamedTuple):
    """Per-anchor result of matching one image's faces (``N`` anchors).

    ``box_deltas [N, 4]`` float32 (zero where the label is 0); ``landmark_deltas [N, 10]``
    float32 (zero where the label is not 1); ``labels [N]`` int32 in {1, -1, 0} (the
    reference's ``conf_t``); ``face_index [N]`` int32, the row of the matched face in the faces
    given (-1 for background).
    """

    box_deltas: Any
    landmark_deltas: Any
    labels: Any
    face_index: Any

    @property
    def positive(self):
        """``[N]`` bool: anchors matched to a face."""
        return self.labels != 0

    @property
    def with_landmarks(self):
        """``[N]`` bool: anchors matched to a face with landmarks."""
        return self.labels > 0


def match_anchors_padded(faces: Faces, valid, anchors, *, match_threshold: float = LossConfig.match_threshold,
                         force_match_min_iou: float = LossConfig.force_match_min_iou,
                         variances=AnchorConfig.variances) -> Match:
    """:func:`match_anchors` on ``P`` padded face slots (static shapes: compiles under XLA).

    ``faces``: ``P`` slots (:meth:`~retinaface_tf.ops.faces.Faces.padded`); ``valid [P]`` bool (False =
    padding, ignored); ``anchors [N, 4]``. Returns as :func:`match_anchors`.
    """
    faces = faces.to_tensors()
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    valid = tf.convert_to_tensor(valid, tf.bool)
    num_anchors = tf.shape(anchors)[0]
    num_slots = tf.shape(faces.boxes)[0]

    overlaps = iou_matrix(faces.boxes, center_xywh_to_xyxy(anchors))  # [P, N]
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

    labels = tf.where(faces.has_landmarks, 1, -1)
    anchor_labels = tf.gather(labels, best_face)
    anchor_labels = tf.where(best_face_iou < match_threshold, 0, anchor_labels)
    anchor_labels = tf.where(tf.reduce_any(valid_face), anchor_labels, tf.zeros_like(anchor_labels))

    box_t = encode_boxes(tf.gather(faces.boxes, best_face), anchors, variances)
    landmark_t = encode_landmarks(tf.gather(faces.landmarks, best_face), anchors, variances)
    box_t = tf.where((anchor_labels != 0)[:, None], box_t, 0.0)
    landmark_t = tf.where((anchor_labels > 0)[:, None], landmark_t, 0.0)
    return Match(box_t, landmark_t, anchor_labels, tf.where(anchor_labels != 0, best_face, -1))


def match_anchors(faces: Faces, anchors, *, match_threshold: float = LossConfig.match_threshold,
                  force_match_min_iou: float = LossConfig.force_match_min_iou,
                  variances=AnchorConfig.variances) -> Match:
    """Match the faces of one image to the anchors.

    Args:
      faces: :class:`~retinaface_tf.ops.faces.Faces` with ``rel_xyxy`` boxes (F may be 0; widths
        and heights > 0) and relative landmarks; faces with landmarks label their anchors 1,
        the others -1.
      anchors: ``[N, 4]`` float32 ``rel_center_xywh``.
      match_threshold: IoU from which an anchor is a positive of its best face.
      force_match_min_iou: a face's best anchor is forced positive only if its IoU reaches this.
      variances: the box coder's ``(center, size)`` variances.

    Returns:
      a :class:`Match`: box deltas, landmark deltas, labels in {1, -1, 0} and the matched face of
      every anchor.
    """
    faces = faces.to_tensors()
    num_faces = tf.shape(faces.boxes)[0]
    # One padding slot makes F = 0 need no special case (no argmax over an empty axis).
    return match_anchors_padded(faces.padded(1), tf.range(num_faces + 1) < num_faces, anchors,
                                match_threshold=match_threshold, force_match_min_iou=force_match_min_iou,
                                variances=variances)


_match_jit = tf.function(match_anchors_padded, jit_compile=True, reduce_retracing=False)


def match_anchors_bucketed(faces: Faces, anchors, *, buckets=DEFAULT_BUCKETS,
                           match_threshold: float = LossConfig.match_threshold,
                           force_match_min_iou: float = LossConfig.force_match_min_iou,
                           variances=AnchorConfig.variances) -> Match:
    """:func:`match_anchors` compiled with XLA: faces are padded to the smallest of ``buckets``
    that holds them (one compiled program per bucket, so shapes stay static); images with more
    faces than the last bucket take the uncompiled path. About 2.5x less CPU per image inside
    ``tf.data``. Results equal :func:`match_anchors` except where two IoUs are within float
    rounding of each other (XLA may round an IoU differently in the last bit, e.g. 0.31928253
    vs 0.3192826), where the other of the two near-equal anchors / faces can be chosen."""
    faces = faces.to_tensors()
    num_faces = tf.shape(faces.boxes)[0]
    kwargs = dict(match_threshold=match_threshold, force_match_min_iou=force_match_min_iou, variances=variances)

    def padded(size):
        def run():
            slots = faces.padded(size - num_faces).with_shape(size)
            return _match_jit(slots, tf.range(size) < num_faces, anchors, **kwargs)
        return run

    branches = [padded(size) for size in buckets]
    branches.append(lambda: match_anchors(faces, anchors, **kwargs))
    index = tf.reduce_sum(tf.cast(num_faces > tf.constant(buckets, tf.int32), tf.int32))
    return Match(*tf.switch_case(index, branches))
