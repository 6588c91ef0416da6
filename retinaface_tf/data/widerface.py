"""WIDER FACE annotation readers (plain Python / numpy, run once before training).

Three layouts are read into the same :class:`ImageAnnotation` records:

- the retinaface_gt ``label.txt`` of the reference (:func:`read_retinaface_labels`)::

      # 0--Parade/0_Parade_marchingband_1_849.jpg
      449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 ... 0.82

  a ``# relative/path`` header, then one face per line: top-left ``x y w h`` (pixels), then up to
  five landmark triples ``(x y flag)`` (left eye, right eye, nose, left mouth corner, right mouth
  corner) and a score. Lines of 4 to 20 numbers are accepted; the fields are read at the
  reference's positions (landmark *i* at ``4 + 3i``, ``5 + 3i``), so a line that stops before the
  last landmark's ``y`` (position 18) has no landmarks. As in the reference, a face has landmarks
  iff its first landmark ``x`` is >= 0 (the file writes ``-1`` everywhere when they are absent).
- the official ``wider_face_{train,val}_bbx_gt.txt`` (:func:`read_wider_bbx_gt`): boxes only.
- the official ``wider_face_{train,val}.mat`` (:func:`read_wider_mat`, :func:`wider_mat_events`): boxes only.

Image paths must be relative and stay inside the images folder (no absolute path, no ``..``
leading out of it, no NUL byte): anything else is a :class:`LabelFileError` naming the file and
line, so a label file cannot make training read ``/etc/hostname``. (The check is on the text: a
symlink the user placed inside the images folder is followed.)

Faces with zero or negative width/height are dropped (counted in ``dropped_faces`` and reported
with one :class:`UserWarning` per file): their encoded ``log(w)`` is ``-inf`` and turns the
reference's loss into NaN. A malformed line raises :class:`LabelFileError` naming the file, the
line number and the reason.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.io
import tensorflow as tf

from retinaface_tf.constants import NUM_LANDMARKS
from retinaface_tf.errors import BadImagesError, ImageError, LabelFileError, MissingImagesError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, open_regular_file, probe_image, read_regular_file
from retinaface_tf.ops.faces import Faces

MIN_NUMBERS, MAX_NUMBERS = 4, 20
# Label values are pixel coordinates: beyond this they are damage, and near float32's limit
# (3.4e38) ``x + w`` overflows to inf in the shards. Label and .mat files are read only when they
# are regular files of at most MAX_LABEL_BYTES (the WIDER FACE train labels are 20 MB).
MAX_LABEL_VALUE = 1e9
MAX_LABEL_BYTES = 512 << 20
# Positions of the 10 landmark coordinates in a label.txt line (flags at 6, 9, 12, 15, 18).
_LANDMARK_POSITIONS = (4, 5, 7, 8, 10, 11, 13, 14, 16, 17)


# What tf.io.decode_image (the training pipeline's decoder) reads.
TF_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WebP")


@dataclass(frozen=True)
class ImageAnnotation:
    """The faces of one image.

    - ``path``: image path relative to the images folder, ``/``-separated.
    - ``faces``: :class:`~retinaface_tf.ops.faces.Faces` of numpy arrays, in pixels: ``xyxy``
      boxes (width and height > 0), landmarks (``-1`` where ``has_landmarks`` is False),
      ``has_landmarks``, ``ids`` ``0 .. F - 1`` (the order of the file).
    - ``line``: line of the label file naming the image (0 when the layout has no lines).
    """

    path: str
    faces: Faces
    line: int = 0

    @property
    def num_faces(self) -> int:
        return int(self.faces.boxes.shape[0])


@dataclass
class Annotations:
    """Everything read from one label file."""

    source: str
    images: list[ImageAnnotation] = field(default_factory=list)
    dropped_faces: int = 0  # faces with width or height <= 0
    empty_images: int = 0  # images left without faces (kept unless skip_empty)

    @property
    def num_faces(self) -> int:
        return sum(im.num_faces for im in self.images)

    def __len__(self) -> int:
        return len(self.images)


# ---------------------------------------------------------------------- helpers

def image_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name an image under the images folder, or ``None`` if it can: it must
    be relative, stay inside the folder once ``..`` is resolved, and hold no NUL byte."""
    if "\x00" in path:
        return f"image path {path!r} contains a NUL byte"
    if os.path.isabs(path) or path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        return f"image path {path!r} is absolute; paths must be relative to the images folder"
    norm = posixpath.normpath(path)
    if norm == os.curdir:
        return f"image path {path!r} names no file"
    if norm == os.pardir or norm.startswith(os.pardir + "/"):
        return f"image path {path!r} leads outside the images folder"
    return None


