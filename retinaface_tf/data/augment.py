"""Training augmentation of the reference (``data/data_augment.py: preproc``) in TF ops only.

Every function is graph-safe (runs inside ``tf.data`` maps and ``tf.function``), takes a stateless
``seed`` (``[2]`` int32/int64 tensor) where it draws random numbers, and is vectorised: the 250
square-crop candidates are drawn and tested at once, not in a Python loop. TF cannot replay
OpenCV's / Python's random stream, so what is reproduced is the reference's distributions and
invariants, not its exact draws.

Faces travel as :class:`~retinaface_tf.ops.faces.Faces` (boxes, landmarks, has_landmarks, ids):
pixel coordinates until :func:`augment` makes them relative (``rel_xyxy``) to the final square
image; faces are kept, dropped, cropped and mirrored, never renumbered (``ids``).
Images are float32 **RGB** in [0, 255] until the network input is made (BGR minus the mean).
"""

from __future__ import annotations

import tensorflow as tf

from retinaface_tf.config import DataConfig
from retinaface_tf.constants import BGR_MEAN, MIRROR_LANDMARK_ORDER
from retinaface_tf.ops.faces import Faces
from retinaface_tf.ops.image import decode_image, decode_window, image_shape, preprocess

# The reference picks one of cv2's INTER_LINEAR, INTER_CUBIC, INTER_AREA, INTER_NEAREST,
# INTER_LANCZOS4 per image; these are tf.image's counterparts.
RESIZE_METHODS = ("bilinear", "bicubic", "area", "nearest", "lanczos3")


def _split(seed, n: int):
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n)


def drop_empty_faces(faces: Faces) -> Faces:
    """Drop faces whose box width or height is <= 0."""
    boxes = faces.boxes
    return faces.select((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))


def sample_square_crop(boxes, height, width, seed, *, scales=DataConfig.crop_scales,
                       num_candidates: int = DataConfig.crop_candidates):
    """The reference's ``_crop`` window search, all candidates at once.

    A candidate is a square of side ``int(scale * min(H, W))`` (``scale`` uniform over
    ``scales``) at a uniform integer offset. It is accepted when at least one face lies wholly
    inside it (the reference's ``matrix_iof >= 1``, whose face area is clamped to >= 1 px²) and
    the first accepted candidate wins (the reference's first success of 250 tries).

    Args:
      boxes: ``[F, 4]`` float32 pixel ``xyxy``.
      height, width: int32 scalars, the image size.
      seed: ``[2]`` stateless seed.

    Returns:
      ``(found, window, keep)``: ``found`` bool scalar; ``window`` int32 ``[top, left, size, size]``
      (the whole image ``[0, 0, H, W]`` when nothing was found); ``keep`` ``[F]`` bool, faces whose
      centre is strictly inside the window (all True when nothing was found).
    """
    s_scale, s_offset = tf.unstack(_split(seed, 2))
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    short = tf.minimum(height, width)
    scale_idx = tf.random.stateless_uniform([num_candidates], s_scale, 0, len(scales), dtype=tf.int32)
    scale = tf.gather(tf.constant(scales, tf.float32), scale_idx)
    size = tf.maximum(tf.cast(scale * tf.cast(short, tf.float32), tf.int32), 1)  # int() truncation
    u = tf.random.stateless_uniform([num_candidates, 2], s_offset)
    # random.randrange(W - size): uniform in [0, W - size), and 0 when the square spans the side.
    left = tf.cast(u[:, 0] * tf.cast(width - size, tf.float32), tf.int32)
    top = tf.cast(u[:, 1] * tf.cast(height - size, tf.float32), tf.int32)
    roi = tf.cast(tf.stack([left, top, left + size, top + size], axis=1), tf.float32)  # [K, 4] xyxy

    b = boxes[None, :, :]  # [1, F, 4]
    r = roi[:, None, :]  # [K, 1, 4]
    lt = tf.maximum(b[..., :2], r[..., :2])
    rb = tf.minimum(b[..., 2:], r[..., 2:])
    inter = tf.reduce_prod(tf.maximum(rb - lt, 0.0), axis=-1)  # [K, F]
    area = tf.reduce_prod(b[..., 2:] - b[..., :2], axis=-1)
    fully_inside = inter / tf.maximum(area, 1.0) >= 1.0
    # A wholly-inside face has its centre inside too, so this is also the reference's second test.
    accepted = tf.reduce_any(fully_inside, axis=1)  # [K]
    found = tf.reduce_any(accepted)
    first = tf.argmax(tf.cast(accepted, tf.int32), output_type=tf.int32)

    centers = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    chosen = roi[first]
    inside = tf.reduce_all((chosen[:2] < centers) & (centers < chosen[2:]), axis=1)
    keep = tf.where(found, inside, tf.ones_like(inside))
    window = tf.where(found, tf.stack([top[first], left[first], size[first], size[first]]),
                      tf.stack([0, 0, height, width]))
    return found, window, keep


