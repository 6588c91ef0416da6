"""TFRecord shards of WIDER FACE for datasets that do not fit a folder scan (remote storage,
many workers).

One ``tf.train.Example`` per image:

- ``image/encoded``       bytes: the original file bytes (never re-encoded)
- ``image/filename``      bytes: path relative to the images folder
- ``image/height``, ``image/width``  int64
- ``face/bbox``           float list ``F * 4``: pixel ``xyxy``
- ``face/landmarks``      float list ``F * 10``: pixel ``x0 y0 ... x4 y4`` (-1 when absent)
- ``face/has_landmarks``  int64 list ``F``: 1 / 0

:func:`read_tfrecords` yields ``(image bytes, faces)`` with the faces as
:class:`~retinaface_tf.ops.faces.Faces` in pixels (``ids`` ``0 .. F - 1``) — the element
:func:`retinaface_tf.data.pipeline.build_dataset` maps — reading the shards with
``interleave`` (parallel, optionally sharded per worker by file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from retinaface_tf.data.widerface import MAX_LABEL_VALUE, TF_FORMATS, Annotations, ImageAnnotation, check_images
from retinaface_tf.constants import NUM_LANDMARKS
from retinaface_tf.errors import ImageError, TFRecordError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, open_regular_file, probe_image_bytes
from retinaface_tf.ops.faces import Faces

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "face/bbox": tf.io.VarLenFeature(tf.float32),
    "face/landmarks": tf.io.VarLenFeature(tf.float32),
    "face/has_landmarks": tf.io.VarLenFeature(tf.int64),
}


def _example(image: ImageAnnotation, data: bytes) -> tf.train.Example:
    height, width = (0, 0)
    try:
        shape = tf.io.extract_jpeg_shape(data).numpy() if data[:3] == b"\xff\xd8\xff" else None
        if shape is not None:
            height, width = int(shape[0]), int(shape[1])
    except tf.errors.InvalidArgumentError:
        pass

    def floats(a):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(a, np.float32).reshape(-1)))

    def ints(a):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in np.asarray(a).reshape(-1)]))

    def byts(b):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": byts(data),
        "image/filename": byts(image.path.encode("utf-8")),
        "image/height": ints([height]),
        "image/width": ints([width]),
        "face/bbox": floats(image.faces.boxes),
        "face/landmarks": floats(image.faces.landmarks),
        "face/has_landmarks": ints(image.faces.has_landmarks.astype(np.int64)),
    }))


def write_tfrecords(annotations: Annotations | Sequence[ImageAnnotation], images_dir: str | os.PathLike,
                    output_prefix: str | os.PathLike, *, num_shards: int = 8) -> list[str]:
    """Write ``{output_prefix}-00000-of-0000N.tfrecord`` shards (images dealt round-robin) and
    return their paths. Missing images raise before anything is written."""
    images = annotations.images if isinstance(annotations, Annotations) else list(annotations)
    if num_shards < 1:
        raise TFRecordError(f"num_shards must be >= 1, got {num_shards}")
    check_images(annotations if isinstance(annotations, Annotations) else images, images_dir)
    prefix = os.fspath(output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    paths = [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for i, image in enumerate(images):
            data = (Path(images_dir) / image.path).read_bytes()
            writers[i % num_shards].write(_example(image, data).SerializeToString())
    finally:
        for w in writers:
            w.close()
    return paths


def _record_problem(record: bytes, label: str, max_pixels: int | None, decode: bool) -> str | None:
    """What is wrong with one serialized record (``None``: nothing): what :func:`parse_example`
    and the training pipeline's decoder would fail on, as one line."""
    try:
        feature = tf.train.Example.FromString(record).features.feature
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        return f"not a tf.train.Example ({type(exc).__name__})"

    def values(key: str, kind: str):
        if key not in feature:
            return []
        f = feature[key]
        if f.WhichOneof("kind") not in (None, kind):
            raise ValueError(f"{key} is a {f.WhichOneof('kind')}, expected a {kind}")
        return getattr(f, kind).value

    try:
        encoded = values("image/encoded", "bytes_list")
        if len(encoded) != 1:
            return f"image/encoded holds {len(encoded)} values, expected one image"
        boxes = np.asarray(values("face/bbox", "float_list"), np.float64)
        landmarks = np.asarray(values("face/landmarks", "float_list"), np.float64)
        has = values("face/has_landmarks", "int64_list")
    except ValueError as exc:
        return str(exc)
    if len(boxes) % 4:
        return f"face/bbox holds {len(boxes)} values, not a multiple of 4 (x1 y1 x2 y2 per face)"
    faces = len(boxes) // 4
    if len(landmarks) != faces * 2 * NUM_LANDMARKS or len(has) != faces:
        return (f"{faces} faces but {len(landmarks)} face/landmarks values (expected {faces * 2 * NUM_LANDMARKS}) "
                f"and {len(has)} face/has_landmarks (expected {faces})")
    for key, array in (("face/bbox", boxes), ("face/landmarks", landmarks)):
        if not np.isfinite(array).all() or (np.abs(array) > MAX_LABEL_VALUE).any():
            return f"{key} holds a value that is not finite or out of range (+-{MAX_LABEL_VALUE:g})"
    try:
        header = probe_image_bytes(encoded[0], label, max_pixels=max_pixels)
        if header.format not in TF_FORMATS:
            return f"image/encoded is a {header.format}, which TensorFlow's decode_image cannot read"
        if decode:
            if header.format == "JPEG":
                tf.io.decode_jpeg(encoded[0], channels=3, ratio=8)
            else:
                tf.io.decode_image(encoded[0], channels=3, expand_animations=False)
    except ImageError as exc:
        return f"image/encoded: {str(exc)[len(label) + 2:]}"
    except (tf.errors.OpError, MemoryError) as exc:
        return f"image/encoded: TensorFlow cannot decode this {header.format} ({_tf_reason(exc)})"
    return None


