from retinaface_tf.models.retinaface import build_from_config, build_retinaface
from retinaface_tf.ops.image import preprocess  # the network's input convention, shared with data and serving

__all__ = ["build_from_config", "build_retinaface", "preprocess"]
