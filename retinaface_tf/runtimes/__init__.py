"""How the network is run: TensorFlow (the Detector's default graph), LiteRT (:mod:`.litert`).
Above :mod:`retinaface_tf.models` (the network's definition), below inference and serving."""
