"""``retinaface-tf`` command line: a thin dispatcher.

Each subcommand lives in ``retinaface_tf/commands/<name>.py`` with ``add_parser(subparsers)``
and ``run(args) -> int``, its imports (TensorFlow for most) at the top. Only the module of the
command being run is imported, so ``--help`` stays fast and one command's heavy imports never slow
another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from retinaface_tf import (_QUIET_TF_IMPORT, __version__, filtered_stderr, is_tensorflow_log_noise,  # noqa: F401
                           quiet_tensorflow_import)
from retinaface_tf.environment import use_training_settings
from retinaface_tf.errors import RetinaFaceError

# TensorFlow's C++ start-up chatter (oneDNN notices, "failed call to cuInit" on machines
# without a GPU) is noise for a command-line user; TF_CPP_MIN_LOG_LEVEL set by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# name -> one-line help, in the order a user meets them. Add a subcommand by adding its module and a line here.
COMMANDS = {
    "detect": "find faces in photos, folders and videos; write annotated copies, detections.json and aligned crops",
    "export": "deployment: TF Serving SavedModel, TFLite (float32/fp16/dynamic/int8) or ONNX, decode + NMS inside",
    "evaluate": "WIDER FACE easy/medium/hard AP (official protocol), PR curves, test-time augmentation",
    "train": "train or fine-tune RetinaFace with model.fit under tf.distribute (resumable; any config value overridable)",
    "plot-run": "loss curves, learning rate and val AP of one or more training runs as one PNG",
    "detect-dataset": "faces of every image of a folder, list file or object store on Ray Data (local or a cluster) into Parquet",
    "make-tfrecords": "write the TFRecord shards that `train --tfrecords` reads from a label file and its images",
    "show-anchors": "anchors matched to each face of a training image after augmentation, and faces left without one",
    "explain": "saliency and Grad-CAM++ maps of one face's score over the photo (tf-keras-vis)",
    "convert": "convert PyTorch RetinaFace checkpoints (biubug6, yakhyo) or ImageNet backbones into Keras weights (no torch needed)",
}

EXAMPLES = """examples:
  retinaface-tf detect photo.jpg photos/ clip.mp4     faces in a photo, a folder and a video -> ./detections/
  retinaface-tf export --format tflite                 -> exported/retinaface_fp32_640x640.tflite
  retinaface-tf evaluate --images data/widerface/val/images --ground-truth data/widerface/ground_truth

Run `retinaface-tf COMMAND --help` for a command's flags. Documentation: README.md and docs/."""


# The filter for TensorFlow's C++ start-up lines lives in the package root (``import retinaface_tf``
# installs it for Python users too); the CLI uses it as is.
def _command_name(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first argument that is not an option."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand. A command's module is imported only when needed: the one
    ``argv`` names (none for ``retinaface-tf --help``), or all of them when ``argv`` is None."""
    parser = argparse.ArgumentParser(prog="retinaface-tf", description="RetinaFace face detection in Keras 3 / TensorFlow",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"retinaface-tf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = None if argv is None else _command_name(argv)
    for name, help_text in COMMANDS.items():
        if argv is not None and name != wanted:
            sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:])  # listed, never run
            continue
        module = importlib.import_module(f"retinaface_tf.commands.{name.replace('-', '_')}")
        p = module.add_parser(sub, name, help_text)
        p.set_defaults(_run=module.run)
        if p.description:  # one sentence style: the one-line help starts lower case, a description upper case
            p.description = p.description[0].upper() + p.description[1:]
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_tensorflow_import()  # before the command's module imports TensorFlow
    if _command_name(argv) == "train":  # oneDNN and the caching allocator: set before TensorFlow loads
        use_training_settings()
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args._run(args) or 0)
    except RetinaFaceError as exc:  # usage errors and every user-facing error: one line; the rest propagate
        print(f"retinaface-tf {_command_name(argv)}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _QUIET_TF_IMPORT.uninstall()


if __name__ == "__main__":
    sys.exit(main())
