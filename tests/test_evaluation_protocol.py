"""WIDER FACE protocol: hand-worked APs, the per-prediction loop against its vectorised form,
prediction-file parsing errors, and the reference's own predictions scored to its own AP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retinaface_tf.evaluation import widerface as W

EV = "0--Parade"


def _gt(boxes_by_image, keep=None):
    return W.GroundTruth.from_boxes({(EV, n): b for n, b in boxes_by_image.items()},
                                    keep={(EV, n): k for n, k in (keep or {}).items()})


def _pred(rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


FACE_A = [10, 10, 20, 20]
FACE_B = [100, 50, 30, 40]
FAR = [400, 400, 15, 15]


# ----------------------------------------------------------------------------- hand-worked APs
def test_perfect_detector_has_ap_one():
    gt = _gt({"img": [FACE_A, FACE_B]})
    res = W.evaluate_predictions({(EV, "img"): _pred([FACE_A + [0.9], FACE_B + [0.8]])}, gt)
    assert res.ap == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    assert res.num_faces == {"easy": 2, "medium": 2, "hard": 2} and res.num_images == 1


def test_all_false_positives_have_ap_zero():
    gt = _gt({"img": [FACE_A, FACE_B]})
    res = W.evaluate_predictions({(EV, "img"): _pred([FAR + [0.9], [200, 10, 10, 10, 0.5]])}, gt)
    assert res.ap == {"easy": 0.0, "medium": 0.0, "hard": 0.0}


def test_hand_worked_ap_with_a_duplicate_and_a_false_positive():
    # Faces A, B. Scores normalise (min 0.3, max 0.9) to 1.0 (A), 0.75 (A again: a duplicate
    # stays a proposal, i.e. a false positive), 0.5 (far: FP), 0.0 (B).
    # Thresholds > 0.75: {A} P=1 R=1/2; (0.5, 0.75]: P=1/2; (0, 0.5]: P=1/3 R=1/2; 0: P=2/4 R=1.
    # Envelope at R=1/2 is 1, at R=1 is 1/2 -> AP = 1/2 * 1 + 1/2 * 1/2 = 0.75.
    gt = _gt({"img": [FACE_A, FACE_B]})
    pred = _pred([FACE_A + [0.9], [11, 10, 20, 20, 0.75], FAR + [0.6], FACE_B + [0.3]])
    res = W.evaluate_predictions({(EV, "img"): pred}, gt)
    assert res.ap["easy"] == pytest.approx(0.75, abs=1e-12)
    # Precision / recall at the first and last thresholds.
    assert res.precision["hard"][0] == 1.0 and res.recall["hard"][0] == 0.5
    assert res.precision["hard"][-1] == 0.5 and res.recall["hard"][-1] == 1.0


def test_ignored_faces_neither_help_nor_hurt():
    # B counts in hard only. A top-scored box on B is no FP for easy; missing B costs easy nothing.
    gt = _gt({"img": [FACE_A, FACE_B]}, keep={"img": {"easy": [0], "medium": [0]}})
    on_both = W.evaluate_predictions({(EV, "img"): _pred([FACE_B + [0.95], FACE_A + [0.9]])}, gt)
    assert on_both.ap["easy"] == 1.0 and on_both.ap["hard"] == 1.0
    assert on_both.num_faces == {"easy": 1, "medium": 1, "hard": 2}
    only_a = W.evaluate_predictions({(EV, "img"): _pred([FACE_A + [0.9], FAR + [0.1]])}, gt)
    assert only_a.ap["easy"] == 1.0
    # Hard misses B and has FAR as FP: R=1/2 at P=1 -> AP 0.5.
    assert only_a.ap["hard"] == pytest.approx(0.5)
    # Without the ignore rule the top box on B would be a false positive in easy (AP < 1).
    gt_all = _gt({"img": [FACE_A]})
    with_fp = W.evaluate_predictions({(EV, "img"): _pred([FACE_B + [0.95], FACE_A + [0.9]])}, gt_all)
    assert with_fp.ap["easy"] == pytest.approx(0.5)


def test_iou_uses_plus_one_pixel_areas():
    # gt 10x10 at xywh (0,0,9,9) -> xyxy (0,0,9,9): +1 area 100; pred (0,0,4,9): +1 area 50,
    # intersection 50 -> IoU exactly 0.5 (matched). Without +1 it would be 36/81 < 0.5.
    gt = _gt({"img": [[0, 0, 9, 9]]})
    best, iou = W.match_predictions(_pred([[0, 0, 4, 9, 1.0]]), gt.images[(EV, "img")].boxes)
    assert best.tolist() == [0] and iou[0] == 0.5
    res = W.evaluate_predictions({(EV, "img"): _pred([[0, 0, 4, 9, 0.9], [0, 0, 3, 9, 0.5]])}, gt)
    assert res.ap["easy"] == 1.0


def test_unmatched_images_still_count_their_faces_and_subset_restricts():
    gt = _gt({"a": [FACE_A], "b": [FACE_B], "c": [FACE_A, FACE_B]})
    preds = {(EV, "a"): _pred([FACE_A + [0.9], FAR + [0.2]]), (EV, "b"): _pred([])}
    res = W.evaluate_predictions(preds, gt)
    # Image c has no prediction file: not scored. b is scored with no boxes: its face counts.
    assert res.num_images == 2 and res.num_ground_truth_images == 3 and res.num_faces["easy"] == 2
    assert res.ap["easy"] == pytest.approx(0.5)
    assert "scored 2 images (subset of 3)" in res.format_table()


def test_prediction_order_and_affine_score_changes_do_not_matter():
    rng = np.random.default_rng(0)
    gt_boxes = {f"i{k}": np.c_[rng.uniform(0, 500, (12, 2)), rng.uniform(8, 60, (12, 2))] for k in range(6)}
    gt = _gt(gt_boxes, keep={n: {"easy": [0, 1, 2], "medium": list(range(7))} for n in gt_boxes})
    preds = {}
    for n, b in gt_boxes.items():
        jitter = b + rng.normal(0, 3, b.shape)
        fps = np.c_[rng.uniform(0, 500, (20, 2)), rng.uniform(8, 60, (20, 2))]
        boxes = np.r_[jitter, fps]
        preds[(EV, n)] = np.c_[boxes, rng.uniform(0.02, 1, len(boxes))]
    base = W.evaluate_predictions(preds, gt)
    shuffled = {k: v[rng.permutation(len(v))] for k, v in preds.items()}
    affine = {k: np.c_[v[:, :4], 3 * v[:, 4] - 7] for k, v in preds.items()}
    for other in (W.evaluate_predictions(shuffled, gt), W.evaluate_predictions(affine, gt)):
        for s in W.SETTINGS:
            assert other.ap[s] == pytest.approx(base.ap[s], abs=1e-12)
    assert all(0.05 < base.ap[s] < 1.0 for s in W.SETTINGS)


def _loop_image_pr(pred, gt_xywh, keep, num_thresholds=1000, iou_threshold=0.5):
    """The protocol written out literally, one prediction at a time (predictions already in
    descending score order), to check the vectorised version against."""
    from retinaface_tf.ops.boxes import iou_matrix_np, xywh_to_xyxy

    ov = iou_matrix_np(xywh_to_xyxy(pred[:, :4]), xywh_to_xyxy(gt_xywh), plus_one=True)
    recall_state = np.zeros(len(gt_xywh))
    proposal = np.ones(len(pred))
    pred_recall = np.zeros(len(pred))
    for h in range(len(pred)):
        j = int(np.argmax(ov[h]))
        if ov[h, j] >= iou_threshold:
            if not keep[j]:
                recall_state[j] = -1
                proposal[h] = -1
            elif recall_state[j] == 0:
                recall_state[j] = 1
        pred_recall[h] = np.sum(recall_state == 1)
    out = np.zeros((num_thresholds, 2))
    for t in range(num_thresholds):
        thr = 1 - (t + 1) / num_thresholds
        idx = np.where(pred[:, 4] >= thr)[0]
        if len(idx):
            last = idx[-1]
            out[t] = [np.sum(proposal[:last + 1] == 1), pred_recall[last]]
    return out


def test_vectorised_image_counts_equal_the_literal_loop():
    rng = np.random.default_rng(1)
    for trial in range(20):
        g = int(rng.integers(1, 25))
        gt = np.c_[rng.uniform(0, 300, (g, 2)), rng.uniform(5, 50, (g, 2))]
        dup = gt[rng.integers(0, g, 30)] + rng.normal(0, 4, (30, 4))  # duplicates and near-misses
        fps = np.c_[rng.uniform(0, 300, (10, 2)), rng.uniform(5, 50, (10, 2))]
        boxes = np.r_[dup, fps]
        scores = np.round(rng.uniform(0, 1, len(boxes)), 2)  # ties on purpose
        order = np.argsort(-scores, kind="stable")
        pred = np.c_[boxes, scores][order]
        keep = rng.uniform(size=g) < 0.6
        best, iou = W.match_predictions(pred, gt)
        p, r = W.image_pr_counts(pred[:, 4], best, iou, keep, W.thresholds(1000))
        expected = _loop_image_pr(pred, gt, keep)
        np.testing.assert_array_equal(p, expected[:, 0], err_msg=f"trial {trial}")
        np.testing.assert_array_equal(r, expected[:, 1], err_msg=f"trial {trial}")


def test_voc_ap_on_a_small_curve():
    # recall 0.5 @ precision 0.6 then 1.0 @ 0.8: the envelope lifts the first point to 0.8.
    assert W.voc_ap(np.array([0.5, 1.0]), np.array([0.6, 0.8])) == pytest.approx(0.8)
    assert W.thresholds(1000)[0] == pytest.approx(0.999) and W.thresholds(1000)[-1] == 0.0


# ----------------------------------------------------------------------------- files
def test_writer_truncates_like_the_reference_and_reads_back(tmp_path):
    path = W.write_prediction_file(tmp_path, EV, "img_1", np.array([[10.7, -0.6, 30.2, 40.9]]), np.array([0.9872032], dtype=np.float32))
    lines = path.read_text().splitlines()
    assert lines == ["img_1", "1", "10 0 20 40 0.9872032 "]
    name, boxes = W.read_prediction_file(path)
    assert name == "img_1" and boxes.tolist() == [[10.0, 0.0, 20.0, 40.0, 0.9872032]]


def _write(tmp_path, rel, text):
    p = tmp_path / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_malformed_prediction_files_name_file_and_line(tmp_path):
    bad = _write(tmp_path, f"{EV}/a.txt", "a\n2\n1 2 3 4 0.5\n1 2 3 0.4\n")
    with pytest.raises(W.PredictionError, match=r"a\.txt:4: expected 'x y w h score'"):
        W.read_prediction_file(bad)
    count = _write(tmp_path, f"{EV}/b.txt", "b\n3\n1 2 3 4 0.5\n")
    with pytest.raises(W.PredictionError, match=r"b\.txt:2: count says 3 faces but the file has 1"):
        W.read_prediction_file(count)
    text = _write(tmp_path, f"{EV}/c.txt", "c\nmany\n")
    with pytest.raises(W.PredictionError, match=r"c\.txt:2: expected the number of faces"):
        W.read_prediction_file(text)
    nan = _write(tmp_path, f"{EV}/d.txt", "d\n2\n\n1 2 3 4 0.5\n1 2 x 4 0.5\n")
    with pytest.raises(W.PredictionError, match=r"d\.txt:5: non-numeric value in '1 2 x 4 0.5'"):
        W.read_prediction_file(nan)


def test_prediction_folder_errors(tmp_path):
    gt = _gt({"a": [FACE_A], "b": [FACE_B]})
    _write(tmp_path, f"{EV}/a.txt", "0--Parade/a.jpg\n1\n10 10 20 20 0.9\n")
    preds = W.read_predictions(tmp_path, gt)
    assert list(preds) == [(EV, "a")]
    with pytest.raises(W.PredictionError, match=r"b\.txt: missing prediction file"):
        W.read_predictions(tmp_path, gt, expected=gt.images)
    _write(tmp_path, f"{EV}/zz.txt", "zz\n0\n")
    with pytest.raises(W.PredictionError, match=r"zz\.txt: image 'zz' is not in event"):
        W.read_predictions(tmp_path, gt)
    (tmp_path / EV / "zz.txt").unlink()
    _write(tmp_path, f"{EV}/b.txt", "a\n0\n")
    with pytest.raises(W.PredictionError, match=r"b\.txt:1: names image 'a'"):
        W.read_predictions(tmp_path, gt)
    (tmp_path / EV / "b.txt").unlink()
    _write(tmp_path, "99--Nope/a.txt", "a\n0\n")
    with pytest.raises(W.PredictionError, match=r"99--Nope: unknown event"):
        W.read_predictions(tmp_path, gt)
    with pytest.raises(W.PredictionError, match="prediction folder not found"):
        W.read_predictions(tmp_path / "missing", gt)


def test_missing_ground_truth_file_is_named(tmp_path):
    with pytest.raises(W.GroundTruthError, match=r"wider_face_val\.mat: missing"):
        W.load_ground_truth(tmp_path)


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def val_ground_truth(widerface_dir):
    return W.load_ground_truth(widerface_dir / "ground_truth")


def test_official_ground_truth_counts(val_ground_truth):
    gt = val_ground_truth
    assert len(gt) == 3226 and len(gt.events) == 61
    assert {s: gt.num_faces(s) for s in W.SETTINGS} == {"easy": 7211, "medium": 13319, "hard": 31958}
    assert gt.images[("0--Parade", "0_Parade_marchingband_1_465")].boxes[0].tolist() == [345, 211, 4, 4]


def test_reference_predictions_score_the_reference_ap(widerface_dir, val_ground_truth):
    """The reference's own predictions, scored here, reproduce the AP its own code computed."""
    ref = json.loads((widerface_dir / "val" / "REFERENCE_AP.json").read_text())
    res = W.evaluate_folder(widerface_dir / "val" / "reference_predictions", val_ground_truth)
    assert res.num_images == ref["images"] == 310
    for s in W.SETTINGS:
        assert res.ap[s] == pytest.approx(ref[s], abs=1e-9), s
