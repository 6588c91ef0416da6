"""Matcher outputs → what the losses read: one target and one anchor mask per model output.

``model.fit`` takes ``(images, targets, masks)``; Keras hands each output's loss its target and,
as ``sample_weight``, its mask (``N`` anchors, any leading dims ``[...]``). A mask is float32
1 / 0 (a Keras sample weight: ``tf.distribute`` averages a batch's tensors when it builds a model,
which bool tensors cannot go through); the losses read it as ``mask != 0``.

- ``targets["bbox"]``       ``[..., N, 4]`` float32 encoded box deltas ``(dx, dy, dw, dh)``
- ``targets["classes"]``    ``[..., N]`` int32 class: 1 face, 0 background (the logits' order)
- ``targets["landmarks"]``  ``[..., N, 10]`` float32 encoded landmark deltas ``(x0, y0, ..., x4, y4)``
- ``masks["bbox"]``         ``[..., N]``: anchors matched to a face (the positives)
- ``masks["classes"]``      ``[..., N]``: anchors that take part in classification (every
                            anchor: hard negatives are mined among them)
- ``masks["landmarks"]``    ``[..., N]``: anchors matched to a face with landmarks

Targets outside their mask are zero (the matcher writes them so) and never reach a loss.
"""

from __future__ import annotations

import tensorflow as tf

OUTPUT_KEYS = ("bbox", "classes", "landmarks")


def pack_targets(box_deltas, labels, landmark_deltas) -> tuple[dict, dict]:
    """``(targets, masks)`` from the matcher's (or the reference's) per-anchor outputs.

    ``box_deltas [..., N, 4]``, ``labels [..., N]`` (1 = face with landmarks, -1 = face without,
    0 = background: the reference's ``conf_t``), ``landmark_deltas [..., N, 10]``.
    """
    labels = tf.cast(labels, tf.int32)
    positive = labels != 0
    targets = {"bbox": tf.cast(box_deltas, tf.float32), "classes": tf.cast(positive, tf.int32),
               "landmarks": tf.cast(landmark_deltas, tf.float32)}
    masks = {"bbox": positive, "classes": tf.ones_like(positive), "landmarks": labels > 0}
    return targets, {key: tf.cast(mask, tf.float32) for key, mask in masks.items()}
