"""The one error base class: every user-facing error (bad file, bad config, bad checkpoint) is
a ``RetinaFaceError`` whose message is one line naming the file and the line or field. The CLI
prints it and exits non-zero."""


class RetinaFaceError(ValueError):
    pass


class UsageError(RetinaFaceError):
    """A command-line usage error found by a command (a bad flag or flag combination): printed
    as one line, exit code 2."""
