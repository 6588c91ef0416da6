"""WIDER FACE annotation readers: the three layouts, line-numbered errors, dropped faces."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from retinaface_tf.data.widerface import (LabelFileError, MissingImagesError, check_images, read_annotations,
                                          read_retinaface_labels, read_wider_bbx_gt, read_wider_mat)
from retinaface_tf.errors import RetinaFaceError

FULL = "10 20 30 40 15.5 25.5 0.0 30.5 25.5 0.0 23.0 33.0 0.0 17.0 45.0 0.0 31.0 45.0 0.0 0.9"


def _write(tmp_path, text, name="label.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_label_txt_landmarks_boxes_and_labels(tmp_path):
    p = _write(tmp_path, "# a/one.jpg\n" + FULL + "\n" + "50 60 10 12" + " -1.0" * 16 + "\n"
               "# b/two.jpg\n5 6 7 8\n")
    ann = read_retinaface_labels(p)
    assert [im.path for im in ann.images] == ["a/one.jpg", "b/two.jpg"]
    one = ann.images[0]
    faces = one.faces
    np.testing.assert_allclose(faces.boxes, [[10, 20, 40, 60], [50, 60, 60, 72]])  # xywh -> xyxy
    np.testing.assert_allclose(faces.landmarks[0], [[15.5, 25.5], [30.5, 25.5], [23, 33], [17, 45], [31, 45]])
    assert faces.has_landmarks.tolist() == [True, False]
    np.testing.assert_allclose(faces.landmarks[1], -1.0)
    assert faces.landmarks.shape == (2, 5, 2) and faces.ids.tolist() == [0, 1]
    assert faces.boxes.dtype == faces.landmarks.dtype == np.float32
    assert ann.images[1].faces.has_landmarks.tolist() == [False]
    assert ann.num_faces == 3 and ann.dropped_faces == 0


@pytest.mark.parametrize("count", range(4, 21))
def test_label_txt_accepts_4_to_20_numbers(tmp_path, count):
    values = FULL.split()[:count]
    ann = read_retinaface_labels(_write(tmp_path, "# x.jpg\n" + " ".join(values) + "\n"))
    assert ann.num_faces == 1
    # Landmarks need the reference's positions up to l4_y (index 17).
    assert ann.images[0].faces.has_landmarks.tolist() == [count >= 18]


@pytest.mark.parametrize("text, line, reason", [
    ("# a.jpg\n1 2 3\n", 2, "expected 4 to 20 numbers"),
    ("# a.jpg\n" + " ".join(["1"] * 21) + "\n", 2, "got 21"),
    ("# a.jpg\n1 2 x 4\n", 2, "'x' is not a number"),
    ("# a.jpg\n1 2 nan 4\n", 2, "not a finite number"),
    ("\n1 2 3 4\n# a.jpg\n", 2, "before the first"),
    ("# a.jpg\n1 2 3 4\n#   \n", 3, "without an image path"),
])
def test_label_txt_malformed_lines_name_file_and_line(tmp_path, text, line, reason):
    p = _write(tmp_path, text)
    with pytest.raises(LabelFileError) as info:
        read_retinaface_labels(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:{line}: ") and reason in msg and "\n" not in msg
    assert isinstance(info.value, RetinaFaceError)


def test_degenerate_faces_dropped_with_warning_and_empty_images(tmp_path):
    p = _write(tmp_path, "# a.jpg\n1 2 0 5\n1 2 5 -3\n1 2 5 5\n# b.jpg\n3 3 0 0\n")
    with pytest.warns(UserWarning, match="dropped 3 face"):
        ann = read_retinaface_labels(p)
    assert ann.dropped_faces == 3 and ann.empty_images == 1
    assert [im.path for im in ann.images] == ["a.jpg"]
    assert (ann.images[0].faces.boxes[:, 2:] > ann.images[0].faces.boxes[:, :2]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = read_retinaface_labels(p, skip_empty=False)
    assert [im.num_faces for im in kept.images] == [1, 0]


def test_unreadable_label_file(tmp_path):
    with pytest.raises(LabelFileError, match="cannot read label file"):
        read_retinaface_labels(tmp_path / "missing.txt")


BBX = """0--Parade/0_Parade_a.jpg
2
449 330 122 149 0 0 0 0 0 0 
361 98 0 14 0 0 0 0 0 0 
0--Parade/0_Parade_empty.jpg
0
0 0 0 0 0 0 0 0 0 0 
1--Handshaking/1_b.jpg
1
10 10 5 6 1 0 0 0 0 0 
"""


def test_official_bbx_gt(tmp_path):
    p = _write(tmp_path, BBX, "wider_face_train_bbx_gt.txt")
    with pytest.warns(UserWarning, match="dropped 1 face"):
        ann = read_annotations(p, skip_empty=False)  # dispatched by content
    assert [im.path for im in ann.images] == ["0--Parade/0_Parade_a.jpg", "0--Parade/0_Parade_empty.jpg",
                                              "1--Handshaking/1_b.jpg"]
    assert [im.num_faces for im in ann.images] == [1, 0, 1]
    np.testing.assert_allclose(ann.images[0].faces.boxes, [[449, 330, 571, 479]])
    assert not ann.images[0].faces.has_landmarks.any()
    with pytest.warns(UserWarning):
        assert len(read_wider_bbx_gt(p)) == 2


@pytest.mark.parametrize("text, line, reason", [
    ("a.jpg\ntwo\n1 2 3 4\n", 2, "expected the face count"),
    ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", 3, "file ends inside"),
    ("a.jpg\n1\n1 2 3\n", 3, "at least 4 numbers"),
])
def test_official_bbx_gt_errors(tmp_path, text, line, reason):
    p = _write(tmp_path, text, "gt.txt")
    with pytest.raises(LabelFileError) as info:
        read_wider_bbx_gt(p)
    assert str(info.value).startswith(f"{p}:{line}: ") and reason in str(info.value)


def test_official_mat(widerface_dir):
    with pytest.warns(UserWarning, match="dropped"):  # the val .mat has a few zero-size boxes
        ann = read_wider_mat(widerface_dir / "ground_truth" / "wider_face_val.mat", skip_empty=False)
    assert len(ann) == 3226
    first = ann.images[0]
    assert first.path == "0--Parade/0_Parade_marchingband_1_465.jpg"
    np.testing.assert_allclose(first.faces.boxes[0], [345, 211, 349, 215])
    assert ann.num_faces + ann.dropped_faces == 39708  # every face of the official val set


def test_bad_mat(tmp_path):
    p = tmp_path / "x.mat"
    p.write_bytes(b"not a mat file")
    with pytest.raises(LabelFileError, match="x.mat"):
        read_annotations(p)


def test_missing_images_reported(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    ann = read_retinaface_labels(_write(tmp_path, "# a.jpg\n1 1 4 4\n# b.jpg\n1 1 4 4\n# c/d.jpg\n1 1 4 4\n"))
    with pytest.raises(MissingImagesError, match=r"2 of 3 image\(s\) not found .*: b.jpg, c/d.jpg"):
        check_images(ann, tmp_path / "img")
    with pytest.raises(MissingImagesError, match="does not exist"):
        check_images(ann, tmp_path / "nowhere")


def test_real_train_labels(widerface_dir):
    train = widerface_dir / "train"
    ann = read_annotations(train / "label.txt")
    assert len(ann) == 144 and ann.num_faces == 332 and ann.dropped_faces == 0
    assert not any(im.faces.has_landmarks.any() for im in ann.images)  # the README: no landmarks exist
    check_images(ann, train / "images")
