"""Constants of the reference model that no setting changes: the colour mean and the landmarks.

Everything configurable (anchors, variances, thresholds, augmentation, training) has its default
in :mod:`retinaface_tf.config`; this module holds only what the data and the network fix.
"""

# The reference feeds its network BGR images minus this mean, unscaled. (B, G, R) order.
BGR_MEAN = (104.0, 117.0, 123.0)

# The five landmarks, in the order of the data, the network's outputs and every export.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
NUM_LANDMARKS = len(LANDMARK_NAMES)

# Mirroring swaps the left / right eye (0 <-> 1) and the left / right mouth corner (3 <-> 4).
MIRROR_LANDMARK_ORDER = (1, 0, 2, 4, 3)
