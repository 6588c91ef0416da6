"""What the detector looks at: saliency (SmoothGrad) and Grad-CAM++ maps of one detected face's
score, computed with tf-keras-vis on our Keras 3 model.

tf-keras-vis 0.8.7 was written for single-output ``tf.keras`` 2 classifiers. Its importable
parts run under Keras 3 (``tensorflow.keras`` resolves to Keras 3), but three things do not fit
a detector and are handled here:

* Our network returns a dict (``bbox`` / ``classes`` / ``landmarks``); tf-keras-vis wraps the
  dict in a list and hands the whole dict to the score function (``TypeError: unhashable type:
  'slice'``); its ``ReplaceToLinear`` modifier fails the same way. :func:`face_score_model`
  therefore builds a single-output model over the same layers whose output ``[B, 1]`` is one
  anchor's face log-odds (``logit_face - logit_background``, i.e. the softmax score before the
  squashing, so confident faces still have gradients), and whose input is a one-element list so
  tf-keras-vis' ``[x]`` matches Keras 3's input structure (no structure warning).
* Grad-CAM++'s layer search looks for a ``Conv`` at or below the named layer; our penultimate
  layer is the SSH module's ReLU (it concatenates three conv branches), so the search would pick
  one branch's conv. We name ``ssh{level}_relu`` and switch the search off.
* tf-keras-vis upsamples the CAM with ``scipy.ndimage.zoom`` (corner-aligned), which shifts a
  stride-32 map by up to 16 pixels. We take the raw feature-map CAM and upsample it with
  half-pixel-centred bilinear resizing over the ``ceil(H / step) * step`` area the feature map
  covers, then crop to the image.

A detection's anchor is the one post-processing kept it from (``Detections.anchor_indices``);
for a box given by hand (a face the detector misses), :func:`find_anchor` decodes every anchor's
box and takes the one that fits it best, highest score on ties.
"""

from __future__ import annotations

import dataclasses
import warnings

import cv2
import keras
import numpy as np

from retinaface_tf.errors import ExplainError
from retinaface_tf.inference import Detector
from retinaface_tf.ops.anchors import anchor_levels, generate_anchors_np
from retinaface_tf.ops.box_coder import decode_boxes
from retinaface_tf.ops.boxes import center_xywh_to_xyxy, iou_matrix_np
from retinaface_tf.ops.image import preprocess
from retinaface_tf.ops.nms import face_probability

TARGETS = ("logodds", "probability")


@dataclasses.dataclass
class AnchorMatch:
    """The anchor that produced a detection.

    ``index``: position in the network's ``[N]`` anchor axis; ``level``: pyramid level (0-based,
    stride ``steps[level]``); ``iou``: IoU of its decoded box with the detected box; ``score``:
    its face probability; ``anchor_xyxy``: the anchor itself in pixel ``xyxy``.
    """

    index: int
    level: int
    iou: float
    score: float
    anchor_xyxy: np.ndarray


@dataclasses.dataclass
class Explanation:
    """Maps for one face, at the resolution of the original image.

    ``face_index``: index into the detections (-1 when a ``box`` was given); ``box`` pixel
    ``xyxy`` ``[4]`` float32; ``score``: the face probability; ``saliency`` and ``gradcam_pp``
    ``[H, W]`` float32 in [0, 1]; ``anchor`` the :class:`AnchorMatch` whose score was explained
    (its ``index``/``iou``/``score`` refer to the input the network saw).
    """

    face_index: int
    box: np.ndarray
    score: float
    anchor: AnchorMatch
    target: str
    saliency: np.ndarray
    gradcam_pp: np.ndarray


def anchor_level(index: int, height: int, width: int, *, min_sizes, steps) -> int:
    """Pyramid level (0-based) of anchor ``index`` for an ``height x width`` input (anchors are
    ordered level → row → column → min size)."""
    levels = anchor_levels(height, width, min_sizes, steps)
    if not 0 <= index < len(levels):
        raise ValueError(f"anchor index {index} >= {len(levels)} anchors for a {height}x{width} input")
    return int(levels[index])


def anchor_match(index: int, *, iou: float, score: float, height: int, width: int, min_sizes, steps) -> AnchorMatch:
    """The :class:`AnchorMatch` of anchor ``index`` of an ``height x width`` input."""
    anchors = generate_anchors_np(height, width, min_sizes, steps)
    scale = np.array([width, height, width, height], np.float32)
    anchor_px = np.asarray(center_xywh_to_xyxy(anchors[index] * scale), np.float32)
    return AnchorMatch(index=index, level=anchor_level(index, height, width, min_sizes=min_sizes, steps=steps),
                       iou=iou, score=score, anchor_xyxy=anchor_px)


