"""One batched NMS path and the decode + NMS post-processing used by inference, evaluation and
every export.

NMS follows the reference's ``py_cpu_nms``: greedy, by descending score, boxes with score
``> score_threshold`` only, top ``pre_nms_top_k`` before NMS, a box is suppressed when its IoU
with a kept box is ``> iou_threshold``, areas counted with the +1 pixel convention, at most
``max_detections`` kept. The +1 convention is exact with a standard IoU once ``x2``/``y2`` are
shifted by one pixel, so the boxes handed to ``tf.image`` NMS are pixel ``yxyx`` with
``y2 + 1, x2 + 1`` (when ``plus_one_pixel``).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from retinaface_tf.config import AnchorConfig
from retinaface_tf.ops.anchors import generate_anchors
from retinaface_tf.ops.box_coder import decode_boxes, decode_landmarks


class HeadColumns(NamedTuple):
    """Columns ``start : start + size`` of the merged heads tensor ``[B, N, C]`` (one 1x1
    convolution per level for all three heads, :func:`retinaface_tf.models.fused.merged_heads`),
    standing for one head's ``[B, N, size]`` output without splitting it out: post-processing
    gathers its few rows first and slices their columns after (the same values; a ``SplitV`` of
    every row costs more than the rest of the post-processing at 640x480)."""

    tensor: tf.Tensor
    start: int
    size: int


def _take(x, indices):
    """``tf.gather(x, indices, batch_dims=1)`` for a head output or :class:`HeadColumns`."""
    if isinstance(x, HeadColumns):
        return tf.gather(x.tensor, indices, batch_dims=1)[..., x.start:x.start + x.size]
    return tf.gather(x, indices, batch_dims=1)


def face_probability(class_logits):
    """``[..., 2]`` (background, face) logits → ``[...]`` face probability. Equals
    ``softmax(logits)[..., 1]`` (the reference's ``conf[:, 1]``) without normalising over both.
    ``class_logits`` may be :class:`HeadColumns` of the merged heads."""
    if isinstance(class_logits, HeadColumns):
        x, c = class_logits.tensor, class_logits.start
        return tf.sigmoid(x[..., c + 1] - x[..., c])
    # tf.split, not two strided columns: the same subtraction, bit for bit, but in TFLite a
    # last-axis STRIDED_SLICE costs 0.8 ms per column over the 85,200 anchors of a 1920x1080
    # image; with SPLIT (a built-in kernel too) the whole probability takes 0.3 ms
    background, face = tf.split(class_logits, 2, axis=-1)
    return tf.sigmoid(tf.squeeze(face - background, axis=-1))


def _top_k(scores, pre_nms_top_k: int, score_threshold=None):
    """Per image, the ``k = min(pre_nms_top_k, N)`` best scores (descending) and their indices.

    With ``score_threshold``, ``k`` also shrinks to the most candidates any image of the batch
    has above it: everything above the threshold ranks first, so NMS sees the same boxes, and a
    0.5 threshold sorts tens of scores instead of thousands.
    """
    k = tf.minimum(tf.constant(pre_nms_top_k, tf.int32), tf.shape(scores)[1])
    if score_threshold is not None:
        above = tf.reduce_sum(tf.cast(scores > tf.cast(score_threshold, scores.dtype), tf.int32), axis=1)
        k = tf.minimum(k, tf.maximum(tf.reduce_max(above), 1))
    return tf.math.top_k(scores, k=k, sorted=True)


def _nms_sorted(boxes, scores, *, score_threshold, iou_threshold, max_detections: int, plus_one_pixel: bool,
                single_image: bool = False):
    """Greedy NMS per image on score-sorted candidates: ``boxes [B, k, 4]`` pixel ``xyxy``,
    ``scores [B, k]`` → ``selected [B, max_detections]`` int32 into ``k`` (0 past ``num``) and
    ``num [B]``. ``single_image``: ``B`` is 1 and the kernel is called once, without
    ``tf.map_fn`` (see :func:`postprocess`)."""
    one = 1.0 if plus_one_pixel else 0.0
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    nms_boxes = tf.stack([y1, x1, y2 + one, x2 + one], axis=-1)  # yxyx at the tf.image boundary

    # The C++ greedy kernel (NonMaxSuppressionV4; TFLite builtin NON_MAX_SUPPRESSION_V4), once
    # per image. tf.image.non_max_suppression_padded would run a tiled pure-TF variant that is
    # ~10x slower on CPU for a few thousand boxes.
    def _one_image(args):
        b, s = args
        idx, n = tf.raw_ops.NonMaxSuppressionV4(
            boxes=b, scores=s, max_output_size=max_detections,
            iou_threshold=tf.cast(iou_threshold, tf.float32), score_threshold=tf.cast(score_threshold, tf.float32),
            pad_to_max_output_size=True)
        return idx, n

    if single_image:
        if boxes.shape[0] is not None and boxes.shape[0] != 1:
            raise ValueError(f"single_image NMS needs a batch of 1, got boxes of shape {boxes.shape}")
        idx, n = _one_image((nms_boxes[0], scores[0]))
        selected, num_valid = idx[None], n[None]
    else:
        selected, num_valid = tf.map_fn(
            _one_image, (nms_boxes, scores),
            fn_output_signature=(tf.TensorSpec([max_detections], tf.int32), tf.TensorSpec([], tf.int32)))
    valid = tf.range(max_detections)[None, :] < num_valid[:, None]
    return tf.where(valid, selected, tf.zeros_like(selected)), num_valid


def batched_nms(boxes, scores, *, score_threshold: float, iou_threshold: float, pre_nms_top_k: int,
                max_detections: int, plus_one_pixel: bool = True):
    """Greedy NMS for each image of a batch.

    Args:
      boxes: ``[B, N, 4]`` float32 pixel ``xyxy``.
      scores: ``[B, N]`` float32.
    Returns:
      ``indices [B, max_detections]`` int32 into ``N`` (sorted by descending score; entries past
      ``num_valid`` are 0) and ``num_valid [B]`` int32.
    """
    if boxes.shape[-1] is not None and boxes.shape[-1] != 4:
        raise ValueError(f"batched_nms: boxes must be [B, N, 4], got {boxes.shape}")
    top_scores, top_idx = _top_k(scores, pre_nms_top_k)
    selected, num = _nms_sorted(tf.gather(boxes, top_idx, batch_dims=1), top_scores,
                                score_threshold=score_threshold, iou_threshold=iou_threshold,
                                max_detections=max_detections, plus_one_pixel=plus_one_pixel)
    return tf.gather(top_idx, selected, batch_dims=1), num


def postprocess(box_deltas, face_scores, landmark_deltas, anchors, *, input_size, output_scale,
                score_threshold: float, iou_threshold: float, pre_nms_top_k: int, max_detections: int,
                variances=AnchorConfig.variances, single_image: bool = False):
    """Decode the head outputs and run NMS, batched.

    Only the ``pre_nms_top_k`` best anchors of each image are decoded, and landmarks only for
    the kept faces: the result equals decoding everything first (the reference's order), at a
    fraction of the cost for large inputs.

    Args:
      box_deltas: ``[B, N, 4]``; face_scores: ``[B, N]`` face probability;
      landmark_deltas: ``[B, N, 10]``; anchors: ``[N, 4]`` ``rel_center_xywh``. The deltas may
        be :class:`HeadColumns` of the merged heads (only the gathered rows are sliced).
      input_size: ``(height, width)`` of the network input (ints or scalar tensors).
      output_scale: ``[B, 2]`` ``(sx, sy)`` multiplying network-input pixels into output pixels
        (``1 / resize`` of each image: detections come back in the original image).
      single_image: the batch is exactly one image (TFLite exports, one image of the SavedModel's
        ``image_bytes`` signature): the NMS kernel is called directly instead of inside
        ``tf.map_fn``, whose TFLite ``WHILE`` loop crashes int8 calibration. Same decode, same
        kernel, same outputs (tested).
    Returns a dict of padded tensors: ``boxes [B, K, 4]`` pixel ``xyxy``, ``scores [B, K]``,
    ``landmarks [B, K, 5, 2]`` pixel (x, y), ``num_detections [B]`` int32 (rows past
    ``num_detections`` are zero), and ``anchor_indices [B, K]`` int32: the anchor (into ``N``)
    each detection was decoded from (-1 past ``num_detections``).
    """
    h = tf.cast(input_size[0], tf.float32)
    w = tf.cast(input_size[1], tf.float32)
    output_scale = tf.cast(output_scale, tf.float32)
    to_pixels = tf.stack([w, h])[None, :] * output_scale  # [B, 2] (x, y)

    top_scores, top_idx = _top_k(face_scores, pre_nms_top_k, score_threshold)
    top_anchors = tf.gather(anchors, top_idx)  # [B, k, 4]
    boxes = decode_boxes(_take(box_deltas, top_idx), top_anchors, variances)
    boxes = boxes * tf.tile(to_pixels, [1, 2])[:, None, :]
    selected, num = _nms_sorted(boxes, top_scores, score_threshold=score_threshold, iou_threshold=iou_threshold,
                                max_detections=max_detections, plus_one_pixel=True, single_image=single_image)
    kept = tf.gather(top_idx, selected, batch_dims=1)  # [B, K] into N
    landmarks = decode_landmarks(_take(landmark_deltas, kept), tf.gather(anchors, kept), variances)
    valid = tf.range(max_detections)[None, :] < num[:, None]
    validf = tf.cast(valid, tf.float32)
    return {
        "boxes": tf.gather(boxes, selected, batch_dims=1) * validf[..., None],
        "scores": tf.gather(top_scores, selected, batch_dims=1) * validf,
        "landmarks": landmarks * to_pixels[:, None, None, :] * validf[..., None, None],
        "num_detections": num,
        "anchor_indices": tf.where(valid, kept, -1),
    }


def detect_from_heads(outputs, *, input_size, output_scale, score_threshold, iou_threshold, pre_nms_top_k: int,
                      max_detections: int, min_sizes=AnchorConfig.min_sizes, steps=AnchorConfig.steps, clip: bool = False,
                      variances=AnchorConfig.variances, single_image: bool = False, anchors=None):
    """The network's output dict (``bbox``, ``classes`` logits, ``landmarks``) → padded detections:
    anchors for ``input_size`` ``(height, width)``, face probability, then :func:`postprocess`.
    The one path from head outputs to faces, shared by the Detector and every export.
    ``anchors``: ``[N, 4]`` already generated for ``input_size`` (the Detector caches them per
    size), else generated here."""
    if anchors is None:
        anchors = generate_anchors(input_size[0], input_size[1], min_sizes, steps, clip)
    return postprocess(outputs["bbox"], face_probability(outputs["classes"]), outputs["landmarks"], anchors,
                       input_size=input_size, output_scale=output_scale, score_threshold=score_threshold,
                       iou_threshold=iou_threshold, pre_nms_top_k=pre_nms_top_k, max_detections=max_detections,
                       variances=variances, single_image=single_image)
