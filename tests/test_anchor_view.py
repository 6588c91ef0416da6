"""show-anchors on real WIDER train images: faces followed through the augmentation, positive
anchors per face and level checked against an independent IoU computation, the picture, the
table of faces without anchors, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

TINY = "19--Couple/19_Couple_Couple_19_309.jpg"  # 11 faces, 8 of them under 10 px at 640
CROWD = "19--Couple/19_Couple_Couple_19_773.jpg"  # 13 faces
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def train(widerface_dir):
    from retinaface_tf.data.widerface import read_annotations
    label = widerface_dir / "train" / "label.txt"
    return label, widerface_dir / "train" / "images", read_annotations(label)


def _view(train, rel, **kw):
    from retinaface_tf.vis.anchor_view import find_entry, match_view
    _, images, ann = train
    path = images / rel
    return find_entry(ann, path), match_view(path.read_bytes(), find_entry(ann, path), **kw)


def _expected_positives(view_boxes_rel, anchors, threshold=0.35, force=0.2):
    """Independent count: anchor a is a positive of face f if f is its best face with IoU >= 0.35,
    or a is f's best anchor and that IoU >= 0.2 (forced). Valid when no two faces share a best
    anchor (checked)."""
    from retinaface_tf.ops.boxes import center_xywh_to_xyxy, iou_matrix_np
    iou = iou_matrix_np(view_boxes_rel, center_xywh_to_xyxy(anchors))  # [F, N]
    best_face = iou.argmax(0)
    positive = iou.max(0) >= threshold
    owner = np.where(positive, best_face, -1)
    best_anchor = iou.argmax(1)
    assert len(set(best_anchor.tolist())) == len(best_anchor)
    for f, a in enumerate(best_anchor):
        if iou[f, a] >= force:
            owner[a] = f
    return owner


def test_letterbox_view_matches_independent_iou_count(train):
    from retinaface_tf.config import AnchorConfig
    from retinaface_tf.ops.anchors import generate_anchors_np
    entry, view = _view(train, TINY, augment=False)
    assert view.image.shape == (640, 640, 3) and view.image.dtype == np.uint8
    # letterbox: every face kept, boxes scaled by 640 / long side, index order preserved
    import cv2
    h, w = cv2.imread(str(train[1] / TINY)).shape[:2]
    assert [f.index for f in view.faces] == list(range(entry.num_faces)) == list(range(11))
    for f in view.faces:
        np.testing.assert_allclose(f.view_box, entry.faces.boxes[f.index] * 640 / max(h, w), atol=1e-3)
    anchors = generate_anchors_np(640, 640)
    owner = _expected_positives(np.stack([f.view_box for f in view.faces]) / 640, anchors)
    counts = np.array([f.positives for f in view.faces])
    level_of = np.repeat([0, 1, 2], [80 * 80 * 2, 40 * 40 * 2, 20 * 20 * 2])
    for f in range(11):
        want = [int(np.sum((owner == f) & (level_of == lv))) for lv in range(3)]
        assert list(counts[f]) == want, f
    assert [f.index for f in view.unmatched] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert counts.sum() == len(view.anchors_xyxy) == 16
    # the drawn anchors are the anchors themselves (pixel xyxy), sized by their level
    sizes = view.anchors_xyxy[:, 2] - view.anchors_xyxy[:, 0]
    for size, level in zip(sizes, view.anchor_levels):
        assert round(float(size)) in AnchorConfig.min_sizes[level]
    assert AnchorConfig.steps == view.steps


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_augmented_faces_keep_their_identity(train, seed):
    """After crop + resize (+ mirror) every kept, unclipped face is scaled by the same factor and
    keeps its aspect ratio: a mix-up of face indices would break this."""
    entry, view = _view(train, CROWD, seed=seed)
    kept = [f for f in view.faces if f.view_box is not None]
    assert kept
    ratios = []
    for f in kept:
        vw, vh = f.view_box[2] - f.view_box[0], f.view_box[3] - f.view_box[1]
        ow, oh = f.box[2] - f.box[0], f.box[3] - f.box[1]
        if f.view_box.min() > 0.5 and f.view_box.max() < 639.5:  # not clipped by the crop
            ratios += [vw / ow, vh / oh]
    assert len(ratios) >= 2
    np.testing.assert_allclose(ratios, ratios[0], rtol=2e-3)
    assert sum(f.total for f in view.faces) == len(view.anchors_xyxy)
    # every positive anchor overlaps the face it was counted for
    from retinaface_tf.ops.boxes import iou_matrix_np
    boxes = {f.index: f.view_box for f in kept}
    for anchor, face in zip(view.anchors_xyxy, view.anchor_faces):
        assert iou_matrix_np(anchor[None], boxes[int(face)][None])[0, 0] >= 0.2
    # the same seed gives the same view
    _, again = _view(train, CROWD, seed=seed)
    np.testing.assert_array_equal(view.image, again.image)
    np.testing.assert_array_equal(view.anchors_xyxy, again.anchors_xyxy)


def test_table_lists_faces_without_anchor(train):
    from retinaface_tf.vis.anchor_view import format_table
    _, view = _view(train, TINY, augment=False)
    table = format_table(view)
    lines = table.splitlines()
    assert lines[0].split() == ["face", "box", "xyxy", "(original", "px)", "w", "x", "h", "(view", "px)",
                                "s8", "s16", "s32", "total", "status"]
    row3 = lines[1 + 3].split()
    assert row3[0] == "3" and row3[1:5] == ["946", "269", "953", "280"] and row3[-6:] == ["0", "0", "0", "0", "NO", "ANCHOR"]
    assert lines[-1] == "faces with no anchor (8 of 11 in the view): 3, 4, 5, 6, 7, 8, 9, 10"


def test_find_entry(train, tmp_path):
    from retinaface_tf.vis.anchor_view import AnchorViewError, find_entry
    label, images, ann = train
    assert find_entry(ann, images / TINY).path == TINY
    assert find_entry(ann, tmp_path / "19_Couple_Couple_19_309.jpg").path == TINY  # by file name
    with pytest.raises(AnchorViewError, match=f"^{label}: no entry for .*nothere.jpg"):
        find_entry(ann, images / "19--Couple" / "nothere.jpg")


def test_show_anchors_cli_png_and_table(train, tmp_path, capsys):
    import cv2

    from retinaface_tf.cli import main
    label, images, _ = train
    out = tmp_path / "a.png"
    rc = main(["show-anchors", str(images / TINY), "--label-file", str(label), "--no-augment", "-o", str(out),
               "--scale", "1.5"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "faces with no anchor (8 of 11 in the view): 3, 4, 5, 6, 7, 8, 9, 10" in text
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pic = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert pic.shape == (960 + 4 * 20 + 6, 960, 3)  # 640 x 1.5, plus a 4-line legend strip
    red = (pic[:960, :, 2] > 200) & (pic[:960, :, 1] < 40) & (pic[:960, :, 0] < 40)
    assert red.sum() > 100  # the faces without anchors are drawn in red
    # halving the anchor sizes gives 6 of the 8 tiny faces an anchor
    rc = main(["show-anchors", str(images / TINY), "--label-file", str(label), "--no-augment", "-o", str(out),
               "--set", "anchors.min_sizes=[[8,16],[32,64],[128,256]]"])
    assert rc == 0
    assert "faces with no anchor (2 of 11 in the view): 4, 7" in capsys.readouterr().out


def test_show_anchors_cli_errors(train, tmp_path, capsys):
    from retinaface_tf.cli import main
    label, images, _ = train
    assert main(["show-anchors", str(tmp_path / "x.jpg"), "--label-file", str(label)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.jpg: no such file" in err
    other = tmp_path / "other.jpg"
    other.write_bytes((images / TINY).read_bytes())
    assert main(["show-anchors", str(other), "--label-file", str(label), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(f"{label}: no entry for {other} (no '# .../other.jpg' line)")
    assert main(["show-anchors", str(images / TINY), "--label-file", str(tmp_path / "none.txt")]) == 2
    assert "none.txt" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
