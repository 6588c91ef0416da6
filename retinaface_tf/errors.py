"""Every user-facing error class, in one place.

Each is a ``RetinaFaceError`` (a ``ValueError``) whose message is one line naming the file and
the line or field, or the flag. The CLI prints it as ``retinaface-tf CMD: error: MESSAGE`` and
exits with code 2; the library raises the same classes. This module imports nothing, so every
layer of the package can raise them.
"""


class RetinaFaceError(ValueError):
    """Base class of every user-facing error."""


class UsageError(RetinaFaceError):
    """A command-line usage error found by a command (a bad flag or flag combination): printed
    as one line, exit code 2."""


# ---------------------------------------------------------------------- configuration, files
class ConfigError(RetinaFaceError):
    """A config file or override is invalid. The message names the file and the field."""


class ImageError(RetinaFaceError):
    """An image cannot be used; the message names the file."""


class OutputError(RetinaFaceError):
    """An output location holds something the command did not write (or cannot be one)."""


class OutputInUseError(OutputError):
    """Another run holds the lock of this output (:func:`retinaface_tf.fileio.output_lock`); the
    message names the holder (pid, start time, command)."""


class CheckpointError(RetinaFaceError):
    """A checkpoint is corrupt, foreign or does not fit the model. The message names the file."""


class WeightsError(RetinaFaceError):
    """Model weights cannot be found or loaded; the message names the file."""


# ---------------------------------------------------------------------- training data
class LabelFileError(RetinaFaceError):
    """A label file cannot be read or has a malformed line (message: ``file:line: reason``)."""


class MissingImagesError(RetinaFaceError):
    """Images named by a label file do not exist under the images folder."""


class BadImagesError(RetinaFaceError):
    """Images named by a label file exist but cannot be trained on (not an image, corrupt, a
    format TensorFlow cannot decode, too many pixels); the message names the label file's line
    and the first such image."""


class DatasetError(RetinaFaceError):
    """The dataset arguments are inconsistent (e.g. no source, or an empty label file)."""


class TFRecordError(RetinaFaceError):
    """Shards cannot be written or none match a pattern."""


class TrainingError(RetinaFaceError):
    """A training run cannot start or stopped (bad output folder, empty data, a NaN loss)."""


# ---------------------------------------------------------------------- inference, export, evaluation
class DetectorError(RetinaFaceError):
    """A bad detector setting or argument (a NaN threshold, a zero resize): one line naming it."""


class ExportError(RetinaFaceError):
    """An export cannot be written (bad settings, missing calibration images, ...)."""


class GroundTruthError(RetinaFaceError):
    """The ground-truth folder or a ``.mat`` file is missing or malformed (message names it)."""


class PredictionError(RetinaFaceError):
    """A prediction file or folder is missing, malformed or names an unknown event / image."""


class TtaError(RetinaFaceError):
    """An invalid test-time augmentation setting (scale, merge)."""


# ---------------------------------------------------------------------- pictures
class PictureError(RetinaFaceError):
    """A picture (PNG, plot) cannot be drawn or written; the message names the file."""


class HistoryError(RetinaFaceError):
    """``history.csv`` is missing, empty or malformed; the message names the file (and line)."""


class ExplainError(RetinaFaceError):
    """The requested face cannot be explained (none detected, index out of range)."""


class AnchorViewError(RetinaFaceError):
    """The image has no usable entry in the label file, or cannot be decoded."""