def _checked_path(path: str, where: str) -> str:
    problem = image_path_problem(path)
    if problem:
        raise LabelFileError(f"{where}: {problem}")
    return path


def _annotation(path: str, boxes_xywh: list[list[float]], landmarks: list[list[float] | None],
                line: int = 0) -> ImageAnnotation:
    if boxes_xywh:
        b = np.asarray(boxes_xywh, dtype=np.float64)
        boxes = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:4]], axis=1).astype(np.float32)
    else:
        boxes = np.zeros((0, 4), np.float32)
    lm = np.full((len(landmarks), NUM_LANDMARKS, 2), -1.0, np.float32)
    has = np.zeros((len(landmarks),), bool)
    for i, pts in enumerate(landmarks):
        if pts is not None:
            lm[i] = np.asarray(pts, np.float32).reshape(NUM_LANDMARKS, 2)
            has[i] = True
    return ImageAnnotation(path=path, faces=Faces(boxes, lm, has, np.arange(len(boxes), dtype=np.int32)), line=line)


def _numbers(tokens: Sequence[str], where: str) -> list[float]:
    values = []
    for tok in tokens:
        try:
            v = float(tok)
        except ValueError:
            raise LabelFileError(f"{where}: {tok[:40]!r} is not a number") from None
        if not math.isfinite(v):
            raise LabelFileError(f"{where}: {tok[:40]!r} is not a finite number")
        if abs(v) > MAX_LABEL_VALUE:
            raise LabelFileError(f"{where}: {tok[:40]!r} is out of range (a pixel coordinate within "
                                 f"+-{MAX_LABEL_VALUE:g})")
        values.append(v)
    return values


def _warn_dropped(source: str, dropped: int) -> None:
    if dropped:
        warnings.warn(f"{source}: dropped {dropped} face(s) with zero or negative width/height", UserWarning,
                      stacklevel=3)


def _open_lines(path: str) -> list[str]:
    try:
        raw = read_regular_file(path, max_bytes=MAX_LABEL_BYTES, what="label file", error=LabelFileError)
    except LabelFileError as exc:
        reason = str(exc)[len(path) + 2:] if str(exc).startswith(f"{path}: ") else str(exc)
        raise LabelFileError(f"{path}: cannot read label file: {reason}") from None
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def _finish(result: Annotations, skip_empty: bool) -> Annotations:
    empty = [im for im in result.images if im.num_faces == 0]
    result.empty_images = len(empty)
    if skip_empty and empty:
        result.images = [im for im in result.images if im.num_faces > 0]
    _warn_dropped(result.source, result.dropped_faces)
    return result


# ---------------------------------------------------------------------- readers

