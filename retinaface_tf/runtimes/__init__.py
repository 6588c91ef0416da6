"""How the network is run: TensorFlow (the Detector's default graph), LiteRT (:mod:`.litert`),
ONNX Runtime (:mod:`.onnx`), and the on-disk cache of the choice between them (:mod:`.cache`).
Above :mod:`retinaface_tf.models` (the network's definition), below inference and serving."""

import os


def available_cores() -> int:
    """The cores this process may use (its CPU affinity): every runtime's default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
