"""Images decoded inside a graph give OpenCV's pixels (the brief: "Pixels are OpenCV's").

On real WIDER val JPEGs (4:2:0 chroma), ``ops.image.decode_image`` (serving's ``image_bytes``)
and ``decode_window`` (the training pipeline's crop decode) equal ``cv2.imread`` bit for bit;
TensorFlow's default JPEG IDCT does not, which is why the DCT method is pinned.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.ops.image import decode_image, decode_window, image_shape


@pytest.fixture(scope="module")
def val_jpegs(widerface_dir):
    paths = sorted((widerface_dir / "val" / "images").rglob("*.jpg"))
    return paths[::31][:10]  # ten photos across the three events


def test_decode_image_equals_cv2_imread_on_real_jpegs(val_jpegs):
    default_differs = 0
    for path in val_jpegs:
        data = path.read_bytes()
        expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
        got = decode_image(tf.constant(data)).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=str(path))
        default = tf.io.decode_jpeg(data, channels=3).numpy()  # TensorFlow's default IDCT
        default_differs += int(np.abs(default.astype(int) - expected).max() > 0)
        assert image_shape(tf.constant(data)).numpy().tolist() == list(expected.shape[:2])
    assert default_differs == len(val_jpegs)  # the pinned DCT method is what makes them equal


def test_decode_window_equals_cropped_cv2_pixels(val_jpegs):
    rng = np.random.default_rng(0)
    for path in val_jpegs[:5]:
        data = tf.constant(path.read_bytes())
        full = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
        h, w = full.shape[:2]
        windows = [(0, 0, h, w), (0, 0, 33, 47), (h - 31, w - 45, 31, 45), (h // 2, 0, h - h // 2, 21)]
        for _ in range(6):  # odd offsets and sizes cut through 16x16 MCUs and 2x2 chroma blocks
            ch, cw = int(rng.integers(17, h // 2)), int(rng.integers(17, w // 2))
            windows.append((int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw)), ch, cw))
        for top, left, ch, cw in windows:
            got = decode_window(data, tf.constant([top, left, ch, cw])).numpy()
            np.testing.assert_array_equal(got, full[top:top + ch, left:left + cw], err_msg=f"{path} {top},{left}")


def test_png_and_grayscale_jpeg_decode_as_opencv(tmp_path):
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", bgr)
    np.testing.assert_array_equal(decode_image(tf.constant(png.tobytes())).numpy(), bgr[..., ::-1])
    gray = cv2.GaussianBlur(rng.integers(0, 256, (40, 64), dtype=np.uint8), (5, 5), 0)
    ok, jpg = cv2.imencode(".jpg", gray)
    path = tmp_path / "g.jpg"
    path.write_bytes(jpg.tobytes())
    np.testing.assert_array_equal(decode_image(tf.constant(jpg.tobytes())).numpy(),
                                  cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])
