"""RetinaFace face detection (boxes + 5 landmarks) in Keras 3 / TensorFlow."""

import contextlib
import importlib.abc
import importlib.util
import os as _os
import re
import sys
import tempfile

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up lines ("failed call to cuInit", oneDNN notices) are noise for a user of
# this package, from Python as on the command line: hidden unless the user set a level.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"


# ---------------------------------------------------------------------- TensorFlow start-up lines
# TensorFlow 2.21 logs from C++ through absl before absl::InitializeLog() runs, and that path
# ignores TF_CPP_MIN_LOG_LEVEL: every `import tensorflow` writes (twice, once per shared library)
#   WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
#   I0000 00:00:17... port.cc:153] oneDNN custom operations are on. ...
#   I0000 00:00:17... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
# (and on CUDA machines "E0000 ... Unable to register cuDNN factory ..." and the like). No
# environment variable reaches that logger, so the package points file descriptor 2 at a temporary
# file while `tensorflow` is imported and replays every line except C++ log lines below
# TF_CPP_MIN_LOG_LEVEL (0 = INFO, 1 = WARNING, 2 = ERROR, 3 = FATAL; the package's default 3).
# Settings are unchanged (oneDNN stays on); only these lines are dropped.
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s\]]+:\d+\] ")
_TSL_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) [^\s\]]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _min_log_level() -> int:
    try:
        return int(_os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
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
def filtered_fd(fd: int, drop):
    """Send file descriptor ``fd`` (1 or 2; C++ and Python alike) to a temporary file for the
    block, then replay its lines except those ``drop(line)`` is true for."""
    stream = sys.stdout if fd == 1 else sys.stderr
    try:
        stream.flush()
        saved = _os.dup(fd)
    except (OSError, ValueError, AttributeError):  # no usable descriptor: leave it alone
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        _os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
            _os.dup2(saved, fd)
            _os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True)
                    if not drop(line.decode("utf-8", "replace"))]
            if kept:
                _os.write(fd, b"".join(kept))


def filtered_stderr():
    """:func:`filtered_fd` on file descriptor 2, dropping :func:`is_tensorflow_log_noise` lines."""
    return filtered_fd(2, is_tensorflow_log_noise)


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


def quiet_tensorflow_import() -> None:
    """Filter TensorFlow's C++ start-up lines (below ``TF_CPP_MIN_LOG_LEVEL``) from the first
    ``import tensorflow`` of this process; ``import retinaface_tf`` calls it."""
    _QUIET_TF_IMPORT.install()


quiet_tensorflow_import()  # the lines TensorFlow prints before its log level applies are filtered too


def __getattr__(name):  # lazy: `import retinaface_tf` stays cheap for the CLI's --help
    if name == "Detector":
        from retinaface_tf.inference import Detector
        return Detector
    if name == "Config":
        from retinaface_tf.config import Config
        return Config
    raise AttributeError(name)


__all__ = ["Config", "Detector", "__version__"]
