"""Subcommands of ``retinaface-tf`` (see ``retinaface_tf.cli``) and the helpers they share."""

from __future__ import annotations

import argparse
import sys

from retinaface_tf.errors import UsageError

# Detector's runtimes (retinaface_tf.inference.RUNTIMES, not imported: this module stays free of TensorFlow)
RUNTIME_CHOICES = ("auto", "tf", "litert", "onnx")


class RenamedFlag(argparse.Action):
    """An old flag name, still accepted but hidden from ``--help``: stores its value under the new
    flag's ``dest`` and prints one line naming the new flag."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now {self.new}; the old name still works", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_threshold_args(parser, *, score_default: float | None = 0.5, score_help: str | None = None,
                       iou: bool = True, dest: str = "score_threshold", old_score: str | None = "--threshold",
                       old_iou: str | None = "--nms-threshold") -> None:
    """``--score-threshold`` (and ``--iou-threshold``), one vocabulary on every command; the old
    names (``--threshold``, ``--nms-threshold``) are still accepted, hidden, with a notice."""
    parser.add_argument("--score-threshold", dest=dest, type=float, default=score_default, metavar="T",
                        help=score_help or f"minimum face score of a detection (default {score_default})")
    if old_score:
        parser.add_argument(old_score, dest=dest, type=float, action=RenamedFlag, new="--score-threshold")
    if iou:
        parser.add_argument("--iou-threshold", dest="iou_threshold", type=float, default=None, metavar="T",
                            help="NMS IoU above which the lower-scored of two boxes is dropped "
                                 "(default: the config's, 0.4)")
        if old_iou:
            parser.add_argument(old_iou, dest="iou_threshold", type=float, action=RenamedFlag, new="--iou-threshold")


def add_quiet_arg(parser, help_text: str = "no progress bar") -> None:
    """``-q`` / ``--quiet`` on every command that shows progress."""
    parser.add_argument("-q", "--quiet", action="store_true", help=help_text)


def add_model_args(parser) -> None:
    """``--weights`` / ``--config``, shared by every command that loads a model."""
    parser.add_argument("--weights", default=None, metavar="WEIGHTS",
                        help="mobilenet025 (the bundled official mobilenet0.25, default), a model folder "
                             "(model.weights.h5 + config.yaml), a .weights.h5 file or a RetinaFace .pth "
                             "(biubug6 or yakhyo; its network is read from its keys)")
    parser.add_argument("--config", default=None, metavar="CONFIG",
                        help="config name (mobilenet025, mobilenet025_short, mobilenet025_short_plus, mobilenet050, "
                             "mobilenet100, mobilenetv2, resnet18, resnet34, resnet50) or YAML file "
                             "(default: the config saved with the weights)")


def add_runtime_arg(parser) -> None:
    """``--runtime``, shared by the commands that run a :class:`~retinaface_tf.inference.Detector`."""
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                        metavar="{" + ",".join(RUNTIME_CHOICES) + "}",
                        help="what runs the network: auto (default: the fastest installed on this machine, timed "
                             "once and cached with its converted model; $RETINAFACE_TF_RUNTIME overrides it), tf "
                             "(TensorFlow), litert (LiteRT / XNNPACK; tflite extra) or onnx (ONNX Runtime; onnx "
                             "extra); the same detections whichever runs")


def parse_overrides(items) -> dict:
    """``--set KEY=VALUE`` items → ``{KEY: VALUE}`` for :meth:`Config.override` (values are YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out
