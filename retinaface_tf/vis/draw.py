"""Drawing on images with OpenCV: detections (boxes, scores, 5 landmarks), heat maps over a
photo, and the anchors matched to training faces. Every function takes and returns BGR uint8
``[H, W, 3]`` arrays (the input is never modified); coordinates are pixel ``xyxy``."""

from __future__ import annotations

import cv2
import numpy as np

# left eye, right eye, nose, left mouth corner, right mouth corner (BGR), as the reference draws them
LANDMARK_COLORS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))
# BGR, one per pyramid level (stride 8, 16, 32)
LEVEL_COLOURS = ((0, 220, 0), (0, 165, 255), (255, 0, 255), (255, 255, 0))
LEGEND_LINE = 20  # pixels per legend line in the strip under an anchor view


FONT = cv2.FONT_HERSHEY_DUPLEX


def line_thickness(image: np.ndarray) -> int:
    """Lines and text scale with the image: 1 pixel per 500 pixels of the long side."""
    return max(1, round(max(image.shape[:2]) / 500))


def fit_font_scale(text: str, scale: float, max_width: int) -> float:
    """``scale``, shrunk in 10 % steps (not below 0.25) until ``text`` fits ``max_width`` pixels."""
    while cv2.getTextSize(text, FONT, scale, 1)[0][0] > max_width and scale > 0.25:
        scale *= 0.9
    return scale


def draw_detections(image: np.ndarray, detections, *, box_color=(0, 0, 255)) -> np.ndarray:
    """Return a copy of BGR uint8 ``image`` with every detection drawn (pixel ``xyxy`` boxes)."""
    out = image.copy()
    thickness = line_thickness(image)
    for box, score, lms in zip(detections.boxes, detections.scores, detections.landmarks):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), box_color, thickness)
        cv2.putText(out, f"{score:.2f}", (x1, max(0, y1 - 4)), FONT, 0.4 * thickness,
                    (255, 255, 255), max(1, thickness // 2))
        for (x, y), color in zip(lms, LANDMARK_COLORS):
            cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, color, -1)
    return out


def overlay(image_bgr: np.ndarray, heat: np.ndarray, *, box=None, caption: str | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend ``heat`` (``[h, w]`` in [0, 1], resized to the image if needed) as a JET colour map
    over ``image_bgr`` (uint8 ``[H, W, 3]``); draw ``box`` (pixel ``xyxy``) and ``caption``.
    Returns uint8 ``[H, W, 3]`` BGR."""
    h, w = image_bgr.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(image_bgr, 1.0 - alpha, colour, alpha, 0.0)
    thickness = line_thickness(image_bgr)
    if box is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), thickness)
    if caption:
        size = fit_font_scale(caption, 0.5 * thickness, w - 8)  # narrow images get smaller text
        (tw, th), base = cv2.getTextSize(caption, FONT, size, 1)
        cv2.rectangle(out, (0, 0), (min(w, tw + 8), th + base + 8), (0, 0, 0), -1)
        cv2.putText(out, caption, (4, th + 4), FONT, size, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def legend_height(view) -> int:
    """Height of the legend strip :func:`draw_anchor_view` adds under the picture of ``view``
    (a :class:`~retinaface_tf.vis.anchor_view.AnchorView`)."""
    return LEGEND_LINE * (1 + len(view.steps)) + 6


def draw_anchor_view(view, *, scale: float = 1.0) -> np.ndarray:
    """The augmented image (``scale``-times larger) with every positive anchor (thin, one colour
    per level), every face box (white; red when it has no anchor) with its index, and a legend
    strip below. Returns uint8 BGR ``[round(S * scale) + legend_height(view), round(S * scale), 3]``."""
    image = view.image
    if scale != 1.0:
        image = cv2.resize(image, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    h, w = image.shape[:2]
    out = np.zeros((h + legend_height(view), w, 3), np.uint8)
    out[:h] = image

    def pt(x, y):
        return int(round(x * scale)), int(round(y * scale))

    for box, level in zip(view.anchors_xyxy, view.anchor_levels):
        cv2.rectangle(out, pt(box[0], box[1]), pt(box[2], box[3]), LEVEL_COLOURS[level % len(LEVEL_COLOURS)], 1)
    out[h:] = 0  # anchors at the bottom edge must not spill into the legend
    for face in view.faces:
        if face.view_box is None:
            continue
        colour = (0, 0, 255) if face.total == 0 else (255, 255, 255)
        x1, y1, x2, y2 = face.view_box
        cv2.rectangle(out[:h], pt(x1, y1), pt(x2, y2), colour, 2)
        org = pt(x1, max(10.0 / scale, y1 - 3))
        cv2.putText(out[:h], str(face.index), org, FONT, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out[:h], str(face.index), org, FONT, 0.45, colour, 1, cv2.LINE_AA)
    lines = [(f"{view.path}, {'seed ' + str(view.seed) if view.augmented else 'no augmentation'}: "
              f"{len(view.anchors_xyxy)} positive anchors, {len(view.unmatched)} face(s) with none (red)",
              (255, 255, 255))]
    for lv, (step, sizes) in enumerate(zip(view.steps, view.min_sizes)):
        n = int(np.sum(view.anchor_levels == lv))
        lines.append((f"stride {step} anchors ({'/'.join(map(str, sizes))} px): {n}",
                      LEVEL_COLOURS[lv % len(LEVEL_COLOURS)]))
    for i, (text, colour) in enumerate(lines):
        cv2.putText(out, text, (5, h + LEGEND_LINE * (i + 1)), FONT, fit_font_scale(text, 0.45, w - 10), colour, 1,
                    cv2.LINE_AA)
    return out
