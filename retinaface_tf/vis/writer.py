"""The one writer of pictures: every PNG (drawn image or matplotlib figure) goes to a temporary
file beside its target and is renamed into place, so a reader or a kill never sees half a file.
A failure is a one-line :class:`~retinaface_tf.errors.PictureError` naming the file.

Figures are bare matplotlib ``Figure`` objects (:func:`new_figure`), rendered with Agg: pyplot's
global state and GUI backends are never touched. matplotlib is imported only when a figure is
made."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from retinaface_tf.errors import ImageError, PictureError
from retinaface_tf.fileio import encode_image, write_bytes_atomic


def write_picture(path: str | os.PathLike, data: bytes) -> Path:
    """Write encoded picture bytes atomically. Returns the path."""
    try:
        return write_bytes_atomic(path, data)
    except OSError as exc:
        raise PictureError(f"{path}: cannot write: {exc.strerror or exc}") from None


def write_png(path: str | os.PathLike, image_bgr: np.ndarray) -> Path:
    """Encode a BGR uint8 ``[H, W, 3]`` image as PNG and write it atomically. Returns the path."""
    try:
        data = encode_image(image_bgr, ".png")
    except ImageError:
        raise PictureError(f"{path}: cannot encode a PNG of shape {np.shape(image_bgr)}") from None
    return write_picture(path, data)


def new_figure(**kwargs):
    """A matplotlib ``Figure(**kwargs)`` (matplotlib imported here, when a figure is made)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PictureError("matplotlib is not installed (a core dependency): pip install matplotlib") from None
    return Figure(**kwargs)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100, format: str = "png") -> Path:
    """Render a matplotlib figure (as ``format``: ``png``, or ``svg``, ``pdf``, ...) and write it
    atomically. Returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format=format, dpi=dpi)
    return write_picture(path, buf.getvalue())
