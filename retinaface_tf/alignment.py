"""Aligned face crops for recognition models: the five landmarks mapped onto the standard
five-point template (ArcFace / insightface, 112×112; 96×112; any size scaled from them) by a
least-squares similarity transform (rotation, uniform scale, translation).

For each face, the transform ``M`` (2×3, image pixels → crop pixels) minimises
``Σ ‖M·[p, 1] − q‖²`` over the five landmark / template pairs. In 2-D the similarity that does
this has a closed form (Umeyama's without the reflection branch): with centred points,
``a = Σ(p·q) / Σ|p|²`` and ``b = Σ(p × q) / Σ|p|²`` give ``M = [[a, −b, tx], [b, a, ty]]``.
It is computed for all faces at once (numpy, no loop); each crop is one ``cv2.warpAffine`` with
that matrix (bilinear, pixels outside the image black), so a crop equals ``cv2.warpAffine`` with
the returned matrix by construction.

Faces whose landmarks cannot be used — not finite, far outside their box, or collapsed (a model
trained without landmarks predicts no meaningful ones) — are aligned from the box instead: the
template is laid into the box (no rotation), so the face still fills the crop as an aligned one
would (upright, centred on the box, scaled by its mean side); ``from_landmarks`` says which
faces were aligned which way.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# insightface's arcface_dst: left eye, right eye, nose, left and right mouth corner in a 112×112 crop
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
TEMPLATE_WIDTHS = {112: 0.0, 96: -8.0}  # the 96×112 template is the 112×112 one shifted 8 px left


def template(width: int = 112, height: int | None = None) -> np.ndarray:
    """The five-point template for a ``width × height`` crop (``[5, 2]`` pixels): 112×112 and
    96×112 are the standard ones; other sizes scale the one of the same aspect ratio (a square
    size scales 112×112, a 6:7 one 96×112)."""
    height = width if height is None else height
    if width < 8 or height < 8:
        raise ValueError(f"crop size must be at least 8x8, got {width}x{height}")
    if width == height:
        base, base_w = ARCFACE_TEMPLATE_112, 112.0
    elif width * 112 == height * 96:
        base, base_w = ARCFACE_TEMPLATE_112 + [TEMPLATE_WIDTHS[96], 0.0], 96.0
    else:
        raise ValueError(f"crop size {width}x{height}: use a square size or the 96x112 aspect ratio (6:7)")
    return base * (width / base_w)


def similarity_transforms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms ``[N, 2, 3]`` mapping each ``src[n]`` (``[N, P, 2]``)
    onto ``dst`` (``[P, 2]`` or ``[N, P, 2]``)."""
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    mu_s, mu_d = src.mean(axis=1, keepdims=True), dst.mean(axis=1, keepdims=True)
    p, q = src - mu_s, dst - mu_d
    norm = np.maximum((p ** 2).sum(axis=(1, 2)), 1e-12)
    a = (p * q).sum(axis=(1, 2)) / norm
    b = (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(axis=1) / norm
    rot = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], 1)  # [N, 2, 2]
    t = mu_d[:, 0, :] - np.einsum("nij,nj->ni", rot, mu_s[:, 0, :])
    return np.concatenate([rot, t[..., None]], axis=2)


def apply_transforms(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[N, 2, 3]`` transforms applied to ``[N, P, 2]`` points."""
    return np.einsum("nij,npj->npi", matrices[..., :2], points) + matrices[:, None, :, 2]


def usable_landmarks(boxes: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """``[N]`` bool: landmarks finite, inside the box grown by half its size, and not collapsed
    (the eyes at least 5 % of the box width apart, the points spread over 10 % of it)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    finite = np.isfinite(lm).all(axis=(1, 2)) & np.isfinite(boxes).all(axis=1)
    lo = boxes[:, None, :2] - 0.5 * np.stack([w, h], -1)[:, None]
    hi = boxes[:, None, 2:] + 0.5 * np.stack([w, h], -1)[:, None]
    with np.errstate(invalid="ignore"):
        inside = ((lm >= lo) & (lm <= hi)).all(axis=(1, 2))
        eyes = np.linalg.norm(lm[:, 1] - lm[:, 0], axis=-1) >= 0.05 * w
        spread = lm.std(axis=1).max(axis=-1) >= 0.10 * np.minimum(w, h) / 2
    return finite & inside & eyes & spread


@dataclass
class AlignedFaces:
    """``crops [N, H, W, 3]`` uint8 (the image's channel order); ``matrices [N, 2, 3]`` image →
    crop (float64, what the crop was warped with); ``from_landmarks [N]`` bool (False: aligned from the box); ``residuals [N]`` mean
    distance in crop pixels between the warped landmarks and the template."""

    crops: np.ndarray
    matrices: np.ndarray
    from_landmarks: np.ndarray
    residuals: np.ndarray


def align_faces(image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, *, size: int | tuple[int, int] = 112,
                use_landmarks: bool = True) -> AlignedFaces:
    """Aligned crops of every face of one image (``size``: ``112``, ``(96, 112)`` as
    ``(width, height)``, or any size scaled from them). ``use_landmarks=False`` aligns every
    face from its box (for a model trained without landmarks)."""
    width, height = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    dst = template(width, height)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    n = len(boxes)
    if n == 0:
        return AlignedFaces(np.zeros((0, height, width, image.shape[2] if image.ndim == 3 else 1), np.uint8),
                            np.zeros((0, 2, 3)), np.zeros(0, bool), np.zeros(0))
    ok = usable_landmarks(boxes, lm) if use_landmarks else np.zeros(n, bool)
    # box fallback: the crop laid onto the box, upright, centred, scaled by the box's mean side
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], -1)
    scale = (wh / [width, height]).mean(axis=-1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    pseudo = centre[:, None] + (dst - [width / 2, height / 2])[None] * scale[:, None, None]
    src = np.where(ok[:, None, None], np.nan_to_num(lm), pseudo)
    matrices = similarity_transforms(src, dst)
    residuals = np.linalg.norm(apply_transforms(matrices, src) - dst, axis=-1).mean(axis=1)
    crops = warp_crops(image, matrices, (width, height))
    return AlignedFaces(crops, matrices, ok, residuals.astype(np.float32))


def warp_crops(image: np.ndarray, matrices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine`` of ``image`` with each matrix (bilinear, black outside the image)."""
    width, height = size
    crops = [cv2.warpAffine(image, m.astype(np.float64), (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0) for m in matrices]
    return np.stack(crops).reshape(len(matrices), height, width, *image.shape[2:])
