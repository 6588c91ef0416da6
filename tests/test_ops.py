"""Box formats, anchors, box coder and NMS."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.ops import boxes as B
from retinaface_tf.ops.anchors import generate_anchors, generate_anchors_np, num_anchors
from retinaface_tf.ops.box_coder import decode_boxes, decode_landmarks, encode_boxes, encode_landmarks
from retinaface_tf.ops.nms import batched_nms


# ---------------------------------------------------------------- box formats
def test_formats_match_keras_vocabulary():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.5, (7, 2)).astype(np.float32)
    xyxy = np.concatenate([xy, xy + rng.uniform(0.01, 0.5, (7, 2)).astype(np.float32)], -1)
    kc = keras.utils.bounding_boxes.convert_format
    center = kc(xyxy, source="xyxy", target="center_xywh")
    np.testing.assert_allclose(B.xyxy_to_center_xywh(xyxy), center, atol=1e-6)
    np.testing.assert_allclose(B.xyxy_to_center_xywh(tf.constant(xyxy)), center, atol=1e-6)
    np.testing.assert_allclose(B.center_xywh_to_xyxy(np.asarray(center)), xyxy, atol=1e-6)
    np.testing.assert_allclose(B.xyxy_to_yxyx(tf.constant(xyxy)), kc(xyxy, source="xyxy", target="yxyx"), atol=1e-6)
    # WIDER's xywh is the top-left corner form, Keras' "xywh"
    np.testing.assert_allclose(B.xyxy_to_xywh(xyxy), kc(xyxy, source="xyxy", target="xywh"), atol=1e-6)
    np.testing.assert_allclose(B.xywh_to_xyxy(B.xyxy_to_xywh(xyxy)), xyxy, atol=1e-6)


def test_wrong_box_width_is_rejected():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        B.xyxy_to_center_xywh(np.zeros((3, 5)))


def test_iou_matches_keras_and_plus_one():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float32)
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 5, 5]], np.float32)
    ious = B.iou_matrix(tf.constant(a), tf.constant(b)).numpy()
    np.testing.assert_allclose(ious, [[1, 0, 0.25], [25 / 175, 25 / 175, 0]], atol=1e-6)
    np.testing.assert_allclose(B.iou_matrix_np(a, b), ious, atol=1e-6)
    np.testing.assert_allclose(ious, keras.utils.bounding_boxes.compute_iou(a, b, "xyxy"), atol=1e-6)
    # +1 areas: 11x11 boxes; [0,0,10,10] vs [10,10,20,20] share one pixel
    assert B.iou_matrix_np(a[:1], b[1:2], plus_one=True)[0, 0] == pytest.approx(1 / 241)


# ---------------------------------------------------------------- anchors
def test_anchor_golden_values_640():
    a = generate_anchors_np(640, 640)
    assert a.shape == (16800, 4) and num_anchors(640, 640) == 16800
    np.testing.assert_allclose(a[:2], [[4 / 640, 4 / 640, 16 / 640, 16 / 640], [4 / 640, 4 / 640, 32 / 640, 32 / 640]])
    np.testing.assert_allclose(a[2], [12 / 640, 4 / 640, 16 / 640, 16 / 640])  # next column
    np.testing.assert_allclose(a[160], [4 / 640, 12 / 640, 16 / 640, 16 / 640])  # next row (80 cols x 2)
    np.testing.assert_allclose(a[12800], [8 / 640, 8 / 640, 64 / 640, 64 / 640])  # level 2 starts after 80*80*2
    np.testing.assert_allclose(a[-1], [624 / 640, 624 / 640, 512 / 640, 512 / 640])  # centre of cell 19: 19.5 * 32


@pytest.mark.parametrize("h, w", [(640, 640), (624, 1024), (75, 101), (333, 517)])
def test_anchors_tf_equals_numpy_any_size(h, w):
    tf_anchors = tf.function(generate_anchors)(tf.constant(h), tf.constant(w)).numpy()
    np_anchors = generate_anchors_np(h, w)
    assert tf_anchors.shape == np_anchors.shape == (num_anchors(h, w), 4)
    np.testing.assert_allclose(tf_anchors, np_anchors, atol=1e-6)


def test_anchors_equal_reference_priors(reference_dir):
    ref = np.load(reference_dir / "biubug6_test.npz")
    np.testing.assert_allclose(generate_anchors_np(624, 1024), ref["priors"], atol=1e-7)
    np.testing.assert_allclose(generate_anchors(624, 1024).numpy(), ref["priors"], atol=1e-6)


# ---------------------------------------------------------------- box coder
def test_encode_decode_round_trip():
    rng = np.random.default_rng(1)
    anchors = generate_anchors_np(160, 96)
    centers = rng.uniform(0.1, 0.9, (len(anchors), 2))
    sizes = rng.uniform(0.01, 0.3, (len(anchors), 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1).astype(np.float32)
    deltas = encode_boxes(boxes, anchors)
    np.testing.assert_allclose(decode_boxes(deltas, anchors).numpy(), boxes, atol=1e-5)
    lms = rng.uniform(0, 1, (len(anchors), 5, 2)).astype(np.float32)
    ld = encode_landmarks(lms, anchors)
    assert ld.shape == (len(anchors), 10)
    np.testing.assert_allclose(decode_landmarks(ld, anchors).numpy(), lms, atol=1e-5)


def test_decode_hand_example():
    anchor = np.array([[0.5, 0.5, 0.1, 0.2]], np.float32)
    # dx=1 moves the centre by 0.1*0.1; dw=ln(2)/0.2 doubles the width
    d = np.array([[1.0, 0.0, np.log(2) / 0.2, 0.0]], np.float32)
    np.testing.assert_allclose(decode_boxes(d, anchor).numpy(), [[0.41, 0.4, 0.61, 0.6]], atol=1e-6)


# ---------------------------------------------------------------- NMS
def _greedy_nms(boxes, scores, thr, iou, top_k, keep):
    """Brute force: the reference's py_cpu_nms, after its threshold and top-k."""
    idx = np.where(scores > thr)[0]
    idx = idx[np.argsort(-scores[idx], kind="stable")][:top_k]
    kept = []
    for i in idx:
        if all(B.iou_matrix_np(boxes[i:i + 1], boxes[j:j + 1], plus_one=True)[0, 0] <= iou for j in kept):
            kept.append(i)
    return kept[:keep]


