"""The faces of one image, in one structured form from the label reader to the matcher.

:class:`Faces` is a named tuple of parallel per-face arrays (numpy in the reader, tensors in the
``tf.data`` pipeline; a ``tf.nest`` structure, so datasets, ``tf.cond`` and ``tf.function``
carry it as it is):

- ``boxes``          ``[F, 4]`` float32 ``xyxy``: pixels as read (label files, TFRecords),
                     ``rel_xyxy`` once the augmentation has made them relative to its square.
- ``landmarks``      ``[F, 5, 2]`` float32 (x, y) in the same units as the boxes, in the order of
                     :data:`retinaface_tf.constants.LANDMARK_NAMES`; meaningless (the reader
                     writes ``-1``) where ``has_landmarks`` is False.
- ``has_landmarks``  ``[F]`` bool.
- ``ids``            ``[F]`` int32: each face's index in its label-file entry. The augmentation
                     drops, crops and mirrors faces but never changes an id, so a face can be
                     followed from the label file to the anchors it is matched to.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from retinaface_tf.constants import NUM_LANDMARKS


class Faces(NamedTuple):
    """Per-face arrays of one image (see the module docstring for shapes, dtypes and units).
    The methods are graph-safe (TF ops)."""

    boxes: Any
    landmarks: Any
    has_landmarks: Any
    ids: Any

    @staticmethod
    def empty() -> "Faces":
        """An image without faces (numpy)."""
        return Faces(np.zeros((0, 4), np.float32), np.zeros((0, NUM_LANDMARKS, 2), np.float32),
                     np.zeros((0,), bool), np.zeros((0,), np.int32))

    def to_tensors(self) -> "Faces":
        """As tensors of the documented dtypes and shapes (landmarks may come as ``[F, 10]``)."""
        return Faces(tf.reshape(tf.cast(self.boxes, tf.float32), [-1, 4]),
                     tf.reshape(tf.cast(self.landmarks, tf.float32), [-1, NUM_LANDMARKS, 2]),
                     tf.reshape(tf.cast(self.has_landmarks, tf.bool), [-1]),
                     tf.reshape(tf.cast(self.ids, tf.int32), [-1]))

    def select(self, keep) -> "Faces":
        """The faces where the bool ``[F]`` ``keep`` is True, in order."""
        return Faces(*(tf.boolean_mask(field, keep) for field in self))

    def relative_to(self, side) -> "Faces":
        """Pixel boxes and landmarks divided by ``side``: relative to a square of that side."""
        return self._replace(boxes=self.boxes / side, landmarks=self.landmarks / side)

    def padded(self, slots) -> "Faces":
        """Followed by ``slots`` empty entries (zeros, no landmarks, id -1): static shapes for
        XLA. Which entries are real is the caller's to track (``tf.range(F + slots) < F``)."""
        return Faces(tf.pad(self.boxes, [[0, slots], [0, 0]]), tf.pad(self.landmarks, [[0, slots], [0, 0], [0, 0]]),
                     tf.pad(self.has_landmarks, [[0, slots]]), tf.pad(self.ids, [[0, slots]], constant_values=-1))

    def with_shape(self, num) -> "Faces":
        """``tf.ensure_shape`` with ``num`` faces (``None``: any number)."""
        return Faces(tf.ensure_shape(self.boxes, [num, 4]), tf.ensure_shape(self.landmarks, [num, NUM_LANDMARKS, 2]),
                     tf.ensure_shape(self.has_landmarks, [num]), tf.ensure_shape(self.ids, [num]))
