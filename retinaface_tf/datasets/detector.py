"""``FaceDetector``: the callable class ``ray.data.Dataset.map_batches`` runs, one
:class:`~retinaface_tf.inference.Detector` per actor.

A batch holds encoded image files in a ``bytes`` column (``ray.data.read_binary_files``) or decoded
pixels in an ``image`` column (``ray.data.read_images``, RGB), optionally a ``path`` column that
names each row in its error. The result is the batch (without the pixel column) with the face
columns of :data:`FACE_COLUMNS` added, as a ``pyarrow.Table`` with plain nested-list types that any
Parquet reader understands. A row that cannot be used (not an image, corrupt, over ``max_pixels``)
gets ``error`` set and null face columns; the other rows go on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import cv2
import numpy as np
import tensorflow as tf

from retinaface_tf.errors import DetectorError, ImageError, RetinaFaceError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, decode_image, encode_image, read_ahead, to_bgr_uint8
from retinaface_tf.inference import Detector

# the columns FaceDetector adds (face columns null where ``error`` is set)
FACE_COLUMNS = ("width", "height", "boxes", "scores", "landmarks", "error")
CROP_COLUMNS = ("crops", "crop_matrices", "crop_from_landmarks")
PIXEL_COLUMNS = ("bytes", "image")
CHANNEL_ORDERS = ("rgb", "bgr")


def _pa():
    import pyarrow  # the ray extra brings it; lazy so the package imports without it
    return pyarrow


def face_schema_fields():
    """``[(name, pyarrow type)]`` of the face columns (see docs/datasets.md)."""
    pa = _pa()
    return [("width", pa.int32()), ("height", pa.int32()),
            ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
            ("scores", pa.list_(pa.float32())),
            ("landmarks", pa.list_(pa.list_(pa.list_(pa.float32(), 2), 5))),
            ("error", pa.string())]


def crop_schema():
    """The schema of the ``crops/`` table: one row per face."""
    pa = _pa()
    return pa.schema([("path", pa.string()), ("face", pa.int32()), ("score", pa.float32()),
                      ("crop", pa.binary()), ("matrix", pa.list_(pa.list_(pa.float64(), 3), 2)),
                      ("from_landmarks", pa.bool_())])


def _nested(rows: list, inner: tuple[int, ...], dtype, value_type):
    """Per-row arrays ``[K, *inner]`` (``None`` for a null row) → a list array of fixed-size lists."""
    pa = _pa()
    counts = np.array([0 if r is None else len(r) for r in rows], np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = np.concatenate([np.asarray(r, dtype).reshape(-1) for r in rows if r is not None] + [np.zeros(0, dtype)])
    values = pa.array(flat, type=value_type)
    for n in reversed(inner):
        values = pa.FixedSizeListArray.from_arrays(values, n)
    mask = pa.array([r is None for r in rows], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, mask=mask)


def _columns(batch) -> dict:
    """A batch in any of Ray Data's formats → ``{name: column}`` (numpy arrays or lists)."""
    pa = _pa()
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, pa.Table):
        return batch.to_pydict()
    if hasattr(batch, "columns") and hasattr(batch, "to_dict"):  # pandas
        return {c: batch[c].to_numpy() for c in batch.columns}
    raise DetectorError(f"FaceDetector: a batch must be a dict of columns, a pyarrow Table or a pandas DataFrame, "
                        f"got {type(batch).__name__}")


def _passthrough(column):
    """An input column kept in the output, as an Arrow array."""
    pa = _pa()
    array = column if not isinstance(column, np.ndarray) or column.ndim == 1 else list(column)
    try:
        return pa.array(array)
    except (pa.ArrowException, TypeError, ValueError):
        return pa.array([x.tolist() if isinstance(x, np.ndarray) else x for x in array])


def _label(paths, i: int) -> str:
    if paths is None:
        return f"row {i}"
    value = paths[i]
    return os.fsdecode(value) if isinstance(value, (str, bytes)) else str(value)


