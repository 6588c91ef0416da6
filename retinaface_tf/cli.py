"""``retinaface-tf`` command line: a thin dispatcher.

Each subcommand lives in ``retinaface_tf/commands/<name>.py`` with ``add_parser(subparsers)``
and ``run(args) -> int``, its imports (TensorFlow for most) at the top. Only the module of the
command being run is imported, so ``--help`` stays fast and one command's heavy imports never slow
another.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

from retinaface_tf import __version__
from retinaface_tf.errors import RetinaFaceError

# TensorFlow's C++ start-up chatter (oneDNN notices, "failed call to cuInit" on machines
# without a GPU) is noise for a command-line user; TF_CPP_MIN_LOG_LEVEL set by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# name -> one-line help, in the order a user meets them. Add a subcommand by adding its module and a line here.
COMMANDS = {
    "detect": "find faces in photos, folders and videos; write annotated copies, detections.json and aligned crops",
    "export": "deployment: TF Serving SavedModel or TFLite (float32/fp16/dynamic/int8), decode + NMS inside",
    "evaluate": "WIDER FACE easy/medium/hard AP (official protocol), PR curves, test-time augmentation",
    "train": "train or fine-tune RetinaFace with model.fit under tf.distribute (resumable; any config value overridable)",
    "plot-run": "loss curves, learning rate and val AP of one or more training runs as one PNG",
    "make-tfrecords": "write the TFRecord shards that `train --tfrecords` reads from a label file and its images",
    "show-anchors": "anchors matched to each face of a training image after augmentation, and faces left without one",
    "explain": "saliency and Grad-CAM++ maps of one face's score over the photo (tf-keras-vis)",
    "convert": "convert reference PyTorch .pth checkpoints into Keras weights (no torch needed)",
}

EXAMPLES = """examples:
  retinaface-tf detect photo.jpg photos/ clip.mp4     faces in a photo, a folder and a video -> ./detections/
  retinaface-tf export --format tflite                 -> exported/retinaface_fp32_640x640.tflite
  retinaface-tf evaluate --images data/widerface/val/images --ground-truth data/widerface/ground_truth

Run `retinaface-tf COMMAND --help` for a command's flags. Documentation: README.md and docs/."""


# ---------------------------------------------------------------------- TensorFlow start-up lines
# TensorFlow 2.21 logs from C++ through absl before absl::InitializeLog() runs, and that path
# ignores TF_CPP_MIN_LOG_LEVEL: every `import tensorflow` writes (twice, once per shared library)
#   WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
#   I0000 00:00:17... port.cc:153] oneDNN custom operations are on. ...
#   I0000 00:00:17... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
# (and on CUDA machines "E0000 ... Unable to register cuDNN factory ..." and the like). No
# environment variable reaches that logger, so the CLI points file descriptor 2 at a temporary
# file while `tensorflow` is imported and replays every line except C++ log lines below
# TF_CPP_MIN_LOG_LEVEL (0 = INFO, 1 = WARNING, 2 = ERROR, 3 = FATAL; the CLI's default 3).
# Settings are unchanged (oneDNN stays on); only these lines are dropped.
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s\]]+:\d+\] ")
_TSL_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) [^\s\]]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def is_tensorflow_log_noise(line: str, min_level: int | None = None) -> bool:
    """Whether ``line`` is a C++ log line of TensorFlow below ``min_level`` (default
    ``TF_CPP_MIN_LOG_LEVEL``), i.e. one that TensorFlow itself would have hidden."""
    level = _min_log_level() if min_level is None else min_level
    line = line.rstrip("\r\n")
    if line == _ABSL_PREAMBLE:
        return level >= 1  # a warning
    match = _ABSL_LINE.match(line) or _TSL_LINE.match(line)
    return match is not None and "IWEF".index(match.group(1)) < level


@contextlib.contextmanager
def filtered_stderr():
    """Send file descriptor 2 (C++ and Python alike) to a temporary file for the block, then
    replay its lines except :func:`is_tensorflow_log_noise` ones."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: leave it alone
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True)
                    if not is_tensorflow_log_noise(line.decode("utf-8", "replace"))]
            if kept:
                os.write(2, b"".join(kept))


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Meta path hook: the first ``import tensorflow`` (wherever it happens: a command, Keras)
    runs inside :func:`filtered_stderr`. TensorFlow is still imported lazily, so ``--help`` and
    commands without it stay fast."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        self.uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            with filtered_stderr():
                real_exec(module)

        spec.loader.exec_module = exec_module
        return spec

    def install(self) -> None:
        if "tensorflow" not in sys.modules and self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


_QUIET_TF_IMPORT = _QuietTensorFlowImport()


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
    _QUIET_TF_IMPORT.install()  # before the command's module imports TensorFlow
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
