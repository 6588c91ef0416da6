"""``build_dataset``: WIDER FACE → ``(images, targets)`` batches ready for ``model.fit``.

Per image, in one parallel ``tf.data`` map of TF ops: read the file (or take the TFRecord
bytes) → :func:`retinaface_tf.data.augment.augment` (or ``letterbox`` when not training) →
:func:`retinaface_tf.ops.matcher.match_anchors` against the anchors of the training size →
:func:`retinaface_tf.losses.pack_targets`. Then batch (fixed shapes) and prefetch.

Element (batched, ``S = image_size``, ``N = num_anchors(S, S)``)::

    images  [B, S, S, 3] float32  BGR minus (104, 117, 123): the model's input
    targets {"bbox": [B, N, 5], "classes": [B, N], "landmarks": [B, N, 11]}  (see losses.py)

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
from retinaface_tf.constants import BGR_MEAN
from retinaface_tf.data import augment as aug
from retinaface_tf.data.widerface import Annotations, ImageAnnotation, check_images, read_annotations
from retinaface_tf.errors import DatasetError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS
from retinaface_tf.losses import pack_targets
from retinaface_tf.ops.anchors import generate_anchors_np
from retinaface_tf.ops.matcher import match_anchors, match_anchors_bucketed

AUTOTUNE = tf.data.AUTOTUNE


def faces_ragged(images: Sequence[ImageAnnotation]) -> tf.RaggedTensor:
    """``[num_images, (F), 15]`` float32 ragged tensor of pixel faces (``to_faces_array``)."""
    arrays = [im.to_faces_array() for im in images]
    lengths = np.asarray([a.shape[0] for a in arrays], np.int64)
    flat = np.concatenate(arrays, axis=0) if arrays else np.zeros((0, 15), np.float32)
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


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


def encode_faces(faces, anchors, *, match_threshold: float = LossConfig.match_threshold,
                 force_match_min_iou: float = LossConfig.force_match_min_iou, variances=AnchorConfig.variances,
                 jit_compile: bool = True) -> dict:
    """Relative faces ``[F, 15]`` → the target dict of one image (``[N, 5]``, ``[N]``, ``[N, 11]``).
    ``jit_compile`` uses the XLA-compiled, face-count-bucketed matcher (same results)."""
    match = match_anchors_bucketed if jit_compile else match_anchors
    box_t, labels, landmark_t = match(
        faces[:, :4], tf.reshape(faces[:, 4:14], [-1, 5, 2]), faces[:, 14], anchors,
        match_threshold=match_threshold, force_match_min_iou=force_match_min_iou, variances=variances)
    return pack_targets(box_t, labels, landmark_t)


def build_dataset(label_file: str | os.PathLike | None = None, images_dir: str | os.PathLike | None = None, *,
                  annotations: Annotations | Sequence[ImageAnnotation] | None = None,
                  tfrecord_pattern: str | Sequence[str] | None = None,
                  batch_size: int | None = 32, image_size: int = DataConfig.image_size, training: bool = True,
                  shuffle: bool | None = None, shuffle_buffer: int = DataConfig.shuffle_buffer, seed: int | None = None,
                  repeat: bool = False, drop_remainder: bool | None = None,
                  num_parallel_calls: int = AUTOTUNE, prefetch: int = AUTOTUNE, deterministic: bool | None = None,
                  bgr_mean=BGR_MEAN, crop_scales=DataConfig.crop_scales, crop_candidates: int = DataConfig.crop_candidates,
                  mirror_probability: float = DataConfig.mirror_probability, min_sizes=AnchorConfig.min_sizes,
                  steps=AnchorConfig.steps, variances=AnchorConfig.variances,
                  match_threshold: float = LossConfig.match_threshold,
                  force_match_min_iou: float = LossConfig.force_match_min_iou,
                  skip_empty: bool = True, verify_images: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  return_faces: bool = False,
                  jit_compile: bool = True,
                  input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The training (or validation) ``tf.data.Dataset`` of ``(images, targets)``.

    Source, exactly one of:
      label_file + images_dir: any layout :func:`read_annotations` reads; image paths are relative
        to ``images_dir``. With ``verify_images`` every image is checked before anything runs
        (:func:`retinaface_tf.data.widerface.check_images`: missing, not an image, corrupt, over
        ``max_pixels`` pixels → one error naming the label file's line and the image).
      annotations + images_dir: already-read :class:`Annotations` / records.
      tfrecord_pattern: shards written by :func:`retinaface_tf.data.tfrecord.write_tfrecords`,
        read with ``interleave`` (and sharded per worker when ``input_context`` is given).

    Args:
      batch_size: images per batch; ``None`` leaves the dataset unbatched.
      image_size: square training size ``S`` (a multiple of 8, e.g. 640 or cfg_re50's 840).
      training: True: the reference's augmentation; False: pad to square + bilinear resize only.
      shuffle: default ``training``. ``shuffle_buffer`` elements (file names, not pixels).
      seed: makes shuffle order and augmentation reproducible (and the map deterministic unless
        ``deterministic`` says otherwise).
      repeat: repeat forever (then ``model.fit`` needs ``steps_per_epoch``).
      drop_remainder: default ``training``; fixed batch shapes also need it for XLA.
      num_parallel_calls, prefetch: ``tf.data`` parallelism (AUTOTUNE by default).
      jit_compile: run the per-pixel steps and the matcher through XLA (same results, about half
        the CPU per image); False for platforms without XLA.
      return_faces: add ``targets["faces"]`` ``[F, 15]`` (relative faces after augmentation);
        only with ``batch_size=None`` (F varies per image).
      The remaining keyword arguments are the augmentation / matching settings of the config
      (``data.*``, ``anchors.*``, ``loss.match_threshold``, ``loss.force_match_min_iou``).
    """
    sources = sum(x is not None for x in (label_file, annotations, tfrecord_pattern))
    if sources != 1:
        raise DatasetError("build_dataset: give exactly one of label_file, annotations, tfrecord_pattern")
    if return_faces and batch_size is not None:
        raise DatasetError("build_dataset: return_faces=True needs batch_size=None (faces per image vary)")
    if image_size < max(steps) or image_size % min(steps):
        # the same rule as Config.validate: cfg_re50 trains at 840, not a multiple of 32
        raise DatasetError(f"build_dataset: image_size={image_size} must be a multiple of {min(steps)} "
                           f"and at least {max(steps)}")
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    if deterministic is None and seed is not None:
        deterministic = True

    if tfrecord_pattern is not None:
        from retinaface_tf.data.tfrecord import read_tfrecords
        ds = read_tfrecords(tfrecord_pattern, shuffle_files=shuffle, seed=seed, input_context=input_context,
                            deterministic=deterministic)
        encoded = True
    else:
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
        ds = _files_dataset(images, images_dir)
        if input_context is not None and input_context.num_input_pipelines > 1:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        encoded = False

    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if seed is not None and input_context is not None:
        seed = seed + 7919 * input_context.input_pipeline_id  # workers: different augmentation streams
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    anchors = tf.constant(generate_anchors_np(image_size, image_size, min_sizes, steps))

    def load(item, element_seed):
        source, faces = item
        faces = tf.ensure_shape(tf.cast(faces, tf.float32), [None, 15])
        if encoded:
            contents = source
        else:
            contents = tf.io.read_file(source)
            # a file changed since check_images: fail naming it, not as an anonymous decode error
            with tf.control_dependencies([tf.debugging.Assert(
                    _known_image_format(contents), ["not a JPEG, PNG, BMP, GIF or WebP image file:", source])]):
                contents = tf.identity(contents)
        if training:
            image, faces = aug.augment(contents, faces, element_seed, image_size=image_size, bgr_mean=bgr_mean,
                                       crop_scales=crop_scales, crop_candidates=crop_candidates,
                                       mirror_probability=mirror_probability, jit_compile=jit_compile)
        else:
            image, faces = aug.letterbox(contents, faces, image_size=image_size, bgr_mean=bgr_mean)
        targets = encode_faces(faces, anchors, match_threshold=match_threshold,
                               force_match_min_iou=force_match_min_iou, variances=variances,
                               jit_compile=jit_compile)
        if return_faces:
            targets["faces"] = faces
        return image, targets

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch:
        ds = ds.prefetch(prefetch)
    return ds


def dataset_kwargs(config) -> dict:
    """The keyword arguments of :func:`build_dataset` that a :class:`~retinaface_tf.config.Config`
    fixes (call at the edge, e.g. in training: ``build_dataset(..., **dataset_kwargs(cfg))``)."""
    a, d, lo = config.anchors, config.data, config.loss
    return dict(image_size=d.image_size, bgr_mean=tuple(d.bgr_mean), crop_scales=tuple(d.crop_scales),
                crop_candidates=d.crop_candidates, mirror_probability=d.mirror_probability,
                shuffle_buffer=d.shuffle_buffer, min_sizes=a.min_sizes, steps=a.steps, variances=a.variances,
                match_threshold=lo.match_threshold, force_match_min_iou=lo.force_match_min_iou)
