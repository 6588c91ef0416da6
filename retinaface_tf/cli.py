"""``retinaface-tf`` command line: a thin dispatcher.

Each subcommand lives in ``retinaface_tf/commands/<name>.py`` with ``add_parser(subparsers)``
and ``run(args) -> int``; modules are imported lazily so ``--help`` stays fast and one command's
heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# TensorFlow's C++ start-up chatter (oneDNN notices, "failed call to cuInit" on machines
# without a GPU) is noise for a command-line user; TF_CPP_MIN_LOG_LEVEL set by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# name -> one-line help. Add a subcommand by adding its module and a line here.
COMMANDS = {
    "detect": "find faces in images (files or folders) and write annotated images / JSON",
    "convert": "convert reference PyTorch .pth checkpoints into Keras weights (no torch needed)",
    "train": "train RetinaFace with model.fit under tf.distribute (resumable; any config value overridable)",
    "evaluate": "WIDER FACE easy/medium/hard AP (official protocol), PR curves, test-time augmentation",
    "explain": "saliency and Grad-CAM++ maps of one face's score over the photo (tf-keras-vis)",
    "plot-run": "loss curves (box / class / landmark / total) and learning rate of a training run as one PNG",
    "show-anchors": "anchors matched to each face of a training image after augmentation, and faces left without one",
    "export": "deployment: TF Serving SavedModel or TFLite (float32/fp16/dynamic/int8), decode + NMS inside",
}


class CliError(Exception):
    """A usage error found by a command: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from retinaface_tf import __version__

    parser = argparse.ArgumentParser(prog="retinaface-tf", description="RetinaFace face detection in Keras 3 / TensorFlow")
    parser.add_argument("--version", action="version", version=f"retinaface-tf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"retinaface_tf.commands.{name.replace('-', '_')}")
        p = module.add_parser(sub, name, help_text)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CliError as exc:
        print(f"retinaface-tf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - user errors become one line, the rest propagate
        from retinaface_tf.errors import RetinaFaceError
        if isinstance(exc, RetinaFaceError):
            print(f"retinaface-tf {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run as `python -m retinaface_tf.cli`, this file is `__main__`; the commands raise the
    # CliError of `retinaface_tf.cli`, so dispatch through that module, not this copy.
    from retinaface_tf.cli import main as _main

    sys.exit(_main())
