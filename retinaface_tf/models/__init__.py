from retinaface_tf.models.retinaface import BGR_MEAN, build_from_config, build_retinaface, preprocess

__all__ = ["BGR_MEAN", "build_from_config", "build_retinaface", "preprocess"]
