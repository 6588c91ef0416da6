"""``build_dataset``: WIDER FACE → ``(images, targets, masks)`` batches ready for ``model.fit``.

Per image, in one parallel ``tf.data`` map of TF ops: read the file (or take the TFRecord
bytes) → :func:`retinaface_tf.data.augment.augment` (or ``pad_and_resize`` when not training) →
:func:`retinaface_tf.ops.matcher.match_anchors` against the anchors of the training size →
:func:`retinaface_tf.ops.targets.pack_targets`. Then batch (fixed shapes) and prefetch. Faces
travel as :class:`~retinaface_tf.ops.faces.Faces` from the label file to the matcher.

Element (batched, ``S = data.image_size``, ``N = num_anchors(S, S)``)::

    images   [B, S, S, 3] float32  BGR minus the mean: the model's input
    targets  {"bbox": [B, N, 4], "classes": [B, N] int32, "landmarks": [B, N, 10]}
    masks    {"bbox": [B, N], "classes": [B, N], "landmarks": [B, N]} float32 1 / 0  (ops/targets.py)

Keras passes each mask to its output's loss as ``sample_weight``.

Randomness: every image gets a stateless seed from ``tf.data.Dataset.random(seed,
rerandomize_each_iteration=True)``, so with ``seed`` set the whole stream (shuffle order and
augmentation) is reproducible, while each epoch (each new iterator) draws new augmentations.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from retinaface_tf.config import AnchorConfig, DataConfig, LossConfig
from retinaface_tf.data import augment as aug
from retinaface_tf.data.tfrecord import read_tfrecords
from retinaface_tf.data.widerface import Annotations, ImageAnnotation, check_images, read_annotations
from retinaface_tf.errors import DatasetError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS
from retinaface_tf.ops.anchors import generate_anchors_np
from retinaface_tf.ops.faces import Faces
from retinaface_tf.ops.matcher import match_anchors, match_anchors_bucketed
from retinaface_tf.ops.targets import pack_targets

AUTOTUNE = tf.data.AUTOTUNE


def faces_ragged(images: Sequence[ImageAnnotation]) -> Faces:
    """The pixel faces of many images as :class:`Faces` of ragged ``[num_images, (F), ...]``
    tensors (``Dataset.from_tensor_slices`` slices them back into each image's faces)."""
    lengths = np.asarray([im.num_faces for im in images], np.int64)
    fields = zip(*([im.faces for im in images] or [Faces.empty()]))
    return Faces(*(tf.RaggedTensor.from_row_lengths(np.concatenate(field, axis=0), lengths) for field in fields))


def encode_faces(faces: Faces, anchors, *, match_threshold: float = LossConfig.match_threshold,
                 force_match_min_iou: float = LossConfig.force_match_min_iou, variances=AnchorConfig.variances,
                 jit_compile: bool = True) -> tuple[dict, dict]:
    """Relative faces of one image → its ``(targets, masks)`` (``[N, 4]``, ``[N]``, ``[N, 10]``;
    ``[N]`` masks). ``jit_compile`` uses the XLA-compiled, face-count-bucketed matcher (same
    results)."""
    match = (match_anchors_bucketed if jit_compile else match_anchors)(
        faces, anchors, match_threshold=match_threshold, force_match_min_iou=force_match_min_iou, variances=variances)
    return pack_targets(match.box_deltas, match.labels, match.landmark_deltas)


def _known_image_format(contents):
    """Scalar bool: the bytes start like a format ``tf.io.decode_image`` reads."""
    head = tf.strings.join([tf.strings.substr(contents, 0, 12), b"\0" * 12])  # short files: no out-of-range

    def at(pos, length):
        return tf.strings.substr(head, pos, length)

    return tf.reduce_any(tf.stack([
        tf.equal(at(0, 3), b"\xff\xd8\xff"), tf.equal(at(0, 4), b"\x89PNG"), tf.equal(at(0, 2), b"BM"),
        tf.equal(at(0, 3), b"GIF"), tf.logical_and(tf.equal(at(0, 4), b"RIFF"), tf.equal(at(8, 4), b"WEBP"))]))


def _files_dataset(images: Sequence[ImageAnnotation], images_dir) -> tf.data.Dataset:
    root = os.fspath(images_dir)
    paths = [os.path.join(root, *im.path.split("/")) for im in images]
    return tf.data.Dataset.from_tensor_slices((tf.constant(paths), faces_ragged(images)))


def _annotated_images(label_file, images_dir, annotations, *, skip_empty: bool, verify_images: bool,
                      max_pixels) -> list[ImageAnnotation]:
    """The images of a label file (or of ``annotations``), checked (:func:`check_images`)."""
    if images_dir is None:
        raise DatasetError("build_dataset: images_dir is required with label_file / annotations")
    if label_file is not None:
        annotations = read_annotations(label_file, skip_empty=skip_empty)
    images = annotations.images if isinstance(annotations, Annotations) else list(annotations)
    if not images:
        where = f"{os.fspath(label_file)}: " if label_file is not None else ""
        dropped = getattr(annotations, "dropped_faces", 0)
        why = f" ({dropped} face(s) with zero or negative width/height dropped)" if dropped else ""
        raise DatasetError(f"{where}no images with faces to train on{why}")
    if verify_images:
        check_images(annotations if isinstance(annotations, Annotations) else images, images_dir,
                     max_pixels=max_pixels)
    return images


def _example_fn(*, encoded: bool, training: bool, data: DataConfig, anchors: AnchorConfig, loss: LossConfig,
                return_faces: bool, jit_compile: bool):
    """The per-image map: ``((path or bytes, pixel faces), seed)`` → ``(image, targets, masks)``."""
    size = data.image_size
    anchor_boxes = tf.constant(generate_anchors_np(size, size, anchors.min_sizes, anchors.steps))

    def example(item, element_seed):
        source, faces = item
        faces = faces.to_tensors().with_shape(None)
        if encoded:
            contents = source
        else:
            contents = tf.io.read_file(source)
            # a file changed since check_images: fail naming it, not as an anonymous decode error
            with tf.control_dependencies([tf.debugging.Assert(
                    _known_image_format(contents), ["not a JPEG, PNG, BMP, GIF or WebP image file:", source])]):
                contents = tf.identity(contents)
        if training:
            image, faces = aug.augment(contents, faces, element_seed, image_size=size, bgr_mean=data.bgr_mean,
                                       crop_scales=data.crop_scales, crop_candidates=data.crop_candidates,
                                       mirror_probability=data.mirror_probability, jit_compile=jit_compile)
        else:
            image, faces = aug.pad_and_resize(contents, faces, image_size=size, bgr_mean=data.bgr_mean)
        targets, masks = encode_faces(faces, anchor_boxes, match_threshold=loss.match_threshold,
                                      force_match_min_iou=loss.force_match_min_iou, variances=anchors.variances,
                                      jit_compile=jit_compile)
        if return_faces:
            targets["faces"] = faces
        return image, targets, masks

    return example


def shuffle_buffer(ds: tf.data.Dataset, configured: int, *, files: bool) -> int:
    """A label file's elements are (file name, faces), not pixels: shuffle all of them, a full
    permutation every pass as the reference's DataLoader(shuffle=True) draws; TFRecord elements
    hold image bytes, so they keep the configured ``data.shuffle_buffer``."""
    count = int(ds.cardinality())
    return max(int(configured), count) if files and count > 0 else int(configured)


def build_dataset(label_file: str | os.PathLike | None = None, images_dir: str | os.PathLike | None = None, *,
                  annotations: Annotations | Sequence[ImageAnnotation] | None = None,
                  tfrecord_pattern: str | Sequence[str] | None = None,
                  data: DataConfig = DataConfig(), anchors: AnchorConfig = AnchorConfig(), loss: LossConfig = LossConfig(),
                  batch_size: int | None = 32, training: bool = True, shuffle: bool | None = None,
                  seed: int | None = None, repeat: bool = False, drop_remainder: bool | None = None,
                  num_parallel_calls: int = AUTOTUNE, prefetch: int = AUTOTUNE, deterministic: bool | None = None,
                  skip_empty: bool = True, verify_images: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  return_faces: bool = False, jit_compile: bool = True,
                  input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The training (or validation) ``tf.data.Dataset`` of ``(images, targets, masks)``.

    Source, exactly one of:
      label_file + images_dir: any layout :func:`read_annotations` reads; image paths are relative
        to ``images_dir``. With ``verify_images`` every image is checked before anything runs
        (:func:`retinaface_tf.data.widerface.check_images`: missing, not an image, corrupt, over
        ``max_pixels`` pixels → one error naming the label file's line and the image).
      annotations + images_dir: already-read :class:`Annotations` / records.
      tfrecord_pattern: shards written by :func:`retinaface_tf.data.tfrecord.write_tfrecords`,
        read with ``interleave`` (and sharded per worker when ``input_context`` is given).

    Args:
      data, anchors, loss: the config's sections: training size ``S`` (a multiple of 8, e.g. 640
        or cfg_re50's 840), augmentation, mean and shuffle buffer; the anchor layout and
        variances; the matcher's thresholds (:func:`dataset_kwargs` takes them from a config).
      batch_size: images per batch; ``None`` leaves the dataset unbatched.
      training: True: the reference's augmentation; False: pad to square + bilinear resize only.
      shuffle: default ``training``; a label file's images are fully permuted every pass (at least
        ``data.shuffle_buffer``); TFRecords use a buffer of ``data.shuffle_buffer`` records.
      seed: makes shuffle order and augmentation reproducible (and the map deterministic unless
        ``deterministic`` says otherwise).
      repeat: repeat forever (then ``model.fit`` needs ``steps_per_epoch``).
      drop_remainder: default ``training``; fixed batch shapes also need it for XLA.
      num_parallel_calls, prefetch: ``tf.data`` parallelism (AUTOTUNE by default).
      jit_compile: run the per-pixel steps and the matcher through XLA (same results, about half
        the CPU per image); False for platforms without XLA.
      return_faces: add ``targets["faces"]``, the image's :class:`Faces` after augmentation
        (relative); only with ``batch_size=None`` (F varies per image).
    """
    sources = sum(x is not None for x in (label_file, annotations, tfrecord_pattern))
    if sources != 1:
        raise DatasetError("build_dataset: give exactly one of label_file, annotations, tfrecord_pattern")
    if return_faces and batch_size is not None:
        raise DatasetError("build_dataset: return_faces=True needs batch_size=None (faces per image vary)")
    steps = anchors.steps
    if data.image_size < max(steps) or data.image_size % min(steps):
        # the same rule as Config.validate: cfg_re50 trains at 840, not a multiple of 32
        raise DatasetError(f"build_dataset: data.image_size={data.image_size} must be a multiple of {min(steps)} "
                           f"and at least {max(steps)}")
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    if deterministic is None and seed is not None:
        deterministic = True

    if tfrecord_pattern is not None:
        ds = read_tfrecords(tfrecord_pattern, shuffle_files=shuffle, seed=seed, input_context=input_context,
                            deterministic=deterministic)
    else:
        ds = _files_dataset(_annotated_images(label_file, images_dir, annotations, skip_empty=skip_empty,
                                              verify_images=verify_images, max_pixels=max_pixels), images_dir)
        if input_context is not None and input_context.num_input_pipelines > 1:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer(ds, data.shuffle_buffer, files=tfrecord_pattern is None), seed=seed,
                        reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if seed is not None and input_context is not None:
        seed = seed + 7919 * input_context.input_pipeline_id  # workers: different augmentation streams
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    example = _example_fn(encoded=tfrecord_pattern is not None, training=training, data=data, anchors=anchors,
                          loss=loss, return_faces=return_faces, jit_compile=jit_compile)
    ds = tf.data.Dataset.zip((ds, seeds)).map(example, num_parallel_calls=num_parallel_calls,
                                               deterministic=deterministic)
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch:
        ds = ds.prefetch(prefetch)
    return ds


def dataset_kwargs(config) -> dict:
    """The keyword arguments of :func:`build_dataset` that a :class:`~retinaface_tf.config.Config`
    fixes, its ``data``, ``anchors`` and ``loss`` sections: ``build_dataset(...,
    **dataset_kwargs(cfg))``."""
    return {"data": config.data, "anchors": config.anchors, "loss": config.loss}