def crop_faces(faces: Faces, window) -> Faces:
    """Faces (pixels) into a crop ``window`` ``[top, left, h, w]``: boxes clipped to the window,
    landmarks shifted and clipped to ``[0, w] x [0, h]`` (as the reference)."""
    top, left = tf.cast(window[0], tf.float32), tf.cast(window[1], tf.float32)
    h, w = tf.cast(window[2], tf.float32), tf.cast(window[3], tf.float32)
    origin = tf.stack([left, top])
    limit = tf.stack([w, h])
    xy1 = tf.clip_by_value(faces.boxes[:, 0:2] - origin, 0.0, limit)
    xy2 = tf.clip_by_value(faces.boxes[:, 2:4] - origin, 0.0, limit)
    landmarks = tf.clip_by_value(faces.landmarks - origin, 0.0, limit)
    return faces._replace(boxes=tf.concat([xy1, xy2], axis=1), landmarks=landmarks)


def adjust_saturation_hue(image, saturation, hue_delta):
    """Scale HSV saturation by ``saturation`` (clamped to <= 1) and rotate hue by ``hue_delta``
    (fraction of the circle), on RGB ``[..., 3]`` float32 of any non-negative scale.

    Equal to ``tf.image.adjust_hue(tf.image.adjust_saturation(x, s), d)`` (to float rounding)
    without leaving RGB: channel ``c = V - V·S·f_c(H)``, so scaling ``S`` scales ``V - c`` and the
    hue rotation re-evaluates ``f_c``. Written in elementwise ops on channel planes, which XLA
    fuses into one pass (``tf.image``'s kernels cost ~4x more CPU in ``tf.data``).
    """
    rank = image.shape.rank
    planes = tf.transpose(image, [rank - 1, *range(rank - 1)])  # channel planes: cheap slices
    r, g, b = planes[0], planes[1], planes[2]
    v = tf.maximum(tf.maximum(r, g), b)
    spread = v - tf.minimum(tf.minimum(r, g), b)  # V * S
    safe = tf.where(spread > 0, spread, 1.0)
    inv = 1.0 / safe
    # Hue in sextants [0, 6) - possibly [-1, 5); the shift below wraps it.
    h = tf.where(v == r, (g - b) * inv, tf.where(v == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h = h + 6.0 * hue_delta
    spread = spread * tf.minimum(saturation, tf.where(spread > 0, v * inv, 1.0))

    def channel(n):
        k = n + h
        k = k - 6.0 * tf.cast(k >= 6.0, k.dtype) + 6.0 * tf.cast(k < 0.0, k.dtype)
        return v - spread * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)

    return tf.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def color_params(seed):
    """Draw the reference's ``_distort`` parameters: ``(contrast_first, beta, alpha, saturation,
    hue_delta, apply_hsv)`` scalars (see :func:`distort_colors`). Drawn outside any XLA function:
    stateless RNG picks another algorithm under XLA."""
    s_coin, s_value, s_hue = tf.unstack(_split(seed, 3))
    coin = tf.random.stateless_uniform([5], s_coin) < 0.5  # order, brightness, contrast, saturation, hue
    v = tf.random.stateless_uniform([3], s_value)
    beta = tf.where(coin[1], v[0] * 64.0 - 32.0, 0.0)
    alpha = tf.where(coin[2], v[1] + 0.5, 1.0)
    saturation = tf.where(coin[3], v[2] + 0.5, 1.0)
    hue_units = tf.random.stateless_uniform([], s_hue, -18, 19, dtype=tf.int32)
    hue_delta = tf.where(coin[4], tf.cast(hue_units, tf.float32) / 180.0, 0.0)
    return coin[0], beta, alpha, saturation, hue_delta, coin[3] | coin[4]


def apply_color_params(image, params):
    """Apply :func:`color_params` to a float32 RGB image in [0, 255], clipping after each step."""
    contrast_first, beta, alpha, saturation, hue_delta, apply_hsv = params
    image = tf.clip_by_value(image + beta, 0.0, 255.0)
    image = tf.clip_by_value(image * tf.where(contrast_first, alpha, 1.0), 0.0, 255.0)
    image = tf.cond(apply_hsv,
                    lambda: tf.clip_by_value(adjust_saturation_hue(image, saturation, hue_delta), 0.0, 255.0),
                    lambda: image)
    return tf.clip_by_value(image * tf.where(contrast_first, 1.0, alpha), 0.0, 255.0)


def distort_colors(image, seed):
    """The reference's ``_distort`` on a float32 RGB image in [0, 255] (any shape ``[..., 3]``).

    Brightness ``+U(-32, 32)``, contrast ``x U(0.5, 1.5)`` (the reference's contrast is a plain
    multiplication), saturation ``x U(0.5, 1.5)``, hue ``+randint(-18, 18)`` OpenCV hue units
    (2 degrees each), each with probability 0.5, clipped to [0, 255] after each step, in one of
    the reference's two orders (p 0.5 each): brightness, contrast, saturation, hue — or
    brightness, saturation, hue, contrast.
    """
    return apply_color_params(image, color_params(seed))


def pad_to_square(image, fill):
    """Pad ``[H, W, 3]`` at the bottom / right to ``[L, L, 3]``, ``L = max(H, W)``, with the
    per-channel ``fill`` (the reference's ``_pad_to_square``: the image stays at the top-left, so
    pixel coordinates are unchanged)."""
    shape = tf.shape(image)
    side = tf.maximum(shape[0], shape[1])
    fill = tf.constant(fill, tf.float32)
    padded = tf.pad(image - fill, [[0, side - shape[0]], [0, side - shape[1]], [0, 0]])
    return padded + fill


def random_resize(image, height, width, seed):
    """Resize ``[h, w, 3]`` to ``[height, width, 3]`` float32 with an interpolation drawn
    uniformly from :data:`RESIZE_METHODS`, clipped to [0, 255] like OpenCV's saturating uint8
    output."""
    index = tf.random.stateless_uniform([], seed, 0, len(RESIZE_METHODS), dtype=tf.int32)
    size = tf.stack([height, width])
    branches = [lambda m=m: tf.cast(tf.image.resize(image, size, method=m), tf.float32) for m in RESIZE_METHODS]
    return tf.clip_by_value(tf.switch_case(index, branches), 0.0, 255.0)


def finish_image(image, content_hw, params, flip, *, bgr_mean=BGR_MEAN):
    """Colour distortion (:func:`color_params` ``params``), mean padding, mirror and
    network-input conversion of the resized ``[S, S, 3]`` float32 RGB image whose content fills
    the top-left ``content_hw`` (the rest is padding, filled with the mean and left undistorted
    as in the reference). ``flip`` mirrors. Static shapes: the pipeline runs it compiled with XLA
    (one fused pass instead of ~20)."""
    image = apply_color_params(image, params)
    size = tf.shape(image)
    inside = (tf.range(size[0])[:, None] < content_hw[0]) & (tf.range(size[1])[None, :] < content_hw[1])
    image = tf.where(inside[..., None], image, tf.constant(tuple(reversed(bgr_mean)), tf.float32))
    image = tf.where(flip, tf.reverse(image, axis=[1]), image)
    return preprocess(image, channel_order="rgb", mean=bgr_mean)


_finish_image_jit = tf.function(finish_image, jit_compile=True, reduce_retracing=False)


def mirror_faces(faces: Faces) -> Faces:
    """Horizontal mirror of relative faces: ``x -> 1 - x`` for boxes and landmarks, and left /
    right eyes and mouth corners swapped (:data:`~retinaface_tf.constants.MIRROR_LANDMARK_ORDER`)."""
    boxes = faces.boxes
    boxes = tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=1)
    landmarks = tf.stack([1.0 - faces.landmarks[..., 0], faces.landmarks[..., 1]], axis=-1)
    return faces._replace(boxes=boxes, landmarks=tf.gather(landmarks, list(MIRROR_LANDMARK_ORDER), axis=1))


