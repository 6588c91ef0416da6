"""Anchor matcher: equal to the reference on its fixed batch, and hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.ops.anchors import generate_anchors_np
from retinaface_tf.ops.box_coder import decode_boxes, decode_landmarks
from retinaface_tf.ops.boxes import center_xywh_to_xyxy, iou_matrix_np
from retinaface_tf.ops.faces import Faces
from retinaface_tf.ops.matcher import match_anchors, match_anchors_bucketed

ANCHORS = generate_anchors_np(640, 640)


@pytest.fixture(scope="module")
def reference(reference_dir):
    return dict(np.load(reference_dir / "multibox_loss.npz"))


def reference_faces(rows):
    """The reference's ``[F, 15]`` target rows (xyxy, 10 landmark coordinates, label 1 / -1)."""
    rows = np.asarray(rows, np.float32).reshape(-1, 15)
    return Faces(rows[:, :4], rows[:, 4:14].reshape(-1, 5, 2), rows[:, 14] > 0, np.arange(len(rows), dtype=np.int32))


@pytest.mark.parametrize("matcher", [match_anchors, match_anchors_bucketed])
def test_matches_reference_batch(reference, matcher):
    np.testing.assert_array_equal(reference["priors"], ANCHORS)
    for b in range(2):
        t = reference[f"targets_{b}"]
        box_t, lm_t, labels, _ = (x.numpy() for x in matcher(reference_faces(t), ANCHORS))
        conf_t = reference["conf_t"][b]
        np.testing.assert_array_equal(labels, conf_t)
        assert (conf_t == 1).sum() > 50 and (conf_t == -1).sum() >= 1  # the batch exercises both labels
        pos = conf_t != 0
        np.testing.assert_allclose(box_t[pos], reference["loc_t"][b][pos], atol=1e-5, rtol=0)
        pos1 = conf_t > 0
        np.testing.assert_allclose(lm_t[pos1], reference["landm_t"][b][pos1], atol=1e-5, rtol=0)
        # Unused targets are zeroed (the reference leaves garbage there).
        assert not box_t[~pos].any() and not lm_t[~pos1].any()


def _face(box, label=1.0):
    """A reference target row: box, landmarks at its corners and centre, label (1 / -1)."""
    x1, y1, x2, y2 = box
    lm = [x1, y1, x2, y1, (x1 + x2) / 2, (y1 + y2) / 2, x1, y2, x2, y2]
    return np.asarray([*box, *lm, label], np.float32)


def _match(faces, matcher=match_anchors, **kw):
    """``(box_t, labels, landmark_t, face_index)`` as numpy."""
    m = matcher(reference_faces(faces), ANCHORS, **kw)
    return [x.numpy() for x in (m.box_deltas, m.labels, m.landmark_deltas, m.face_index)]


def test_face_equal_to_an_anchor_is_matched_with_zero_deltas():
    k = 123  # a 16-pixel anchor of level 0
    box = center_xywh_to_xyxy(ANCHORS[k])
    box_t, labels, _, face_index = _match([_face(box)])
    assert labels[k] == 1 and face_index[k] == 0
    np.testing.assert_array_equal(face_index, np.where(labels != 0, 0, -1))
    np.testing.assert_allclose(box_t[k], 0.0, atol=1e-5)
    # Other positives are exactly the anchors with IoU >= 0.35.
    iou = iou_matrix_np(box[None], center_xywh_to_xyxy(ANCHORS))[0]
    np.testing.assert_array_equal(labels != 0, iou >= 0.35)


def test_landmarkless_face_is_positive_for_boxes_not_landmarks():
    box = center_xywh_to_xyxy(ANCHORS[5000])
    box_t, labels, lm_t, _ = _match([_face(box, label=-1.0)])
    assert set(np.unique(labels)) == {-1, 0}
    assert not lm_t.any()
    assert np.isfinite(box_t).all()


def test_tiny_face_and_no_face_give_all_background():
    for faces in ([_face([0.5, 0.5, 0.504, 0.504])], np.zeros((0, 15))):
        for matcher in (match_anchors, match_anchors_bucketed):
            box_t, labels, lm_t, face_index = _match(faces, matcher)
            assert labels.shape == (len(ANCHORS),) and not labels.any()
            assert not box_t.any() and not lm_t.any() and (face_index == -1).all()


def test_tiny_face_next_to_a_valid_face_does_not_block_it():
    big = _face([0.1, 0.1, 0.4, 0.45])
    tiny = _face([0.7, 0.7, 0.7031, 0.7031])
    _, labels, _, _ = _match([big, tiny])
    _, labels_alone, _, _ = _match([big])
    np.testing.assert_array_equal(labels, labels_alone)


def test_shared_best_anchor_goes_to_the_later_face():
    # Two faces centred on the same anchor, both with best anchor k: the reference's loop
    # `best_truth_idx[best_prior_idx[j]] = j` leaves the later face there.
    k = 2000
    cx, cy, w, h = ANCHORS[k]
    a = _face([cx - w * 0.55, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5], label=1.0)
    b = _face([cx - w * 0.5, cy - h * 0.55, cx + w * 0.5, cy + h * 0.5], label=-1.0)
    for faces, expect in (([a, b], -1), ([b, a], 1)):
        arr = np.stack(faces)
        iou = iou_matrix_np(arr[:, :4], center_xywh_to_xyxy(ANCHORS))
        assert (iou.argmax(axis=1) == k).all()
        _, labels, _, face_index = _match(faces)
        assert labels[k] == expect and face_index[k] == 1


