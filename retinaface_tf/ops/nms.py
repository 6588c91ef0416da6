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

import tensorflow as tf

from retinaface_tf.ops.box_coder import DEFAULT_VARIANCES, decode_boxes, decode_landmarks


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
    k = tf.minimum(tf.constant(pre_nms_top_k, tf.int32), tf.shape(scores)[1])
    top_scores, top_idx = tf.math.top_k(scores, k=k, sorted=True)
    top_boxes = tf.gather(boxes, top_idx, batch_dims=1)
    one = 1.0 if plus_one_pixel else 0.0
    x1, y1, x2, y2 = tf.unstack(top_boxes, axis=-1)
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

    selected, num_valid = tf.map_fn(
        _one_image, (nms_boxes, top_scores),
        fn_output_signature=(tf.TensorSpec([max_detections], tf.int32), tf.TensorSpec([], tf.int32)))
    indices = tf.gather(top_idx, selected, batch_dims=1)
    valid = tf.range(max_detections)[None, :] < num_valid[:, None]
    indices = tf.where(valid, indices, tf.zeros_like(indices))
    return indices, num_valid


def postprocess(box_deltas, face_scores, landmark_deltas, anchors, *, input_size, output_scale,
                score_threshold: float, iou_threshold: float, pre_nms_top_k: int, max_detections: int,
                variances=DEFAULT_VARIANCES):
    """Decode the head outputs and run NMS, batched.

    Args:
      box_deltas: ``[B, N, 4]``; face_scores: ``[B, N]`` face probability;
      landmark_deltas: ``[B, N, 10]``; anchors: ``[N, 4]`` ``rel_center_xywh``.
      input_size: ``(height, width)`` of the network input (ints or scalar tensors).
      output_scale: ``[B, 2]`` ``(sx, sy)`` multiplying network-input pixels into output pixels
        (``1 / resize`` of each image: detections come back in the original image).
    Returns a dict of padded tensors: ``boxes [B, K, 4]`` pixel ``xyxy``, ``scores [B, K]``,
    ``landmarks [B, K, 5, 2]`` pixel (x, y), ``num_detections [B]`` int32; rows past
    ``num_detections`` are zero.
    """
    h = tf.cast(input_size[0], tf.float32)
    w = tf.cast(input_size[1], tf.float32)
    output_scale = tf.cast(output_scale, tf.float32)
    to_pixels = tf.stack([w, h])[None, :] * output_scale  # [B, 2] (x, y)
    boxes = decode_boxes(box_deltas, anchors[None], variances) * tf.tile(to_pixels, [1, 2])[:, None, :]
    landmarks = decode_landmarks(landmark_deltas, anchors[None], variances) * to_pixels[:, None, None, :]
    indices, num = batched_nms(boxes, face_scores, score_threshold=score_threshold,
                               iou_threshold=iou_threshold, pre_nms_top_k=pre_nms_top_k,
                               max_detections=max_detections)
    valid = tf.range(max_detections)[None, :] < num[:, None]
    validf = tf.cast(valid, tf.float32)
    return {
        "boxes": tf.gather(boxes, indices, batch_dims=1) * validf[..., None],
        "scores": tf.gather(face_scores, indices, batch_dims=1) * validf,
        "landmarks": tf.gather(landmarks, indices, batch_dims=1) * validf[..., None, None],
        "num_detections": num,
    }
