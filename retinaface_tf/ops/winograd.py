"""A 3x3 stride-1 convolution as Winograd F(2x2, 3x3): 16 products per 2x2 output tile instead of
36, in plain TensorFlow ops (any batch, height and width).

The convolution ``y = conv2d(x, g, stride 1, one pixel of zero padding on every side)`` is
computed on 4x4 input tiles taken every 2 pixels: each tile ``d`` is transformed to ``B^T d B``
(additions only), multiplied channel-wise-summed with the transformed kernel ``U = G g G^T`` (16
independent ``[C] x [C, K]`` products: 1x1 convolutions, one per tile position), and the 4x4
result turned back into 2x2 outputs by ``A^T m A`` (additions only). 2.25x fewer multiply-adds
than the direct convolution; what it costs instead is the transforms' passes over memory, so it
pays where channels are many and the products dominate (``benchmarks/winograd.py``).

The numbers are those of the convolution to float rounding: the transforms have coefficients
0, ±1 and ±1/2 (exact in binary), ``U`` is computed in float64 and stored as float32; the
difference to the direct convolution is of the order of the direct one's own rounding
(``tests/test_winograd.py``).

>>> kernels = winograd_kernels(g)                    # numpy [3, 3, C, K] -> [4, 4, C, K]
>>> y = winograd_conv3x3(x, kernels, bias)           # == conv2d(x, g, 1, "SAME") + bias

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015, for the algorithm.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# F(2x2, 3x3): kernel transform G (4x3); the data and output transforms are written out below.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def winograd_kernels(g: np.ndarray) -> np.ndarray:
    """``[3, 3, C, K]`` convolution kernel → ``[4, 4, C, K]`` Winograd kernel ``G g G^T`` per
    channel pair (float64 arithmetic, float32 result)."""
    g = np.asarray(g, np.float64)
    if g.ndim != 4 or g.shape[:2] != (3, 3):
        raise ValueError(f"winograd_kernels: expected a [3, 3, C, K] kernel, got shape {g.shape}")
    return np.einsum("ak,klio,bl->abio", G, g, G).astype(np.float32)


def _data_transform(t, axis_pairs):
    """``B^T`` along one axis, given that axis split into (pair index, parity): the 4 maps of the
    tiles' 4 rows (or columns) combined as ``[d0 - d2, d1 + d2, d2 - d1, d1 - d3]``, where
    ``d0..d3`` are rows ``2i .. 2i + 3``, i.e. even / odd of pair ``i`` and of pair ``i + 1``."""
    even_now, even_next, odd_now, odd_next = axis_pairs(t)
    return [even_now - even_next, odd_now + even_next, even_next - odd_now, odd_now - odd_next]


def winograd_conv3x3(x, kernels, bias=None):
    """``conv2d(x, g, 1, "SAME") (+ bias)`` for a 3x3 kernel ``g`` given as
    :func:`winograd_kernels` ``(g)`` (``kernels``: a ``[4, 4, C, K]`` array or a 4x4 nested
    sequence of ``[1, 1, C, K]`` tensors / variables, e.g. a layer's weights, so that no slice of
    a weight is taken per call). ``x``: ``[B, H, W, C]``, any ``H`` and ``W`` (odd sides are
    padded by one more row / column and the output cropped); ``C`` must be static."""
    if isinstance(kernels, np.ndarray):
        kernels = [[kernels[a, b][None, None] for b in range(4)] for a in range(4)]
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]
    c = x.shape[-1]
    if c is None:
        raise ValueError("winograd_conv3x3: the channel count of x must be static")
    n, m = (h + 1) // 2, (w + 1) // 2  # output tiles down / across
    x = tf.pad(x, tf.stack([[0, 0], [1, 1 + h % 2], [1, 1 + w % 2], [0, 0]]))  # [B, 2n + 2, 2m + 2, C]
    rows = tf.reshape(x, tf.stack([b, n + 1, 2, 2 * m + 2, c]))

    def row_pairs(t):
        return t[:, :-1, 0], t[:, 1:, 0], t[:, :-1, 1], t[:, 1:, 1]

    def column_pairs(t):
        t = tf.reshape(t, tf.stack([b, n, m + 1, 2, c]))
        return t[:, :, :-1, 0], t[:, :, 1:, 0], t[:, :, :-1, 1], t[:, :, 1:, 1]

    products = []  # products[a][col]: [B, n, m, K]
    for a, t in enumerate(_data_transform(rows, row_pairs)):
        v = _data_transform(t, column_pairs)
        row = []
        for col in range(4):
            p = tf.nn.conv2d(v[col], kernels[a][col], 1, "VALID")
            if bias is not None and (a, col) == (1, 1):  # A^T's row entries at 1 are 1 for all four outputs
                p = tf.nn.bias_add(p, bias)
            row.append(p)
        products.append(row)
    # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], first along the rows, then along the columns
    top = [products[0][col] + products[1][col] + products[2][col] for col in range(4)]
    bottom = [products[1][col] - products[2][col] - products[3][col] for col in range(4)]
    out = []
    for r in (top, bottom):
        out += [r[0] + r[1] + r[2], r[1] - r[2] - r[3]]  # output (dy, 0), (dy, 1)
    y = tf.nn.depth_to_space(tf.concat(out, axis=-1), 2)  # [B, 2n, 2m, K]
    return y[:, :h, :w]