def read_retinaface_labels(path: str | os.PathLike, *, skip_empty: bool = True) -> Annotations:
    """Read the reference's retinaface_gt ``label.txt`` (see the module docstring).

    ``skip_empty`` drops images without faces (the reference cannot train on them either).
    """
    path = os.fspath(path)
    result = Annotations(source=path)
    current: str | None = None
    current_line = 0
    boxes: list[list[float]] = []
    marks: list[list[float] | None] = []

    def flush():
        if current is not None:
            result.images.append(_annotation(current, boxes, marks, current_line))

    for lineno, raw in enumerate(_open_lines(path), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        if line.startswith("#"):
            flush()
            current = line[1:].strip()
            if not current:
                raise LabelFileError(f"{where}: '#' header without an image path")
            _checked_path(current, where)
            current_line = lineno
            boxes, marks = [], []
            continue
        if current is None:
            raise LabelFileError(f"{where}: face line before the first '# image/path' header")
        v = _numbers(line.split(), where)
        if not MIN_NUMBERS <= len(v) <= MAX_NUMBERS:
            raise LabelFileError(
                f"{where}: expected {MIN_NUMBERS} to {MAX_NUMBERS} numbers (x y w h, landmarks, score), got {len(v)}")
        if v[2] <= 0 or v[3] <= 0:
            result.dropped_faces += 1
            continue
        boxes.append(v[:4])
        if len(v) > _LANDMARK_POSITIONS[-1] and v[4] >= 0:
            marks.append([v[i] for i in _LANDMARK_POSITIONS])
        else:
            marks.append(None)
    flush()
    return _finish(result, skip_empty)


def read_wider_bbx_gt(path: str | os.PathLike, *, skip_empty: bool = True) -> Annotations:
    """Read the official ``wider_face_*_bbx_gt.txt``: an image path line, a face count line, then
    ``max(count, 1)`` lines ``x y w h blur expression illumination invalid occlusion pose`` (an
    image with 0 faces has one all-zero line). Boxes only."""
    path = os.fspath(path)
    result = Annotations(source=path)
    lines = _open_lines(path)
    i, n = 0, len(lines)
    while i < n:
        name = lines[i].strip()
        i += 1
        if not name:
            continue
        header_line = i
        _checked_path(name, f"{path}:{header_line}")
        if i >= n:
            raise LabelFileError(f"{path}:{header_line}: image {name!r} has no face count line")
        count_text = lines[i].strip()
        try:
            count = int(count_text)
        except ValueError:
            raise LabelFileError(f"{path}:{i + 1}: expected the face count of {name!r}, got {count_text!r}") from None
        if count < 0:
            raise LabelFileError(f"{path}:{i + 1}: negative face count {count}")
        i += 1
        boxes: list[list[float]] = []
        for _ in range(max(count, 1)):
            if i >= n:
                raise LabelFileError(f"{path}:{i}: file ends inside the {count} faces of {name!r}")
            where = f"{path}:{i + 1}"
            v = _numbers(lines[i].split(), where)
            i += 1
            if len(v) < 4:
                raise LabelFileError(f"{where}: expected at least 4 numbers (x y w h ...), got {len(v)}")
            if count == 0:
                continue
            if v[2] <= 0 or v[3] <= 0:
                result.dropped_faces += 1
                continue
            boxes.append(v[:4])
        result.images.append(_annotation(name, boxes, [None] * len(boxes), header_line))
    return _finish(result, skip_empty)


def load_mat(path: str | os.PathLike, *, error: type[Exception] = LabelFileError) -> dict:
    """A MATLAB ``.mat`` file as ``scipy.io.loadmat`` reads it; an unreadable file is ``error``
    naming it."""
    try:
        with open_regular_file(path, ".mat file") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_LABEL_BYTES:
                raise error(f"{path}: {size} bytes, more than a .mat file may hold ({MAX_LABEL_BYTES} bytes)")
            return scipy.io.loadmat(f)
    except ImageError as exc:  # not a regular file, missing
        raise error(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - scipy raises several unrelated types for bad files
        raise error(f"{path}: cannot read .mat file: {exc}") from None


def _mat_strings(cell, path, field: str, error: type[Exception]) -> list[str]:
    try:
        return [str(np.asarray(c[0]).ravel()[0]) for c in cell.ravel()]
    except (IndexError, TypeError) as exc:
        raise error(f"{path}: field {field!r} is not a cell array of strings ({exc})") from None


def wider_mat_events(mat: dict, path, *,
                     error: type[Exception] = LabelFileError) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """``[(event, [(image name, boxes [G, 4] float64 top-left xywh pixels), ...]), ...]`` of an
    official ``wider_face_{train,val}.mat`` (``event_list``, ``file_list``, ``face_bbx_list``,
    each event an ``[images, 1]`` cell), in the file's order, boxes as they are (none dropped).
    Both the label reader (:func:`read_wider_mat`) and the evaluation's ground truth read it so;
    a malformed file is ``error`` naming it."""
    for key in ("event_list", "file_list", "face_bbx_list"):
        if key not in mat:
            raise error(f"{path}: field {key!r} missing (not a WIDER FACE ground-truth .mat)")
    events = _mat_strings(mat["event_list"], path, "event_list", error)
    files, bbxs = mat["file_list"].ravel(), mat["face_bbx_list"].ravel()
    if not len(events) == len(files) == len(bbxs):
        raise error(f"{path}: event_list, file_list and face_bbx_list differ in length")
    out = []
    for event, event_files, event_boxes in zip(events, files, bbxs):
        names = _mat_strings(event_files, path, "file_list", error)
        boxes_cell = event_boxes.ravel()
        if len(boxes_cell) != len(names):
            raise error(f"{path}: event {event!r} has {len(names)} files but {len(boxes_cell)} box lists")
        out.append((event, [(name, np.asarray(b, np.float64).reshape(-1, 4) if np.size(b) else np.zeros((0, 4)))
                            for name, b in zip(names, boxes_cell)]))
    return out


def read_wider_mat(path: str | os.PathLike, *, skip_empty: bool = True) -> Annotations:
    """Read the official ``wider_face_{train,val}.mat`` (:func:`wider_mat_events`). Paths become
    ``event/file.jpg``. Boxes only."""
    path = os.fspath(path)
    result = Annotations(source=path)
    for event, images in wider_mat_events(load_mat(path), path):
        for name, b in images:
            _checked_path(f"{event}/{name}.jpg", f"{path}: file_list of {event!r}")
            ok = (b[:, 2] > 0) & (b[:, 3] > 0)
            result.dropped_faces += int((~ok).sum())
            b = b[ok]
            result.images.append(_annotation(f"{event}/{name}.jpg", b.tolist(), [None] * len(b)))
    return _finish(result, skip_empty)


def read_annotations(path: str | os.PathLike, *, skip_empty: bool = True) -> Annotations:
    """Read any of the three layouts: ``.mat`` by extension; a text file whose first non-empty
    line starts with ``#`` is a retinaface_gt ``label.txt``, otherwise an official ``bbx_gt``."""
    path = os.fspath(path)
    if path.lower().endswith(".mat"):
        return read_wider_mat(path, skip_empty=skip_empty)
    first = next((ln.strip() for ln in _open_lines(path) if ln.strip()), "")
    if first.startswith("#") or not first:
        return read_retinaface_labels(path, skip_empty=skip_empty)
    return read_wider_bbx_gt(path, skip_empty=skip_empty)


def find_missing_images(images: Iterable[ImageAnnotation], images_dir: str | os.PathLike) -> list[str]:
    """Relative paths of the annotated images that are not files under ``images_dir``."""
    root = Path(images_dir)
    return [im.path for im in images if not (root / im.path).is_file()]


def check_images(annotations: Annotations | Sequence[ImageAnnotation], images_dir: str | os.PathLike, *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, decode: bool = True) -> None:
    """Verify every image before training, so a bad one fails at once with its name, not as a
    TensorFlow traceback hours into an epoch. In order:

    - an image path that is absolute or leads outside ``images_dir``: :class:`LabelFileError`;
    - missing images: :class:`MissingImagesError` (count and the first few paths);
    - then each image's header (:func:`retinaface_tf.fileio.probe_image`: a regular file, a format
      ``tf.io.decode_image`` reads (JPEG, PNG, BMP, GIF, WebP), at most ``max_pixels`` pixels
      (default 100 megapixels, ``None``: no limit)) and, with ``decode``, a full decode
      by TensorFlow's own decoder (JPEG at 1/8 scale: every byte is still entropy-decoded, a few
      ms per image): :class:`BadImagesError` naming the label file's line, the first bad image and
      why, and how many are bad.
    """
    images = annotations.images if isinstance(annotations, Annotations) else annotations
    source = annotations.source if isinstance(annotations, Annotations) else None
    prefix = f"{source}: " if source else ""

    def where(im: ImageAnnotation) -> str:
        if source and im.line:
            return f"{source}:{im.line}: "
        return prefix

    for im in images:
        problem = image_path_problem(im.path)
        if problem:
            raise LabelFileError(f"{where(im)}{problem}")
    if not Path(images_dir).is_dir():
        raise MissingImagesError(f"{prefix}images folder {os.fspath(images_dir)} does not exist")
    missing = find_missing_images(images, images_dir)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise MissingImagesError(
            f"{prefix}{len(missing)} of {len(images)} image(s) not found under {os.fspath(images_dir)}: {shown}")
    root = os.fspath(images_dir)
    bad: list[str] = []
    decode_fn = _tf_decoder() if decode else None
    for im in images:
        path = os.path.join(root, *im.path.split("/"))
        try:
            header = probe_image(path, max_pixels=max_pixels)
            if header.format not in TF_FORMATS:
                raise ImageError(f"{path}: {header.format} cannot be decoded by TensorFlow's decode_image; "
                                 f"train on {', '.join(TF_FORMATS)}")
            if decode_fn is not None:
                decode_fn(path, header.format)
        except ImageError as exc:
            bad.append(f"{where(im)}{exc}")
    if bad:
        more = f" ({len(bad)} of {len(images)} images cannot be used; the first is shown)" if len(bad) > 1 else ""
        raise BadImagesError(bad[0] + more)


def _tf_decoder():
    """``decode(path, format)``: decode with the training pipeline's TensorFlow decoder, raising
    :class:`~retinaface_tf.errors.ImageError` (one line, naming ``path``) when it fails."""
    def decode(path: str, fmt: str) -> None:
        try:
            contents = tf.io.read_file(path)
            if fmt == "JPEG":
                tf.io.decode_jpeg(contents, channels=3, ratio=8)
            else:
                tf.io.decode_image(contents, channels=3, expand_animations=False)
        except (tf.errors.OpError, MemoryError) as exc:
            lines = [ln.strip() for ln in str(getattr(exc, "message", exc)).splitlines() if ln.strip()]
            reason = lines[0] if lines else type(exc).__name__
            reason = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", reason)
            raise ImageError(f"{path}: TensorFlow cannot decode this {fmt} ({reason})") from None

    return decode