def augment(contents, faces, seed, *, image_size: int, bgr_mean=BGR_MEAN, crop_scales=DataConfig.crop_scales,
            crop_candidates: int = DataConfig.crop_candidates,
            mirror_probability: float = DataConfig.mirror_probability, jit_compile: bool = True):
    """The reference's training ``preproc`` on encoded image bytes.

    square crop (or the whole image when no window fits) → colour distortion → pad to a square
    with the mean → mirror (p ``mirror_probability``) → resize to ``image_size`` with a random
    interpolation → BGR minus the mean.

    For speed, only the crop window is decoded, and the pixel-wise steps run after the resize,
    on the ``S x S`` image, in one XLA-compiled function (:func:`finish_image`): the colour
    distortion is applied to the resized pixels instead of the original ones (identical up to
    clipping at saturated pixels and interpolation overshoot), and a padded image is resized
    to its content size and then padded (the reference's resize blends the last content row /
    column with the mean; here the edge stays sharp).

    Args:
      contents: scalar string, JPEG / PNG / BMP / GIF bytes.
      faces: :class:`~retinaface_tf.ops.faces.Faces` in pixels.
      seed: ``[2]`` stateless seed.
      jit_compile: run :func:`finish_image` through XLA (same result, ~5x less CPU).

    Returns:
      ``(image [S, S, 3] float32 BGR minus mean, faces)``, the faces ``rel_xyxy`` with boxes in
      [0, 1], widths and heights > 0.
    """
    s_crop, s_color, s_resize, s_mirror = tf.unstack(_split(seed, 4))
    faces = drop_empty_faces(faces.to_tensors())
    hw = image_shape(contents)
    found, window, keep = sample_square_crop(faces.boxes, hw[0], hw[1], s_crop, scales=crop_scales,
                                             num_candidates=crop_candidates)
    faces = faces.select(keep)
    # On failure the reference keeps the boxes of the whole image unchanged (not clipped).
    faces = tf.cond(found, lambda: crop_faces(faces, window), lambda: faces)
    side = tf.reduce_max(window[2:])  # the square's side: the crop, or max(H, W) when padded
    faces = faces.relative_to(tf.cast(side, tf.float32))

    image = decode_window(contents, window)
    scale = image_size / tf.cast(side, tf.float32)
    content_hw = tf.maximum(tf.cast(tf.round(tf.cast(window[2:], tf.float32) * scale), tf.int32), 1)
    image = random_resize(image, content_hw[0], content_hw[1], s_resize)
    image = tf.cond(found, lambda: image, lambda: tf.pad(
        image, [[0, image_size - content_hw[0]], [0, image_size - content_hw[1]], [0, 0]]))
    image = tf.ensure_shape(image, [image_size, image_size, 3])

    flip = tf.random.stateless_uniform([], s_mirror) < mirror_probability
    finish = _finish_image_jit if jit_compile else finish_image
    image = finish(image, content_hw, color_params(s_color), flip, bgr_mean=tuple(bgr_mean))
    faces = tf.cond(flip, lambda: mirror_faces(faces), lambda: faces)

    # Only the no-crop path can hold boxes beyond the image; clipping keeps every box in [0, 1].
    faces = faces._replace(boxes=tf.clip_by_value(faces.boxes, 0.0, 1.0))
    return image, drop_empty_faces(faces)


def pad_and_resize(contents, faces, *, image_size: int, bgr_mean=BGR_MEAN):
    """The deterministic (validation) path: pad to a square with the mean, bilinear resize, BGR
    minus the mean. Returns ``(image [S, S, 3], faces rel_xyxy)``."""
    faces = drop_empty_faces(faces.to_tensors())
    image = tf.cast(decode_image(contents), tf.float32)
    image = pad_to_square(image, tuple(reversed(bgr_mean)))
    faces = faces.relative_to(tf.cast(tf.shape(image)[0], tf.float32))
    image = tf.ensure_shape(tf.image.resize(image, [image_size, image_size]), [image_size, image_size, 3])
    faces = faces._replace(boxes=tf.clip_by_value(faces.boxes, 0.0, 1.0))
    return preprocess(image, channel_order="rgb", mean=bgr_mean), drop_empty_faces(faces)
