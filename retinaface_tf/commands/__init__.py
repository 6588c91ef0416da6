"""Subcommands of ``retinaface-tf`` (see ``retinaface_tf.cli``)."""


def add_model_args(parser) -> None:
    """``--weights`` / ``--config``, shared by every command that loads a model."""
    parser.add_argument("--weights", default=None,
                        help="model folder (model.weights.h5 + config.yaml), .weights.h5 file or reference .pth "
                             "(default: the bundled official mobilenet0.25)")
    parser.add_argument("--config", default=None,
                        help="config name (mobilenet025, mobilenet025_short, resnet50) or YAML file "
                             "(default: the config saved with the weights)")