def find_anchor(outputs: dict, box_xyxy, *, height: int, width: int, min_sizes, steps,
                variances) -> AnchorMatch:
    """The anchor whose decoded box best matches ``box_xyxy`` (pixel ``xyxy`` ``[4]``, in the
    ``height x width`` input the network saw), for a box that is no detection.

    ``outputs``: the network's outputs for that one image (``bbox [1, N, 4]``, ``classes
    [1, N, 2]``). Highest IoU wins; among anchors within 1e-4 of it, the highest face score.
    """
    anchors = generate_anchors_np(height, width, min_sizes, steps)
    scale = np.array([width, height, width, height], np.float32)
    decoded = decode_boxes(outputs["bbox"][0], anchors, variances).numpy() * scale
    scores = face_probability(outputs["classes"][0]).numpy()
    iou = iou_matrix_np(np.asarray(box_xyxy, np.float32)[None], decoded)[0]
    candidates = np.flatnonzero(iou >= iou.max() - 1e-4)
    index = int(candidates[np.argmax(scores[candidates])])
    return anchor_match(index, iou=float(iou[index]), score=float(scores[index]), height=height, width=width,
                        min_sizes=min_sizes, steps=steps)


def face_score_model(model, anchor_index: int, *, target: str = "logodds"):
    """Single-output Keras model sharing ``model``'s layers: input ``[image]`` (network input,
    float32 BGR minus mean ``[B, H, W, 3]``), output ``[B, 1]`` float32: anchor
    ``anchor_index``'s face log-odds (``target="logodds"``) or face probability
    (``"probability"``). Every layer of ``model`` (e.g. ``ssh2_relu``) stays reachable by name."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    logits = model.get_layer("ClassHead").output  # [B, N, 2]

    def pick(t):
        anchor = t[:, anchor_index, :]
        if target == "logodds":
            return anchor[:, 1:2] - anchor[:, 0:1]
        return keras.ops.softmax(anchor, axis=-1)[:, 1:2]

    out = keras.layers.Lambda(pick, output_shape=(1,), name=f"anchor{anchor_index}_{target}")(logits)
    return keras.Model(list(model.inputs), out, name="face_score")


def _score(output):
    return output[:, 0]


def _require_vis():
    try:
        import tf_keras_vis  # noqa: F401
    except ImportError:
        raise ExplainError("tf-keras-vis is not installed: pip install 'retinaface_tf[vis]'") from None


def saliency_map(score_model, network_input: np.ndarray, *, smooth_samples: int = 16,
                 smooth_noise: float = 0.1, seed: int | None = 0) -> np.ndarray:
    """SmoothGrad saliency (tf-keras-vis ``Saliency``): max over channels of the mean |gradient|
    of the score w.r.t. the input pixels over ``smooth_samples`` noisy copies (noise std
    ``smooth_noise`` x the input's value range; ``0`` samples = vanilla gradient).

    ``network_input`` ``[1, H, W, 3]`` float32. Returns ``[H, W]`` float32 in [0, 1].
    ``seed`` fixes tf-keras-vis' numpy noise (the global numpy state is restored after)."""
    _require_vis()
    from tf_keras_vis.saliency import Saliency

    state = np.random.get_state()
    if seed is not None:
        np.random.seed(seed)
    try:
        sal = Saliency(score_model, clone=False)(_score, [network_input], smooth_samples=smooth_samples,
                                                  smooth_noise=smooth_noise, normalize_map=False)
    finally:
        np.random.set_state(state)
    # tf-keras-vis' own normalisation adds K.epsilon() to the range, which is not negligible
    # against gradients of ~1e-3: the maximum would not reach 1.
    sal = np.asarray(sal[0][0], np.float64)
    lo, hi = sal.min(), sal.max()
    return ((sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)).astype(np.float32)


def gradcam_pp_map(score_model, network_input: np.ndarray, *, layer: str, step: int) -> np.ndarray:
    """Grad-CAM++ (tf-keras-vis ``GradcamPlusPlus``) of the score at ``layer`` (an SSH output of
    stride ``step``), upsampled bilinearly with half-pixel centres to the input size.

    ``network_input`` ``[1, H, W, 3]`` float32. Returns ``[H, W]`` float32 in [0, 1] (all zeros
    when no channel contributes positively)."""
    _require_vis()
    with warnings.catch_warnings():  # it imports zoom from scipy.ndimage.interpolation (deprecated); we never use it
        warnings.simplefilter("ignore", DeprecationWarning)
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

    h, w = network_input.shape[1:3]
    cam = GradcamPlusPlus(score_model, clone=False)(_score, [network_input], penultimate_layer=layer,
                                                    seek_penultimate_conv_layer=False, expand_cam=False,
                                                    normalize_cam=False)
    cam = np.asarray(cam[0], np.float32)  # [fh, fw], fh = ceil(h / step)
    fh, fw = cam.shape
    cam = cv2.resize(cam, (fw * step, fh * step), interpolation=cv2.INTER_LINEAR)[:h, :w]
    cam = np.maximum(cam, 0.0)
    top = float(cam.max())
    return cam / top if top > 0 else cam


def select_face(detections, face, *, source: str = "image") -> int:
    """Index into ``detections`` for ``face``: an int (0 = highest score, the order ``detect``
    lists faces in) or ``"largest"`` (biggest box area)."""
    n = len(detections)
    if n == 0:
        raise ExplainError(f"{source}: no face detected above the score threshold")
    if face == "largest":
        b = detections.boxes
        return int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
    face = int(face)
    if not 0 <= face < n:
        raise ExplainError(f"{source}: face {face} requested but {n} face(s) detected "
                           f"(use 0..{n - 1} or 'largest')")
    return face


def explain_face(image_bgr: np.ndarray, *, model, config, face=0, box=None, score_threshold: float = 0.5,
                 target: str = "logodds", smooth_samples: int = 16, smooth_noise: float = 0.1,
                 seed: int | None = 0, max_size: int | None = None, source: str = "image") -> Explanation:
    """Explain one face in ``image_bgr`` (uint8 ``[H, W, 3]`` BGR).

    The face is a detection (``face``: see :func:`select_face`) or, with ``box`` (pixel ``xyxy``,
    e.g. a face the detector misses), the anchor whose decoded box fits ``box`` best.
    ``max_size`` downscales images whose long side exceeds it before the network sees them.
    Returned boxes are in original pixels and maps are ``[H, W]`` of the original image.
    """
    h0, w0 = image_bgr.shape[:2]
    scale = 1.0
    if max_size and max(h0, w0) > max_size:
        scale = max_size / max(h0, w0)
        image_bgr = cv2.resize(image_bgr, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    h, w = image_bgr.shape[:2]
    if box is None:
        detections = Detector(model=model, config=config, score_threshold=score_threshold, fused=False).detect(image_bgr)
        index = select_face(detections, face, source=source)
        target_box = detections.boxes[index]
    else:
        index, target_box = -1, np.asarray(box, np.float32) * scale
        if target_box.shape != (4,) or not (target_box[2] > target_box[0] and target_box[3] > target_box[1]):
            raise ExplainError(f"{source}: --box must be x1,y1,x2,y2 with x2 > x1 and y2 > y1, got {list(box)}")
    x = preprocess(image_bgr[None], channel_order="bgr").numpy()
    a = config.anchors
    if box is None:  # the anchor post-processing kept this detection from
        anchor = anchor_match(int(detections.anchor_indices[index]), iou=1.0, score=float(detections.scores[index]),
                              height=h, width=w, min_sizes=a.min_sizes, steps=a.steps)
    else:
        anchor = find_anchor(model(x, training=False), target_box, height=h, width=w, min_sizes=a.min_sizes,
                             steps=a.steps, variances=a.variances)
    score_model = face_score_model(model, anchor.index, target=target)
    sal = saliency_map(score_model, x, smooth_samples=smooth_samples, smooth_noise=smooth_noise, seed=seed)
    cam = gradcam_pp_map(score_model, x, layer=f"ssh{anchor.level + 1}_relu", step=a.steps[anchor.level])
    if scale != 1.0:
        sal = np.clip(cv2.resize(sal, (w0, h0), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
        cam = np.clip(cv2.resize(cam, (w0, h0), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
        anchor.anchor_xyxy = anchor.anchor_xyxy / scale
    return Explanation(face_index=index, box=np.asarray(target_box / scale, np.float32), score=anchor.score,
                       anchor=anchor, target=target, saliency=sal, gradcam_pp=cam)