@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    bsz, n = 3, 300
    xy = rng.uniform(0, 200, (bsz, n, 2))
    wh = rng.uniform(2, 60, (bsz, n, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (bsz, n)).astype(np.float32)
    idx, num = batched_nms(tf.constant(boxes), tf.constant(scores), score_threshold=0.3, iou_threshold=0.4,
                           pre_nms_top_k=150, max_detections=40)
    idx, num = idx.numpy(), num.numpy()
    assert idx.shape == (bsz, 40)
    for b in range(bsz):
        expected = _greedy_nms(boxes[b], scores[b], 0.3, 0.4, 150, 40)
        assert num[b] == len(expected)
        assert list(idx[b, :num[b]]) == expected
        assert (idx[b, num[b]:] == 0).all()


def test_nms_plus_one_pixel_convention():
    # two 10x10-pixel boxes offset by 4 px: IoU is 0.385 without +1 areas but 0.4286 with them,
    # so the reference (+1) suppresses the second one at threshold 0.4.
    boxes = tf.constant([[[0, 0, 9, 9], [0, 4, 9, 13]]], tf.float32)
    scores = tf.constant([[0.9, 0.8]])
    _, num = batched_nms(boxes, scores, score_threshold=0.0, iou_threshold=0.4, pre_nms_top_k=10, max_detections=5)
    assert num.numpy()[0] == 1
    _, num = batched_nms(boxes, scores, score_threshold=0.0, iou_threshold=0.4, pre_nms_top_k=10,
                         max_detections=5, plus_one_pixel=False)
    assert num.numpy()[0] == 2


def test_nms_no_box_above_threshold():
    idx, num = batched_nms(tf.zeros([2, 50, 4]), tf.fill([2, 50], 0.01), score_threshold=0.02, iou_threshold=0.4,
                           pre_nms_top_k=10, max_detections=5)
    assert num.numpy().tolist() == [0, 0] and idx.shape == (2, 5)


@pytest.mark.parametrize("threshold", [0.02, 0.5, 0.97])
def test_postprocess_equals_decode_then_brute_force_nms(threshold):
    """Top-k shrinks to the candidates above the threshold (and differs per image of a batch);
    the detections must equal decoding every anchor and running the reference's NMS."""
    from retinaface_tf.ops.nms import face_probability, postprocess

    rng = np.random.default_rng(3)
    h, w = 96, 128
    anchors = generate_anchors_np(h, w)
    n = len(anchors)
    deltas = rng.normal(0, 0.5, (2, n, 4)).astype(np.float32)
    lms = rng.normal(0, 0.5, (2, n, 10)).astype(np.float32)
    logits = rng.normal(0, 2, (2, n, 2)).astype(np.float32)
    logits[1, :, 1] -= 3.0  # image 1 has far fewer confident anchors than image 0
    scores = face_probability(tf.constant(logits)).numpy()
    np.testing.assert_allclose(scores, tf.nn.softmax(logits)[..., 1].numpy(), atol=1e-6)
    out = postprocess(tf.constant(deltas), tf.constant(scores), tf.constant(lms), tf.constant(anchors),
                      input_size=(h, w), output_scale=tf.constant([[1.0, 1.0], [2.0, 2.0]]),
                      score_threshold=threshold, iou_threshold=0.4, pre_nms_top_k=300, max_detections=50)
    for b, scale in enumerate((1.0, 2.0)):
        boxes = decode_boxes(deltas[b], anchors).numpy() * np.array([w, h, w, h]) * scale
        keep = _greedy_nms(boxes, scores[b], threshold, 0.4, 300, 50)
        k = int(out["num_detections"][b])
        assert k == len(keep)
        np.testing.assert_allclose(out["boxes"][b, :k].numpy(), boxes[keep], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(out["scores"][b, :k].numpy(), scores[b][keep], atol=1e-7)
        expected_lm = decode_landmarks(lms[b][keep], anchors[keep]).numpy() * np.array([w, h]) * scale
        np.testing.assert_allclose(out["landmarks"][b, :k].numpy(), expected_lm, rtol=1e-5, atol=1e-3)
        assert not out["boxes"][b, k:].numpy().any()


def test_postprocess_on_merged_head_columns_equals_split_heads():
    """Heads given as ``HeadColumns`` of one merged tensor (rows gathered, then sliced) give the
    detections of the split tensors, bit for bit; the face probability reads the class columns."""
    from retinaface_tf.ops.nms import HeadColumns, face_probability, postprocess

    rng = np.random.default_rng(5)
    h, w = 64, 96
    anchors = tf.constant(generate_anchors_np(h, w))
    n = anchors.shape[0]
    merged = tf.constant((rng.normal(0, 1, (2, n, 16)) * np.r_[[0.5] * 4, [3.0] * 2, [0.5] * 10]).astype(np.float32))
    split = dict(zip(("bbox", "classes", "landmarks"), tf.split(merged, [4, 2, 10], axis=-1)))
    cols = {"bbox": HeadColumns(merged, 0, 4), "classes": HeadColumns(merged, 4, 2), "landmarks": HeadColumns(merged, 6, 10)}
    np.testing.assert_array_equal(face_probability(cols["classes"]).numpy(), face_probability(split["classes"]).numpy())
    outs = [postprocess(d["bbox"], face_probability(d["classes"]), d["landmarks"], anchors, input_size=(h, w),
                        output_scale=tf.ones([2, 2]), score_threshold=0.3, iou_threshold=0.4, pre_nms_top_k=100,
                        max_detections=20) for d in (split, cols)]
    assert int(outs[0]["num_detections"][0]) > 0
    for key in outs[0]:
        np.testing.assert_array_equal(outs[0][key].numpy(), outs[1][key].numpy(), err_msg=key)


def test_face_probability_in_litert_has_no_strided_column():
    """The plain ``[B, N, 2]`` path reads the two class columns with one SPLIT: in TFLite a
    last-axis STRIDED_SLICE per column cost 1.6 ms over a 1920x1080 image's anchors (the
    exported models' and the LiteRT runtime's post-processing). Same probability as the
    two-column form, bit for bit, in TensorFlow and in LiteRT (whose LOGISTIC is not TF's
    sigmoid to the last bit: within 2e-7)."""
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    from retinaface_tf.ops.nms import face_probability

    def columns(logits):
        return tf.sigmoid(logits[..., 1] - logits[..., 0])

    logits = np.random.default_rng(7).normal(0, 6, (1, 5000, 2)).astype(np.float32)
    np.testing.assert_array_equal(face_probability(tf.constant(logits)).numpy(), columns(logits).numpy())
    got = {}
    for fn in (face_probability, columns):
        concrete = tf.function(fn, input_signature=[tf.TensorSpec([1, None, 2], tf.float32)],
                               autograph=False).get_concrete_function()
        interp = Interpreter(model_content=tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert())
        interp.resize_tensor_input(interp.get_input_details()[0]["index"], logits.shape)
        interp.allocate_tensors()
        op_names = [op["op_name"] for op in interp._get_ops_details()]
        interp.set_tensor(interp.get_input_details()[0]["index"], logits)
        interp.invoke()
        got[fn.__name__] = (op_names, interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    ops, probability = got["face_probability"]
    assert "SPLIT" in ops and "STRIDED_SLICE" not in ops, ops
    assert got["columns"][0].count("STRIDED_SLICE") == 2  # what the two-column form converts to
    np.testing.assert_array_equal(probability, got["columns"][1])
    np.testing.assert_allclose(probability, columns(logits).numpy(), rtol=0, atol=2e-7)
