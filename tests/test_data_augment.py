"""TF-only augmentation: crop search, colour distortion, mirror, padding, and the invariants the
matcher and loss rely on (boxes in [0, 1], targets decode back to their faces)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.data import augment as aug
from retinaface_tf.data.pipeline import encode_faces
from retinaface_tf.ops.anchors import generate_anchors_np
from retinaface_tf.ops.box_coder import decode_boxes, decode_landmarks
from retinaface_tf.ops.faces import Faces
from retinaface_tf.config import DataConfig
from retinaface_tf.constants import MIRROR_LANDMARK_ORDER

SIZE = 320
ANCHORS = generate_anchors_np(SIZE, SIZE)


def _face(box, landmarks=True):
    """``(box, landmarks [5, 2], has_landmarks)`` of a face (landmarks -1 when it has none)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    lm = [x1 + 0.3 * w, y1 + 0.4 * h, x1 + 0.7 * w, y1 + 0.4 * h, x1 + 0.5 * w, y1 + 0.6 * h,
          x1 + 0.35 * w, y1 + 0.8 * h, x1 + 0.65 * w, y1 + 0.8 * h]
    if not landmarks:
        lm = [-1.0] * 10
    return box, np.reshape(lm, (5, 2)), landmarks


def _faces(*faces):
    if not faces:
        return Faces.empty()
    boxes, lms, has = zip(*faces)
    return Faces(np.asarray(boxes, np.float32), np.asarray(lms, np.float32), np.asarray(has, bool),
                 np.arange(len(faces), dtype=np.int32))


def _numpy(faces):
    return Faces(*(np.asarray(f) for f in faces))


def _jpeg(height, width, seed=0, ext=".jpg"):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8), (width, height))
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _seed(i):
    return tf.constant([i, 17], tf.int64)


FACES = _faces(_face([100, 80, 180, 190]), _face([300, 150, 340, 200], landmarks=False), _face([500, 300, 560, 370]))


def test_adjust_saturation_hue_matches_tf_image():
    x = tf.random.uniform([40, 50, 3], 0, 255, seed=3)
    for s, d in ((1.4, 0.1), (0.5, -0.1), (1.0, 0.05), (1.5, 0.0)):
        ours = aug.adjust_saturation_hue(x, s, d)
        ref = tf.image.adjust_hue(tf.image.adjust_saturation(x / 255.0, s), d) * 255.0
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=2e-3)


def test_distort_colors_stays_in_range_and_skips_with_the_right_probability():
    x = tf.random.uniform([16, 16, 3], 0, 255, seed=4)
    unchanged = 0
    distort = tf.function(aug.distort_colors)
    for i in range(320):
        y = distort(x, _seed(i)).numpy()
        assert y.min() >= 0.0 and y.max() <= 255.0
        unchanged += np.array_equal(y, x.numpy())
    # All four distortions are off with probability 1/16: 20 expected of 320.
    assert 8 <= unchanged <= 35


def test_crop_windows_follow_the_reference_rules():
    h, w = 480, 640
    boxes = tf.constant(FACES.boxes)
    sides = {int(s * h) for s in DataConfig.crop_scales}
    seen = set()
    for i in range(40):
        found, window, keep = (t.numpy() for t in aug.sample_square_crop(boxes, h, w, _seed(i)))
        assert found
        top, left, ch, cw = window
        assert ch == cw and ch in sides and 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        seen.add(int(ch))
        b = FACES.boxes
        inside = (b[:, 0] >= left) & (b[:, 1] >= top) & (b[:, 2] <= left + cw) & (b[:, 3] <= top + ch)
        assert inside.any()  # at least one whole face
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        np.testing.assert_array_equal(keep, (left < cx) & (cx < left + cw) & (top < cy) & (cy < top + ch))
    assert len(seen) >= 3  # several scales drawn


def test_no_square_fits_means_whole_image():
    boxes = tf.constant([[0.0, 50.0, 640.0, 350.0]])  # wider than the short side
    found, window, keep = aug.sample_square_crop(boxes, 400, 640, _seed(0))
    assert not found.numpy()
    assert window.numpy().tolist() == [0, 0, 400, 640] and keep.numpy().all()


def test_mirror_faces_swaps_left_and_right():
    face = _faces(([0.2, 0.1, 0.5, 0.6], np.reshape([0.25, 0.3, 0.45, 0.31, 0.35, 0.4, 0.27, 0.5, 0.44, 0.52], (5, 2)),
                   True)).to_tensors()
    m = _numpy(aug.mirror_faces(face))
    np.testing.assert_allclose(m.boxes[0], [0.5, 0.1, 0.8, 0.6], atol=1e-6)
    lm, mlm = face.landmarks.numpy()[0], m.landmarks[0]
    for i, j in enumerate(MIRROR_LANDMARK_ORDER):
        np.testing.assert_allclose(mlm[i], [1.0 - lm[j, 0], lm[j, 1]], atol=1e-6)
    # The new left eye is the old right eye: still left of the new right eye.
    assert mlm[0, 0] < mlm[1, 0] and mlm[3, 0] < mlm[4, 0]
    twice = _numpy(aug.mirror_faces(aug.mirror_faces(face)))
    for got, want in zip(twice, face):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


