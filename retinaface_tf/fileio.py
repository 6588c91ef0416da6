"""File helpers: image reading with one-line errors, atomic directory/file writes, bundled assets."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from retinaface_tf.errors import RetinaFaceError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pbm")


class ImageError(RetinaFaceError):
    """An image cannot be used; the message names the file."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image file as a BGR uint8 ``[H, W, 3]`` array.

    Grayscale is replicated to 3 channels, BGRA drops alpha, 16-bit and float images are scaled
    to 8 bits. Raises :class:`ImageError` naming the file when it is missing, unreadable, not an
    image, or has no pixels.
    """
    import cv2

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{path}: not a readable image (corrupt or unsupported format)")
    try:
        return to_bgr_uint8(image)
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from None


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an ``[H, W]`` / ``[H, W, 1|3|4]`` array of uint8/uint16/float to BGR uint8."""
    import cv2

    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0 or min(image.shape[:2]) == 0:
        raise ValueError(f"zero-sized or malformed image of shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype.kind == "f":
        finite_max = float(np.nanmax(image)) if image.size else 0.0
        scale = 255.0 if finite_max <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 1:
        image = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] != 3:
        raise ValueError(f"unsupported number of channels {image.shape[2]}")
    return np.ascontiguousarray(image)


def list_images(paths) -> list[str]:
    """Expand files and folders (recursively, sorted) into image paths. Files are kept as
    given even with an unknown extension, so a non-image file gets its own clear error later."""
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, _, files in sorted(os.walk(p)):
                out.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            out.append(p)
    return out


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, *, suffix: str = ".tmp"):
    """Yield a temporary path in ``target``'s folder (ending in ``suffix``, for writers that
    choose the format by extension: ``.weights.h5``, ``.jpg``); on success it replaces
    ``target`` in one rename, so a reader or a kill never sees a half-written file. On error
    the temporary file is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; the result is an ordinary file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


class OutputError(RetinaFaceError):
    """An output location holds something the command did not write (or cannot be one)."""


# files a model folder may hold beside what a command writes; they are carried into the new folder
COMPANION_FILES = ("README*", "LICENSE*")


def check_output_folder(target: str | os.PathLike, *, owned: Iterable[str],
                        companions: Iterable[str] = COMPANION_FILES) -> None:
    """Refuse, before any work, to replace ``target`` unless it is absent, an empty folder, or a
    folder holding only entries named in ``owned`` (what the command itself writes) and regular
    files matching ``companions`` (a README, a licence: carried over by :func:`atomic_directory`).
    A file, the current folder (or one that contains it) and a folder holding anything else are a
    one-line :class:`OutputError` naming the first foreign entry; nothing is touched."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise OutputError(f"{target}: exists and is not a folder; give a new or empty folder")
    resolved, cwd = target.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"{target}: is the current folder (or contains it); give a new or empty folder")
    owned, companions = set(owned), tuple(companions)
    for item in sorted(target.iterdir()):
        if item.name in owned:
            continue
        if item.is_file() and not item.is_symlink() and any(fnmatch.fnmatch(item.name, c) for c in companions):
            continue
        raise OutputError(f"{target}: holds {item.name!r}, which this command did not write; "
                          "give a new or empty folder (nothing was changed)")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, owned: Iterable[str] | None = None,
                     companions: Iterable[str] = COMPANION_FILES):
    """Yield a temporary directory next to ``target``; on success it replaces ``target`` in one
    rename (an existing target is moved aside first and removed after). On error the temporary
    directory is removed and ``target`` is left exactly as it was.

    An existing ``target`` is first checked by :func:`check_output_folder`: with ``owned`` (the
    names the new content may replace) it may hold only those and ``companions`` files, which are
    copied into the new folder before the swap; without ``owned`` it must be empty. So a swap never
    drops anything the command did not write."""
    target = Path(target)
    check_output_folder(target, owned=owned or (), companions=companions if owned is not None else ())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        check_output_folder(target, owned=owned or (), companions=companions if owned is not None else ())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.is_dir():
        for item in target.iterdir():  # only owned names and companion files are left (checked above)
            if item.name not in (owned or ()) and not (tmp / item.name).exists():
                shutil.copy2(item, tmp / item.name)
    os.chmod(tmp, _file_mode() | 0o111)  # mkdtemp makes 0700; a model folder should be readable like any other
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True) if backup.is_dir() else backup.unlink()


def bundled_model_dir() -> Path:
    """Folder of the bundled default model (converted official mobilenet0.25 weights)."""
    source_tree = Path(__file__).resolve().parents[1] / "saved_models" / "mobilenet025"
    if source_tree.is_dir():  # a checkout (editable install or run from source)
        return source_tree
    from importlib.resources import files

    return Path(str(files("retinaface_tf.saved_models") / "mobilenet025"))


def bundled_image() -> Path:
    """The reference's MIT-licensed demo photo, bundled for the README's first command."""
    from importlib.resources import files

    return Path(str(files("retinaface_tf.assets") / "biubug6_test.jpg"))