class FaceDetector:
    """Faces of every image of a Ray Data batch; use it as
    ``ds.map_batches(FaceDetector, fn_constructor_kwargs={...}, concurrency=N, batch_size=16)``.

    Args:
      weights, config, score_threshold, max_size, max_pixels, runtime, batch_size: the
        :class:`~retinaface_tf.inference.Detector`'s (``batch_size``: images per network run).
      crop_size: also add aligned face crops (``(width, height)`` or ``112``): ``crops`` (PNG
        bytes per face), ``crop_matrices`` ([K, 2, 3] image → crop) and ``crop_from_landmarks``.
      threads: TensorFlow threads of this process (set before TensorFlow starts; ignored when it
        already runs) and the LiteRT / ONNX Runtime threads. ``None``: each runtime's default.
      channel_order: of an ``image`` column: ``"rgb"`` (what ``read_images`` gives) or ``"bgr"``.
      keep_pixels: keep the ``bytes`` / ``image`` column in the output (default: dropped).

    The detections of a ``bytes`` row are those of in-process ``Detector.detect`` on that file:
    the same decoder (:func:`retinaface_tf.fileio.decode_image`) and network.
    """

    def __init__(self, weights=None, config=None, *, score_threshold: float = 0.5, max_size: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, runtime: str = "auto", batch_size: int = 8,
                 crop_size=None, threads: int | None = None, channel_order: str = "rgb",
                 keep_pixels: bool = False):
        if channel_order not in CHANNEL_ORDERS:
            raise DetectorError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(int(threads))
                tf.config.threading.set_inter_op_parallelism_threads(int(threads))
            except RuntimeError:  # TensorFlow already started in this process: its threads stay
                pass
        self.detector = Detector(weights, config, score_threshold=score_threshold, max_size=max_size,
                                 max_pixels=max_pixels, runtime=runtime, batch_size=batch_size, threads=threads)
        self.max_pixels = self.detector.max_pixels
        self.crop_size = None if crop_size is None else (
            (int(crop_size), int(crop_size)) if np.isscalar(crop_size) else (int(crop_size[0]), int(crop_size[1])))
        self.channel_order = channel_order
        self.keep_pixels = bool(keep_pixels)

    # ------------------------------------------------------------------ decoding
    def _image(self, value, label: str, encoded: bool) -> np.ndarray:
        if encoded:
            if value is None:
                raise ImageError(f"{label}: no bytes")
            return decode_image(bytes(value), label, max_pixels=self.max_pixels)
        if value is None:
            raise ImageError(f"{label}: no image")
        image = np.asarray(value)
        if image.ndim >= 2 and self.max_pixels is not None and image.shape[0] * image.shape[1] > self.max_pixels:
            raise ImageError(f"{label}: {image.shape[1]}x{image.shape[0]} = {image.shape[0] * image.shape[1] / 1e6:.4g} "
                             f"megapixels, over the limit of {self.max_pixels / 1e6:g} megapixels "
                             "(raise it with --max-pixels)")
        if self.channel_order == "rgb" and image.ndim == 3 and image.shape[2] in (3, 4):
            image = image[..., [2, 1, 0] + ([3] if image.shape[2] == 4 else [])]
        try:
            return to_bgr_uint8(image)
        except (ValueError, TypeError) as exc:
            raise ImageError(f"{label}: {exc}") from None

    def _images(self, columns: dict, n: int, into: list):
        """Each row's BGR image, or the :class:`RetinaFaceError` that refuses it, in row order,
        decoded ahead on reader threads (:func:`~retinaface_tf.fileio.read_ahead`) while the rows
        before are detected; each also stored in ``into``."""
        encoded = "bytes" in columns
        if not encoded and "image" not in columns:
            raise DetectorError("FaceDetector: the batch has neither a 'bytes' column (read_binary_files) nor an "
                                f"'image' column (read_images); its columns: {', '.join(map(str, columns))}")
        pixels = columns["bytes" if encoded else "image"]
        paths = columns.get("path")
        errors = columns.get("error")

        def read(i):
            label = _label(paths, i)
            if errors is not None and errors[i] is not None:  # refused upstream (e.g. unreadable file)
                return ImageError(str(errors[i]))
            try:
                return self._image(pixels[i], label, encoded)
            except RetinaFaceError as exc:
                return exc
            except (ValueError, TypeError, MemoryError, cv2.error) as exc:
                return ImageError(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

        def decoded():
            for i, image in read_ahead(range(n), read):
                into[i] = image
                yield image
        return decoded()  # the columns are checked now, the images decoded as they are asked for

    # ------------------------------------------------------------------ the call
    def __call__(self, batch):
        pa = _pa()
        columns = _columns(batch)
        n = len(next(iter(columns.values()))) if columns else 0
        images: list = [None] * n
        results: list = [None] * n
        for i, result in self.detector.iter_detect(self._images(columns, n, images)):
            results[i] = result
        width, height, boxes, scores, landmarks, error = ([] for _ in range(6))
        crops, matrices, from_landmarks = [], [], []
        for image, result in zip(images, results):
            ok = not isinstance(result, Exception)
            width.append(image.shape[1] if ok else None)
            height.append(image.shape[0] if ok else None)
            boxes.append(result.boxes if ok else None)
            scores.append(result.scores if ok else None)
            landmarks.append(result.landmarks if ok else None)
            error.append(None if ok else " ".join(str(result).split()))  # one line
            if self.crop_size is not None:
                if ok:
                    aligned = result.align(image, size=self.crop_size)
                    crops.append([encode_image(c, ".png") for c in aligned.crops])
                    matrices.append(aligned.matrices)
                    from_landmarks.append(aligned.from_landmarks.tolist())
                else:
                    crops.append(None)
                    matrices.append(None)
                    from_landmarks.append(None)
        out = {name: _passthrough(col) for name, col in columns.items()
               if name not in FACE_COLUMNS and name not in CROP_COLUMNS
               and (self.keep_pixels or name not in PIXEL_COLUMNS)}
        types = dict(face_schema_fields())
        out["width"] = pa.array(width, types["width"])
        out["height"] = pa.array(height, types["height"])
        out["boxes"] = _nested(boxes, (4,), np.float32, pa.float32())
        out["scores"] = pa.array([None if s is None else np.asarray(s, np.float32) for s in scores], types["scores"])
        out["landmarks"] = _nested(landmarks, (5, 2), np.float32, pa.float32())
        out["error"] = pa.array(error, pa.string())
        if self.crop_size is not None:
            out["crops"] = pa.array(crops, pa.list_(pa.binary()))
            out["crop_matrices"] = _nested(matrices, (2, 3), np.float64, pa.float64())
            out["crop_from_landmarks"] = pa.array(from_landmarks, pa.list_(pa.bool_()))
        return pa.table(out)


def crop_rows(table):
    """The ``crops/`` table of a :class:`FaceDetector` output made with ``crop_size``: one row per face."""
    pa = _pa()
    paths = table.column("path").to_pylist() if "path" in table.column_names else [
        f"row {i}" for i in range(table.num_rows)]
    crops = table.column("crops").to_pylist()
    scores = table.column("scores").to_pylist()
    matrices = table.column("crop_matrices").to_pylist()
    from_landmarks = table.column("crop_from_landmarks").to_pylist()
    rows = {name: [] for name in crop_schema().names}
    for path, row_crops, row_scores, row_matrices, row_from in zip(paths, crops, scores, matrices, from_landmarks):
        for k, crop in enumerate(row_crops or []):
            rows["path"].append(path)
            rows["face"].append(k)
            rows["score"].append(row_scores[k])
            rows["crop"].append(crop)
            rows["matrix"].append(row_matrices[k])
            rows["from_landmarks"].append(row_from[k])
    return pa.Table.from_pydict(rows, schema=crop_schema())
