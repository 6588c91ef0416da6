"""A tiny generated face dataset (coloured boxes with 'eyes'), for training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_dataset(root, *, images: int = 8, size=(96, 128), faces_per_image: int = 2, seed: int = 0,
                 landmarks: bool = True) -> tuple[Path, Path]:
    """Write ``root/images/imN.jpg`` and ``root/label.txt`` (retinaface_gt layout). Returns
    ``(label_file, images_dir)``."""
    import cv2

    root = Path(root)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    lines = []
    for i in range(images):
        img = np.full((h, w, 3), int(rng.integers(60, 200)), np.uint8)
        lines.append(f"# im{i}.jpg")
        for _ in range(faces_per_image):
            s = int(rng.integers(min(h, w) // 5, min(h, w) // 2.5))
            x, y = int(rng.integers(2, w - s - 2)), int(rng.integers(2, h - s - 2))
            cv2.rectangle(img, (x, y), (x + s, y + s), (40, 80, 210), -1)
            pts = [(0.3, 0.35), (0.7, 0.35), (0.5, 0.55), (0.35, 0.75), (0.65, 0.75)]
            for a, b in pts:
                cv2.circle(img, (int(x + a * s), int(y + b * s)), max(1, s // 12), (250, 250, 250), -1)
            lm = " ".join(f"{x + a * s:.1f} {y + b * s:.1f} 0.0" if landmarks else "-1 -1 -1" for a, b in pts)
            lines.append(f"{x} {y} {s} {s} {lm} {'0.9' if landmarks else '-1'}")
        cv2.imwrite(str(img_dir / f"im{i}.jpg"), img)
    label = root / "label.txt"
    label.write_text("\n".join(lines) + "\n")
    return label, img_dir
