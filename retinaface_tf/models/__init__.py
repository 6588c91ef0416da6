"""The RetinaFace network (backbones, FPN, SSH, heads) and its weights."""

from retinaface_tf.models.retinaface import build_from_config, build_retinaface
from retinaface_tf.models.weights import load_model, resolve_weights
from retinaface_tf.ops.image import preprocess  # the network's input convention, shared with data and serving

__all__ = ["build_from_config", "build_retinaface", "load_model", "preprocess", "resolve_weights"]
