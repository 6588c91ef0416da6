"""The shipped training configs (``retinaface_tf.configs``): ``Config.load("mobilenet025_short")``
resolves a bare name to one of these YAML files from any directory."""
