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


def place_labels(boxes, sizes, image_shape) -> list[tuple[int, int]]:
    """Top-left corners for labels of ``sizes`` ``[(w, h)]`` beside pixel ``xyxy`` ``boxes`` (in
    drawing order): above the box, else inside its top edge, else below it, whichever is the first
    to lie inside the image and clear of the labels placed before (else the first inside the image)."""
    height, width = image_shape[:2]
    placed: list[tuple[int, int, int, int]] = []
    corners = []
    for (x1, y1, x2, y2), (tw, th) in zip(boxes, sizes):
        x = int(min(max(0, round(x1)), max(0, width - tw)))
        candidates = [round(y1) - th - 2, round(y1) + 2, round(y2) + 2]  # above, inside the top, below
        inside = [y for y in candidates if 0 <= y and y + th <= height] or [min(max(0, candidates[0]), max(0, height - th))]
        free = [y for y in inside if not any(x < px2 and px < x + tw and y < py2 and py < y + th
                                             for px, py, px2, py2 in placed)]
        y = int((free or inside)[0])
        placed.append((x, y, x + tw, y + th))
        corners.append((x, y))
    return corners


def draw_detections(image: np.ndarray, detections, *, box_color=(0, 0, 255)) -> np.ndarray:
    """Return a copy of BGR uint8 ``image`` with every detection drawn (pixel ``xyxy`` boxes): the
    box, its score on a filled label that stays inside the picture and clear of its neighbours'
    labels where there is room (:func:`place_labels`), and the five landmarks."""
    out = image.copy()
    thickness = line_thickness(image)
    scale, text_thickness = 0.4 * thickness, max(1, thickness // 2)
    texts = [f"{score:.2f}" for score in detections.scores]
    sizes = []
    for text in texts:
        (tw, th), base = cv2.getTextSize(text, FONT, scale, text_thickness)
        sizes.append((tw + 2, th + base + 2))
    corners = place_labels(detections.boxes, sizes, image.shape)
    for box, lms in zip(detections.boxes, detections.landmarks):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), box_color, thickness)
        for (x, y), color in zip(lms, LANDMARK_COLORS):
            cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, color, -1)
    for text, (x, y), (tw, th) in zip(texts, corners, sizes):  # labels last: never under another box
        cv2.rectangle(out, (x, y), (x + tw - 1, y + th - 1), box_color, -1)
        baseline = cv2.getTextSize(text, FONT, scale, text_thickness)[1]
        cv2.putText(out, text, (x + 1, y + th - 1 - baseline), FONT, scale, (255, 255, 255), text_thickness,
                    cv2.LINE_AA)
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