def test_forced_best_anchor_below_threshold():
    # A face whose best IoU is in [0.2, 0.35) still gets exactly that one anchor.
    k = 700  # a 16-pixel anchor; the face is 0.58 of it (IoU 0.336), all other anchors far less
    cx, cy, w, h = ANCHORS[k]
    box = np.asarray([cx - w * 0.29, cy - h * 0.29, cx + w * 0.29, cy + h * 0.29])
    iou = iou_matrix_np(box[None], center_xywh_to_xyxy(ANCHORS))[0]
    assert 0.2 <= iou.max() < 0.35
    _, labels, _, _ = _match([_face(box)])
    assert np.flatnonzero(labels).tolist() == [int(iou.argmax())]


@pytest.mark.parametrize("num_faces", [1, 17, 70])
def test_bucketed_equals_plain_and_targets_decode_to_faces(num_faces):
    rng = np.random.default_rng(num_faces)
    xy = rng.uniform(0, 0.8, (num_faces, 2))
    wh = rng.uniform(0.01, 0.2, (num_faces, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, 1.0)], axis=1)
    faces = [_face(b, label=rng.choice([1.0, -1.0])) for b in boxes]
    plain = _match(faces)
    bucketed = _match(faces, match_anchors_bucketed)
    # XLA may round an IoU differently in the last bit; with 70 random faces a couple of anchors
    # sit on such near-ties (e.g. 0.31928253 vs 0.3192826), so allow a handful of differences.
    same = plain[1] == bucketed[1]
    assert (~same).sum() <= (0 if num_faces < 20 else 5)
    np.testing.assert_allclose(plain[0][same], bucketed[0][same], atol=1e-5)
    np.testing.assert_allclose(plain[2][same], bucketed[2][same], atol=1e-5)
    np.testing.assert_array_equal(plain[3][same], bucketed[3][same])
    for box_t, labels, lm_t, face_index in (plain, bucketed):
        _check_targets_decode_to_faces(faces, box_t, labels, lm_t, face_index)


def _check_targets_decode_to_faces(faces, box_t, labels, lm_t, face_index):
    pos = np.flatnonzero(labels)
    assert len(pos) > 0
    decoded = decode_boxes(tf.constant(box_t[pos]), tf.constant(ANCHORS[pos])).numpy()
    # Every positive decodes to one of the faces, the one with that label: its matched face.
    arr = np.stack(faces)
    dist = np.abs(decoded[:, None, :] - arr[None, :, :4]).max(axis=-1)
    which = dist.argmin(axis=1)
    assert dist.min(axis=1).max() < 1e-5
    np.testing.assert_array_equal(arr[which, 14], labels[pos])
    np.testing.assert_allclose(arr[face_index[pos], :4], arr[which, :4])
    pos1 = labels[pos] > 0
    lms = decode_landmarks(tf.constant(lm_t[pos][pos1]), tf.constant(ANCHORS[pos][pos1])).numpy()
    np.testing.assert_allclose(lms.reshape(-1, 10), arr[which[pos1], 4:14], atol=1e-5)


def test_runs_in_graph_with_dynamic_face_count():
    fn = tf.function(lambda f: match_anchors_bucketed(f, ANCHORS),
                     input_signature=[Faces(tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 5, 2], tf.float32),
                                            tf.TensorSpec([None], tf.bool), tf.TensorSpec([None], tf.int32))])
    for n in (0, 3):
        faces = np.stack([_face([0.1 * i, 0.1, 0.1 * i + 0.08, 0.2]) for i in range(n)]) if n else np.zeros((0, 15))
        labels = fn(reference_faces(faces)).labels
        assert (labels.numpy() != 0).any() == (n > 0)


def test_hard_face_keeps_its_best_anchor_as_in_the_reference_loop():
    """The reference forces `best_truth_idx[best_prior_idx[j]] = j` for every face, hard ones
    (best IoU < 0.2) too, but fills IoU 2 only for the valid ones: a hard face's best anchor that
    another face covers with IoU >= 0.35 is labelled and encoded with the *hard* face."""
    k = 2 * (30 * 80 + 30)  # 16-pixel anchor, level 0, row 30, column 30
    cx, cy = ANCHORS[k, :2]
    px = 1.0 / 640
    hard = _face([cx - px, cy - px, cx + px, cy + px], label=-1.0)  # 2 px: IoU 4/256 with anchor k
    big = _face([cx - 12 * px, cy - 12 * px, cx + 12 * px, cy + 12 * px], label=1.0)  # 24 px
    iou = iou_matrix_np(np.stack([hard, big])[:, :4], center_xywh_to_xyxy(ANCHORS))
    assert iou[0].argmax() == k and iou[0].max() < 0.2
    assert iou[1].argmax() != k and iou[1, k] >= 0.35
    box_t, labels, _, face_index = _match([big, hard])
    assert labels[k] == -1 and face_index[k] == 1
    decoded = decode_boxes(tf.constant(box_t[k]), tf.constant(ANCHORS[k])).numpy()
    np.testing.assert_allclose(decoded, hard[:4], atol=1e-6)
    assert labels[iou[1].argmax()] == 1
