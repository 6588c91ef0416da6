"""Anchors (priors) for any input size, in TF (graph-safe) and numpy.

Layout equals the reference's ``PriorBox``: for each level (stride 8, 16, 32), feature map
``ceil(H / step) x ceil(W / step)``, ordered level → row → column → min size; each anchor is
``rel_center_xywh`` (normalised by the input width/height, so non-square inputs give non-square
normalised anchors, exactly as the reference).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from retinaface_tf.config import AnchorConfig


def feature_map_sizes(height: int, width: int, steps=AnchorConfig.steps) -> list[tuple[int, int]]:
    """``[(ceil(H/step), ceil(W/step)), ...]``: the backbone's output sizes for any input."""
    return [(-(-height // s), -(-width // s)) for s in steps]


def anchor_levels(height: int, width: int, min_sizes=AnchorConfig.min_sizes, steps=AnchorConfig.steps) -> np.ndarray:
    """``[N]`` int: the pyramid level (0-based, stride ``steps[level]``) of every anchor of an
    ``height x width`` input, in the anchors' order."""
    counts = [fh * fw * len(ms) for (fh, fw), ms in zip(feature_map_sizes(height, width, steps), min_sizes)]
    return np.repeat(np.arange(len(counts)), counts)


def num_anchors(height: int, width: int, min_sizes=AnchorConfig.min_sizes, steps=AnchorConfig.steps) -> int:
    return sum(fh * fw * len(ms) for (fh, fw), ms in zip(feature_map_sizes(height, width, steps), min_sizes))


def generate_anchors_np(height: int, width: int, min_sizes=AnchorConfig.min_sizes, steps=AnchorConfig.steps,
                        clip: bool = False) -> np.ndarray:
    """``[N, 4]`` float32 ``rel_center_xywh`` anchors for an ``height x width`` input (numpy)."""
    out = []
    for (fh, fw), sizes, step in zip(feature_map_sizes(height, width, steps), min_sizes, steps):
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step / height, (np.arange(fw) + 0.5) * step / width,
                             indexing="ij")
        sizes = np.asarray(sizes, dtype=np.float64)
        level = np.stack(np.broadcast_arrays(cx[..., None], cy[..., None],
                                             (sizes / width)[None, None, :], (sizes / height)[None, None, :]),
                         axis=-1)
        out.append(level.reshape(-1, 4))
    anchors = np.concatenate(out, axis=0)
    if clip:
        anchors = np.clip(anchors, 0.0, 1.0)
    return anchors.astype(np.float32)


def generate_anchors(height, width, min_sizes=AnchorConfig.min_sizes, steps=AnchorConfig.steps, clip: bool = False):
    """TF twin of :func:`generate_anchors_np`; ``height``/``width`` may be scalar tensors.

    Returns ``[N, 4]`` float32 ``rel_center_xywh``. The loop runs over the 3 pyramid levels of
    the config (Python constants), never over tensor values.
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    out = []
    for sizes, step in zip(min_sizes, steps):
        fh = (height + step - 1) // step
        fw = (width + step - 1) // step
        ys = (tf.cast(tf.range(fh), tf.float32) + 0.5) * float(step) / h_f
        xs = (tf.cast(tf.range(fw), tf.float32) + 0.5) * float(step) / w_f
        cy, cx = tf.meshgrid(ys, xs, indexing="ij")  # [fh, fw]
        a = len(sizes)
        sizes_t = tf.constant(sizes, tf.float32)
        shape = tf.stack([fh, fw, a])
        level = tf.stack([
            tf.broadcast_to(cx[..., None], shape),
            tf.broadcast_to(cy[..., None], shape),
            tf.broadcast_to(sizes_t / w_f, shape),
            tf.broadcast_to(sizes_t / h_f, shape),
        ], axis=-1)
        out.append(tf.reshape(level, [-1, 4]))
    anchors = tf.concat(out, axis=0)
    if clip:
        anchors = tf.clip_by_value(anchors, 0.0, 1.0)
    return anchors


# ---------------------------------------------------------------------- images padded into a canvas
# A batch of images of different sizes runs as one canvas (each image at the top-left). An image of
# ``h x w`` pixels has ``ceil(h / s) x ceil(w / s)`` positions at stride ``s`` (every stride-2
# convolution of the network, 3x3 with one pixel of padding, gives ``ceil(n / 2)``), so the canvas
# positions inside that extent are exactly the image's own; the rest must read as the zero padding
# the image alone would have had.

def region_mask(sizes, height, width, stride: int, dtype=tf.float32):
    """``[B, height, width, 1]``: 1 at stride-``stride`` positions inside each image's own extent,
    0 elsewhere. ``sizes [B, 2]`` int ``(h, w)`` of each image in input pixels; graph-safe."""
    sizes = tf.cast(sizes, tf.int32)
    extent = (sizes + stride - 1) // stride  # [B, 2]
    rows = tf.range(height)[None, :] < extent[:, :1]  # [B, H]
    cols = tf.range(width)[None, :] < extent[:, 1:]  # [B, W]
    return tf.cast(rows[:, :, None, None] & cols[:, None, :, None], dtype)


def anchor_grid(height: int, width: int, min_sizes=AnchorConfig.min_sizes, steps=AnchorConfig.steps) -> dict:
    """Where each anchor of a ``height x width`` input sits: ``{"step", "row", "col", "size"}``,
    ``[N]`` int arrays in anchor order (level → row → column → size)."""
    out = {"step": [], "row": [], "col": [], "size": []}
    for sizes, step in zip(min_sizes, steps):
        fh, fw, a = -(-height // step), -(-width // step), len(sizes)
        row, col, size = np.meshgrid(np.arange(fh), np.arange(fw), np.arange(a), indexing="ij")
        out["step"].append(np.full(fh * fw * a, step))
        out["row"].append(row.ravel())
        out["col"].append(col.ravel())
        out["size"].append(size.ravel())
    return {k: np.concatenate(v).astype(np.int64) for k, v in out.items()}


def anchors_inside(grid: dict, size) -> np.ndarray:
    """``[N]`` bool: the canvas anchors of ``grid`` (:func:`anchor_grid`) that exist for an image of
    ``size`` ``(h, w)`` at the canvas' top-left."""
    h, w = int(size[0]), int(size[1])
    step = grid["step"]
    return (grid["row"] < -(-h // step)) & (grid["col"] < -(-w // step))


def reindex_anchors(indices, grid: dict, size, min_sizes=AnchorConfig.min_sizes,
                    steps=AnchorConfig.steps) -> np.ndarray:
    """Canvas anchor indices (of ``grid``) → the same anchors' indices for the image of ``size``
    ``(h, w)`` run alone (``-1`` stays ``-1``)."""
    indices = np.asarray(indices, np.int64)
    h, w = int(size[0]), int(size[1])
    valid = indices >= 0
    i = np.where(valid, indices, 0)
    step = grid["step"][i]
    offset = np.zeros_like(i)
    width = np.zeros_like(i)
    per_cell = np.zeros_like(i)
    count = 0
    for sizes, s in zip(min_sizes, steps):
        level = step == s
        offset[level], width[level], per_cell[level] = count, -(-w // s), len(sizes)
        count += -(-h // s) * -(-w // s) * len(sizes)
    out = offset + (grid["row"][i] * width + grid["col"][i]) * per_cell + grid["size"][i]
    return np.where(valid, out, -1).astype(np.int32)
