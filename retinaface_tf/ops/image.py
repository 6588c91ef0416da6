"""Images inside a graph: decoding with OpenCV's pixels, and the network's input convention.

Every decoded pixel must equal ``cv2.imread``'s (the Detector and evaluation read images with
OpenCV). TensorFlow's JPEG decoder defaults to a fast integer IDCT (``dct_method=""`` →
``INTEGER_FAST``) whose pixels differ from libjpeg's default (``JDCT_ISLOW``, what OpenCV uses)
by up to ~20 levels; ``dct_method="INTEGER_ACCURATE"`` is ``JDCT_ISLOW`` and gives OpenCV's
pixels bit for bit. PNG / BMP / GIF / WebP decode identically either way. Outputs are uint8
RGB; OpenCV's are BGR.
"""

from __future__ import annotations

import tensorflow as tf

from retinaface_tf.constants import BGR_MEAN

JPEG_DCT_METHOD = "INTEGER_ACCURATE"  # libjpeg's JDCT_ISLOW, as cv2.imread


def is_jpeg(contents):
    """Scalar bool: the encoded bytes start with a JPEG SOI marker."""
    return tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")


def _decode_other(contents):
    return tf.ensure_shape(tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False),
                           [None, None, 3])


def decode_image(contents):
    """Encoded JPEG / PNG / BMP / GIF / WebP bytes → uint8 RGB ``[H, W, 3]``, OpenCV's pixels."""
    return tf.cond(
        is_jpeg(contents),
        lambda: tf.ensure_shape(tf.io.decode_jpeg(contents, channels=3, dct_method=JPEG_DCT_METHOD), [None, None, 3]),
        lambda: _decode_other(contents))


def image_shape(contents):
    """``[H, W]`` int32 of encoded image bytes; JPEG headers are read without decoding."""
    return tf.cond(is_jpeg(contents), lambda: tf.io.extract_jpeg_shape(contents)[:2],
                   lambda: tf.shape(_decode_other(contents))[:2])


JPEG_WINDOW_MARGIN = 16  # one 4:2:0 MCU: the chroma upsampling of an edge pixel reads its neighbours


def _decode_jpeg_window(contents, window):
    # libjpeg upsamples chroma ("fancy upsampling") from neighbouring samples, and treats the edge
    # of a cropped decode as the image edge; so decode the window grown by one MCU on each side
    # (aligned to the MCU grid, clamped to the image) and cut the exact window out of it.
    hw = tf.io.extract_jpeg_shape(contents)[:2]
    top, left, height, width = tf.unstack(tf.cast(window, tf.int32))
    m = JPEG_WINDOW_MARGIN
    t0 = tf.maximum(top - m, 0) // m * m
    l0 = tf.maximum(left - m, 0) // m * m
    b1 = tf.minimum(top + height + m, hw[0])
    r1 = tf.minimum(left + width + m, hw[1])
    grown = tf.io.decode_and_crop_jpeg(contents, tf.stack([t0, l0, b1 - t0, r1 - l0]), channels=3,
                                       dct_method=JPEG_DCT_METHOD)
    return tf.ensure_shape(grown[top - t0:top - t0 + height, left - l0:left - l0 + width], [None, None, 3])


def decode_window(contents, window):
    """Decode only ``window`` ``[top, left, h, w]`` of the encoded image (JPEG: the DCT blocks
    outside it and a one-MCU margin are skipped) → uint8 RGB ``[h, w, 3]``, the same pixels as
    :func:`decode_image` then cropping."""
    return tf.cond(
        is_jpeg(contents),
        lambda: _decode_jpeg_window(contents, window),
        lambda: tf.image.crop_to_bounding_box(_decode_other(contents), window[0], window[1], window[2], window[3]))


def preprocess(images, *, channel_order: str = "bgr", mean=BGR_MEAN, network_order: str = "bgr"):
    """uint8 (or float 0..255) ``[..., 3]`` images in ``channel_order`` → the network's input:
    float32 BGR minus ``mean`` (the reference's convention, unscaled). Graph-safe; the one
    conversion used by the data pipeline, the Detector and every export.

    ``network_order="rgb"`` is for a network whose first convolution takes RGB (the TFLite
    export's, :func:`~retinaface_tf.models.fused.fuse_for_tflite` with ``input_order="rgb"``):
    the output is then RGB minus the mean in RGB order, and RGB images are not flipped at all.
    ``mean`` is always given in BGR order."""
    for name, value in (("channel_order", channel_order), ("network_order", network_order)):
        if value not in ("bgr", "rgb"):
            raise ValueError(f"{name} must be 'bgr' or 'rgb', got {value!r}")
    x = tf.cast(images, tf.float32)
    if channel_order != network_order:
        x = tf.reverse(x, axis=[-1])
    mean = tuple(mean) if network_order == "bgr" else tuple(mean)[::-1]
    return x - tf.constant(mean, tf.float32)


def fast_preprocess(images, *, channel_order: str = "bgr", mean=BGR_MEAN):
    """:func:`preprocess` of ``[B, H, W, 3]`` images with the same numbers, twice as fast on CPU
    (the Detector's path).

    Subtracting a 3-vector broadcast over ``[B, H, W, 3]`` (``Sub`` or ``BiasAdd`` with 3
    channels) runs a scalar inner loop over 3 elements; here the image is viewed as ``[B * H,
    W * 3]`` and the mean tiled to ``W * 3``, a vectorised row ``BiasAdd``. Every element is
    still ``float(x) + (-m)``, which is ``float(x) - m`` bit for bit."""
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    if channel_order == "rgb":
        images = tf.reverse(images, axis=[-1])
    shape = tf.shape(images)
    neg_mean = -tf.constant(mean, tf.float32)
    rows = tf.cast(tf.reshape(images, tf.stack([-1, shape[2] * 3])), tf.float32)
    return tf.reshape(tf.nn.bias_add(rows, tf.tile(neg_mean, shape[2:3])), shape)
