"""Drawing detections (boxes, scores, 5 landmarks) on BGR images."""

from __future__ import annotations

import numpy as np

# left eye, right eye, nose, left mouth corner, right mouth corner (BGR), as the reference draws them
LANDMARK_COLORS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def draw_detections(image: np.ndarray, detections, *, box_color=(0, 0, 255)) -> np.ndarray:
    """Return a copy of BGR uint8 ``image`` with every detection drawn (pixel ``xyxy`` boxes)."""
    import cv2

    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 500))
    for box, score, lms in zip(detections.boxes, detections.scores, detections.landmarks):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), box_color, thickness)
        cv2.putText(out, f"{score:.2f}", (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_DUPLEX, 0.4 * thickness,
                    (255, 255, 255), max(1, thickness // 2))
        for (x, y), color in zip(lms, LANDMARK_COLORS):
            cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, color, -1)
    return out
