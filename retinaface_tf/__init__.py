"""RetinaFace face detection (boxes + 5 landmarks) in Keras 3 / TensorFlow."""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import retinaface_tf` stays cheap for the CLI's --help
    if name == "Detector":
        from retinaface_tf.inference import Detector
        return Detector
    if name == "Config":
        from retinaface_tf.config import Config
        return Config
    raise AttributeError(name)


__all__ = ["Config", "Detector", "__version__"]
