"""Subcommands of ``retinaface-tf`` (see ``retinaface_tf.cli``) and the helpers they share."""

from __future__ import annotations

from retinaface_tf.errors import UsageError


def add_model_args(parser) -> None:
    """``--weights`` / ``--config``, shared by every command that loads a model."""
    parser.add_argument("--weights", default=None,
                        help="model folder (model.weights.h5 + config.yaml), .weights.h5 file or reference .pth "
                             "(default: the bundled official mobilenet0.25)")
    parser.add_argument("--config", default=None,
                        help="config name (mobilenet025, mobilenet025_short, mobilenet025_short_plus, mobilenet050, mobilenet100, mobilenetv2, resnet18, resnet34, resnet50) or YAML file "
                             "(default: the config saved with the weights)")


def add_runtime_arg(parser) -> None:
    """``--runtime``, shared by the commands that run a :class:`~retinaface_tf.inference.Detector`."""
    parser.add_argument("--runtime", choices=("tf", "litert"), default="tf",
                        help="what runs the network: tf (TensorFlow, default) or litert (converted once to a "
                             "float32 LiteRT model run by XNNPACK, 5-10 s at start; needs the tflite extra; "
                             "faster on some CPUs, measure on yours)")


def parse_overrides(items) -> dict:
    """``--set KEY=VALUE`` items → ``{KEY: VALUE}`` for :meth:`Config.override` (values are YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out