def test_augment_mirror_flips_image_and_faces():
    contents = tf.constant(_jpeg(480, 640))
    for i in range(4):
        img0, f0 = aug.augment(contents, FACES, _seed(i), image_size=SIZE, mirror_probability=0.0)
        img1, f1 = aug.augment(contents, FACES, _seed(i), image_size=SIZE, mirror_probability=1.0)
        np.testing.assert_array_equal(img1.numpy(), img0.numpy()[:, ::-1])
        for got, want in zip(_numpy(f1), _numpy(aug.mirror_faces(f0))):
            np.testing.assert_allclose(got, want, atol=1e-6)


def _check_sample(image, faces, encoded, expect_positive=None):
    targets, masks = encoded
    image, faces = image.numpy(), _numpy(faces)
    assert image.shape == (SIZE, SIZE, 3) and np.isfinite(image).all()
    assert image.min() >= -123.0 - 1e-3 and image.max() <= 255.0 - 104.0 + 1e-3  # BGR minus mean
    boxes = faces.boxes
    assert ((boxes >= 0.0) & (boxes <= 1.0)).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
    positive, with_landmarks = (masks[k].numpy().astype(bool) for k in ("bbox", "landmarks"))
    np.testing.assert_array_equal(targets["classes"].numpy(), positive)
    for v in targets.values():
        assert np.isfinite(v.numpy()).all()
    pos = np.flatnonzero(positive)
    if expect_positive is not None:
        assert (len(pos) > 0) == expect_positive
    if len(pos):
        decoded = decode_boxes(tf.constant(targets["bbox"].numpy()[pos]), tf.constant(ANCHORS[pos])).numpy()
        dist = np.abs(decoded[:, None, :] - boxes[None]).max(-1)
        assert dist.min(axis=1).max() < 1e-4  # every positive decodes to a face
        which = dist.argmin(axis=1)
        np.testing.assert_array_equal(faces.has_landmarks[which], with_landmarks[pos])
        pos1 = with_landmarks[pos]
        if pos1.any():
            lms = decode_landmarks(tf.constant(targets["landmarks"].numpy()[pos][pos1]),
                                   tf.constant(ANCHORS[pos][pos1])).numpy()
            np.testing.assert_allclose(lms, faces.landmarks[which[pos1]], atol=1e-4)
    return positive


def test_augment_invariants_and_targets_decode_to_faces():
    contents = tf.constant(_jpeg(480, 640))
    total_pos = 0
    for i in range(12):
        image, faces = aug.augment(contents, FACES, _seed(i), image_size=SIZE)
        assert 1 <= faces.boxes.shape[0] <= 3
        positive = _check_sample(image, faces, encode_faces(faces, ANCHORS))
        total_pos += positive.sum()
    assert total_pos > 0


def test_padded_when_no_crop_fits():
    contents = tf.constant(_jpeg(200, 640))
    faces = _faces(_face([0, 20, 640, 180]))  # no square of the short side holds it
    image, out = aug.augment(contents, faces, _seed(1), image_size=SIZE, mirror_probability=0.0)
    content_rows = round(200 * SIZE / 640)
    np.testing.assert_array_equal(image.numpy()[content_rows:], 0.0)  # mean padding, undistorted
    assert np.abs(image.numpy()[:content_rows]).max() > 0
    np.testing.assert_allclose(out.boxes.numpy()[0], [0, 20 / 640, 1.0, 180 / 640], atol=1e-6)


def test_image_whose_only_face_is_tiny_yields_valid_sample():
    contents = tf.constant(_jpeg(480, 640, seed=2))
    faces = _faces(_face([300, 200, 303, 203]))
    for i in range(4):
        image, out = aug.augment(contents, faces, _seed(i), image_size=SIZE)
        _check_sample(image, out, encode_faces(out, ANCHORS), expect_positive=False)


def test_png_and_graph_mode():
    fn = tf.function(lambda c, f, s: (lambda im, fa: (im, fa, encode_faces(fa, ANCHORS)))(
        *aug.augment(c, f, s, image_size=SIZE)),
        input_signature=[tf.TensorSpec([], tf.string),
                         Faces(tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 5, 2], tf.float32),
                               tf.TensorSpec([None], tf.bool), tf.TensorSpec([None], tf.int32)),
                         tf.TensorSpec([2], tf.int64)])
    for ext, faces in ((".png", FACES), (".jpg", Faces(*(f[:1] for f in FACES))), (".jpg", Faces.empty())):
        image, out, encoded = fn(tf.constant(_jpeg(480, 640, ext=ext)), faces, _seed(5))
        _check_sample(image, out, encoded, expect_positive=True if len(faces.boxes) else False)


def test_pad_and_resize_is_deterministic_and_relative_to_the_long_side():
    contents = tf.constant(_jpeg(480, 640))
    image, faces = aug.pad_and_resize(contents, FACES, image_size=SIZE)
    again, _ = aug.pad_and_resize(contents, FACES, image_size=SIZE)
    np.testing.assert_array_equal(image.numpy(), again.numpy())
    np.testing.assert_allclose(faces.boxes.numpy(), FACES.boxes / 640.0, atol=1e-6)
    np.testing.assert_array_equal(image.numpy()[SIZE * 3 // 4 + 1:], 0.0)


@pytest.mark.parametrize("jit", [True, False])
def test_jit_and_plain_pixel_chain_agree(jit):
    contents = tf.constant(_jpeg(480, 640))
    a, fa = aug.augment(contents, FACES, _seed(9), image_size=SIZE, jit_compile=jit)
    b, fb = aug.augment(contents, FACES, _seed(9), image_size=SIZE, jit_compile=not jit)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=0.05)
    for x, y in zip(_numpy(fa), _numpy(fb)):
        np.testing.assert_array_equal(x, y)
