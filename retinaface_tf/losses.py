"""The reference's MultiBoxLoss (``layers/modules/multibox_loss.py``) as Keras 3 losses.

Targets and masks come from :func:`retinaface_tf.ops.targets.pack_targets` (the data pipeline
yields ``(images, targets, masks)``), dicts with the model's output keys, ``N`` anchors:

- ``"bbox"``      targets ``[B, N, 4]`` encoded box deltas ``(dx, dy, dw, dh)``; mask: the
  anchors matched to a face
- ``"classes"``   targets ``[B, N]`` int class (1 face, 0 background); mask: the anchors that
  take part in classification (all)
- ``"landmarks"`` targets ``[B, N, 10]`` encoded landmark deltas ``(x0, y0, ..., x4, y4)``;
  mask: the anchors matched to a face with landmarks

Keras hands each output's loss its mask as ``sample_weight`` (1 / 0 weights, or bool), read as
``mask != 0``; every loss requires it.

Terms (PyTorch smooth-L1 with beta 1, summed):

- box: smooth-L1 over the masked anchors, divided by their count in the batch;
- class: softmax cross-entropy over positives and hard negatives (per image the
  ``neg_pos_ratio * num_pos`` background anchors of highest loss, at most ``N - 1``), divided by
  the positives' count in the batch;
- landmark: smooth-L1 over the masked anchors, divided by their count in the batch.

Counts are clamped to >= 1, so a batch without faces gives 0 (never NaN). The training objective
is ``loc_weight * box + class + landmark_weight * landmark`` (2, 1, 1 in the reference).

Use with ``model.fit`` (model outputs ``{"bbox", "classes", "landmarks"}``, data ``(images,
targets, masks)``)::

    loss = MultiBoxLoss(neg_pos_ratio=7, loc_weight=2.0)
    model.compile(optimizer=..., **loss.compile_kwargs())

Keras then logs the three unweighted terms as ``bbox_loss``, ``classes_loss`` and
``landmarks_loss`` next to the total ``loss``. ``MultiBoxLoss`` itself is a Keras loss over the
whole dicts (``loss(targets, predictions, masks)`` returns the weighted total;
:meth:`MultiBoxLoss.terms` gives the three terms) for custom training loops.

Distribution: each term returns a scalar, which Keras 3 neither re-scales by the replica count nor
averages; gradients are summed over replicas. So each replica divides its *local* sum by the
*global* count (an all-reduce over the replicas of the current ``tf.distribute`` replica
context): the summed gradients are exactly those of the whole global batch, and Keras' logged
value (local value × replicas, averaged over replicas) is the global-batch loss.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from retinaface_tf.config import LossConfig

__all__ = ["smooth_l1", "BoxRegressionLoss", "ClassificationLoss", "LandmarkLoss", "MultiBoxLoss"]


def smooth_l1(x):
    """PyTorch's ``smooth_l1_loss`` with beta 1, elementwise: ``0.5 x²`` if ``|x| < 1`` else
    ``|x| - 0.5``."""
    ax = tf.abs(x)
    return tf.where(ax < 1.0, 0.5 * tf.square(x), ax - 0.5)


def global_count(mask):
    """Number of True in ``mask`` over the whole global batch, float32, clamped to >= 1.

    Inside a ``tf.distribute`` replica context with several replicas the local counts are summed
    over replicas; elsewhere (no strategy, one replica, cross-replica context) it is the local
    count.
    """
    count = tf.reduce_sum(tf.cast(mask, tf.float32))
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return tf.maximum(tf.stop_gradient(count), 1.0)


class _MaskedLoss(keras.losses.Loss):
    """A loss of the target, the prediction and the anchor mask Keras passes as ``sample_weight``
    (``[B, N]`` 1 / 0 weights, or bool); the value is already a normalised scalar."""

    def __init__(self, name: str, reduction: str = "sum", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None:
            raise ValueError(f"{type(self).__name__} needs the anchor mask as sample_weight: give model.fit "
                             "(images, targets, masks), as retinaface_tf.ops.targets.pack_targets makes them")
        with tf.name_scope(self.name):
            return self.masked(y_true, tf.cast(y_pred, tf.float32), tf.cast(sample_weight, tf.bool))

    def masked(self, y_true, y_pred, mask):
        raise NotImplementedError

    def call(self, y_true, y_pred):
        raise TypeError(f"{type(self).__name__} is called with the anchor mask: loss(y_true, y_pred, mask)")


def _masked_smooth_l1(target, pred, mask):
    """Smooth-L1 summed over the anchors in ``mask`` ``[B, N]`` (and the last axis), divided by
    their global count: the box and landmark terms differ only in the mask."""
    per_anchor = tf.reduce_sum(smooth_l1(pred - tf.cast(target, tf.float32)), axis=-1)
    return tf.reduce_sum(tf.where(mask, per_anchor, 0.0)) / global_count(mask)


@keras.saving.register_keras_serializable(package="retinaface_tf")
class BoxRegressionLoss(_MaskedLoss):
    """Smooth-L1 on the box deltas of the masked anchors, / their global count.

    ``y_true`` ``[B, N, 4]`` encoded deltas, ``y_pred`` ``[B, N, 4]`` deltas, mask ``[B, N]``.
    """

    def __init__(self, name: str = "box_regression", **kwargs):
        super().__init__(name=name, **kwargs)

    def masked(self, y_true, y_pred, mask):
        return _masked_smooth_l1(y_true, y_pred, mask)


@keras.saving.register_keras_serializable(package="retinaface_tf")
class LandmarkLoss(_MaskedLoss):
    """Smooth-L1 on the landmark deltas of the masked anchors, / their global count.

    ``y_true`` ``[B, N, 10]`` encoded deltas, ``y_pred`` ``[B, N, 10]`` deltas, mask ``[B, N]``.
    """

    def __init__(self, name: str = "landmark_regression", **kwargs):
        super().__init__(name=name, **kwargs)

    def masked(self, y_true, y_pred, mask):
        return _masked_smooth_l1(y_true, y_pred, mask)


def hard_negative_mask(background_loss, positive, neg_pos_ratio: int):
    """The reference's hard negative mining.

    Args:
      background_loss: ``[B, N]`` float32 cross-entropy of each anchor against "background".
      positive: ``[B, N]`` bool.
      neg_pos_ratio: negatives per positive, per image.

    Returns ``[B, N]`` bool: anchors whose rank (by loss, descending, positives counted as 0) is
    below ``min(neg_pos_ratio * num_pos, N - 1)`` of their image. Positives can be in it only
    when they tie with zero-loss negatives, as in the reference. Static shapes only (two sorts
    instead of a ``top_k`` with a data-dependent ``k``), so it compiles under XLA.
    """
    n = tf.shape(background_loss)[1]
    mining = tf.stop_gradient(tf.where(positive, 0.0, background_loss))
    order = tf.argsort(mining, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    num_pos = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1, keepdims=True)
    num_neg = tf.minimum(neg_pos_ratio * num_pos, n - 1)
    return rank < num_neg


@keras.saving.register_keras_serializable(package="retinaface_tf")
class ClassificationLoss(_MaskedLoss):
    """Softmax cross-entropy over positives and hard negatives, / global count of positives.

    ``y_true`` ``[B, N]`` (or ``[B, N, 1]``) classes (1 face, 0 background), ``y_pred``
    ``[B, N, 2]`` logits (background, face), mask ``[B, N]``: the anchors that take part
    (negatives are mined among them).
    """

    def __init__(self, neg_pos_ratio: int = LossConfig.neg_pos_ratio, name: str = "classification", **kwargs):
        super().__init__(name=name, **kwargs)
        self.neg_pos_ratio = int(neg_pos_ratio)

    def masked(self, y_true, y_pred, mask):
        if y_true.shape.rank == 3:
            y_true = y_true[..., 0]
        positive = (tf.cast(y_true, tf.int32) == 1) & mask
        lse = tf.reduce_logsumexp(y_pred, axis=-1)
        ce_face = lse - y_pred[..., 1]
        ce_background = lse - y_pred[..., 0]
        negative = hard_negative_mask(tf.where(mask, ce_background, 0.0), positive, self.neg_pos_ratio)
        negative = negative & mask & ~positive
        total = tf.reduce_sum(tf.where(positive, ce_face, 0.0)) + tf.reduce_sum(tf.where(negative, ce_background, 0.0))
        return total / global_count(positive)

    def get_config(self):
        return {**super().get_config(), "neg_pos_ratio": self.neg_pos_ratio}


@keras.saving.register_keras_serializable(package="retinaface_tf")
class MultiBoxLoss(keras.losses.Loss):
    """The joint objective over the dicts ``y_true`` / ``y_pred`` / masks keyed ``bbox``,
    ``classes``, ``landmarks`` (see the module docstring): ``loc_weight * box + class +
    landmark_weight * landmark``.

    For ``model.fit`` use ``model.compile(**MultiBoxLoss(...).compile_kwargs())`` (one Keras loss
    per output, so each term is logged); passing the object itself as ``loss=`` cannot work
    because Keras hands a single loss one output at a time.
    """

    def __init__(self, neg_pos_ratio: int = LossConfig.neg_pos_ratio, loc_weight: float = LossConfig.loc_weight,
                 landmark_weight: float = LossConfig.landmark_weight, name: str = "multibox", reduction: str = "sum",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.neg_pos_ratio = int(neg_pos_ratio)
        self.loc_weight = float(loc_weight)
        self.landmark_weight = float(landmark_weight)
        self.box_loss = BoxRegressionLoss()
        self.class_loss = ClassificationLoss(neg_pos_ratio=self.neg_pos_ratio)
        self.landmark_loss = LandmarkLoss()

    def terms(self, y_true, y_pred, masks) -> dict:
        """Unweighted ``{"bbox", "classes", "landmarks"}`` scalar terms."""
        if not all(isinstance(d, dict) for d in (y_true, y_pred, masks)):
            raise TypeError("MultiBoxLoss takes dicts keyed 'bbox', 'classes', 'landmarks' (targets, predictions, "
                            "masks); for model.fit use model.compile(**MultiBoxLoss(...).compile_kwargs())")
        return {"bbox": self.box_loss(y_true["bbox"], y_pred["bbox"], masks["bbox"]),
                "classes": self.class_loss(y_true["classes"], y_pred["classes"], masks["classes"]),
                "landmarks": self.landmark_loss(y_true["landmarks"], y_pred["landmarks"], masks["landmarks"])}

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The weighted total; ``sample_weight`` is the masks dict."""
        with tf.name_scope(self.name):
            t = self.terms(y_true, y_pred, sample_weight)
            return self.loc_weight * t["bbox"] + t["classes"] + self.landmark_weight * t["landmarks"]

    def call(self, y_true, y_pred):
        raise TypeError("MultiBoxLoss is called with the masks: loss(targets, predictions, masks)")

    def compile_kwargs(self) -> dict:
        """``{"loss": {...}, "loss_weights": {...}}`` for ``model.compile``."""
        return {
            "loss": {"bbox": BoxRegressionLoss(), "classes": ClassificationLoss(neg_pos_ratio=self.neg_pos_ratio),
                     "landmarks": LandmarkLoss()},
            "loss_weights": {"bbox": self.loc_weight, "classes": 1.0, "landmarks": self.landmark_weight},
        }

    def get_config(self):
        return {**super().get_config(), "neg_pos_ratio": self.neg_pos_ratio, "loc_weight": self.loc_weight,
                "landmark_weight": self.landmark_weight}