def check_tfrecords(file_pattern: str | Sequence[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    decode: bool = True) -> int:
    """Read every record of every shard matching ``file_pattern`` before training, so a bad one
    fails at once with one line naming the shard and the record (and its image/filename), not as
    a TensorFlow traceback in the first step: a shard that is not a regular file, truncated or
    damaged (CRC), a record that is not an Example, face lists of inconsistent lengths, values not
    finite, an image that is not a JPEG/PNG/BMP/GIF/WebP, larger than ``max_pixels`` or (with
    ``decode``, 1/8 scale for JPEG as for label files) not decodable. Returns the number of
    records; :class:`TFRecordError` when none."""
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern)
    patterns = [os.fspath(p) for p in patterns]
    shards = sorted(tf.io.gfile.glob(patterns))
    if not shards:
        raise TFRecordError(f"no TFRecord files match {', '.join(patterns)}")
    total = 0
    for shard in shards:
        if "://" not in shard:  # a local shard: only a regular file (a FIFO would hang)
            try:
                with open_regular_file(shard, "TFRecord shard"):
                    pass
            except ImageError as exc:
                raise TFRecordError(str(exc)) from None
        index = 0
        try:
            for index, record in enumerate(tf.data.TFRecordDataset(shard).as_numpy_iterator()):
                label = f"{shard}: record {index}"
                problem = _record_problem(record, label, max_pixels, decode)
                if problem:
                    name = _filename(record)
                    raise TFRecordError(f"{label}{f' ({name})' if name else ''}: {problem}")
                index += 1
        except tf.errors.OpError as exc:
            raise TFRecordError(f"{shard}: record {index}: cannot be read, the shard is truncated or damaged "
                                f"({_tf_reason(exc)})") from None
        total += index
    if not total:
        raise TFRecordError(f"{', '.join(patterns)}: the shards hold no record")
    return total


def _tf_reason(exc: BaseException) -> str:
    """The first line of a TensorFlow error without its ``{{function_node ...}}`` prefix, cut."""
    lines = [ln.strip() for ln in str(getattr(exc, "message", exc)).splitlines() if ln.strip()]
    reason = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[0] if lines else type(exc).__name__)
    return reason[:200]


def _filename(record: bytes) -> str:
    try:
        value = tf.train.Example.FromString(record).features.feature["image/filename"].bytes_list.value
        return value[0].decode("utf-8", "backslashreplace")[:200] if value else ""
    except Exception:  # noqa: BLE001
        return ""


def parse_example(serialized):
    """One serialized example → ``(image bytes, Faces)`` in pixels, as the label file had them."""
    ex = tf.io.parse_single_example(serialized, _FEATURES)
    boxes = tf.reshape(tf.sparse.to_dense(ex["face/bbox"]), [-1, 4])
    landmarks = tf.reshape(tf.sparse.to_dense(ex["face/landmarks"]), [-1, NUM_LANDMARKS, 2])
    has_landmarks = tf.sparse.to_dense(ex["face/has_landmarks"]) > 0
    return ex["image/encoded"], Faces(boxes, landmarks, has_landmarks, tf.range(tf.shape(boxes)[0]))


def read_tfrecords(file_pattern: str | Sequence[str], *, shuffle_files: bool = True, seed: int | None = None,
                   cycle_length: int | None = None, num_parallel_calls: int = tf.data.AUTOTUNE,
                   deterministic: bool | None = None,
                   input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Dataset of ``(image bytes, Faces)`` from shards matching ``file_pattern`` (a glob
    or a list of paths). Files are listed (shuffled when ``shuffle_files``), sharded by
    ``input_context`` when several input pipelines share them, then read ``cycle_length`` at a
    time with a parallel ``interleave``."""
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern)
    patterns = [os.fspath(p) for p in patterns]
    if not tf.io.gfile.glob(patterns):
        raise TFRecordError(f"no TFRecord files match {', '.join(patterns)}")
    files = tf.data.Dataset.list_files(patterns, shuffle=shuffle_files, seed=seed)
    if input_context is not None and input_context.num_input_pipelines > 1:
        files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle_length, num_parallel_calls=num_parallel_calls,
                          deterministic=deterministic)
    return ds.map(parse_example, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
