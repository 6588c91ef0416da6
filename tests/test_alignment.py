"""Aligned face crops: the similarity fit, the crops, the templates, border faces and faces
without usable landmarks; measured on real photos."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from retinaface_tf.alignment import (ARCFACE_TEMPLATE_112, align_faces, apply_transforms, similarity_transforms,
                                     template, usable_landmarks)


def _umeyama(src, dst):
    """Textbook Umeyama (SVD) similarity, for one point set."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    p, q = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(q.T @ p / len(src))
    s = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[1, 1] = -1
    r = u @ s @ vt
    scale = np.trace(np.diag(d) @ s) / (p ** 2).sum(1).mean()
    return np.hstack([scale * r, (mu_d - scale * r @ mu_s)[:, None]])


def test_similarity_fit_is_exact_and_least_squares():
    rng = np.random.default_rng(0)
    n = 50
    theta, scale = rng.uniform(-np.pi, np.pi, n), rng.uniform(0.2, 5, n)
    rot = np.stack([np.stack([np.cos(theta), -np.sin(theta)], -1), np.stack([np.sin(theta), np.cos(theta)], -1)], 1)
    truth = np.concatenate([scale[:, None, None] * rot, rng.uniform(-100, 100, (n, 2, 1))], axis=2)
    src = rng.uniform(0, 500, (n, 5, 2))
    dst = apply_transforms(truth, src)
    np.testing.assert_allclose(similarity_transforms(src, dst), truth, atol=1e-9)
    noisy = dst + rng.normal(0, 3, dst.shape)
    fitted = similarity_transforms(src, noisy)
    for i in range(n):
        np.testing.assert_allclose(fitted[i], _umeyama(src[i], noisy[i]), atol=1e-8)


def test_templates():
    np.testing.assert_array_equal(template(112), ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(template(96, 112), ARCFACE_TEMPLATE_112 - [8, 0])
    np.testing.assert_allclose(template(224), ARCFACE_TEMPLATE_112 * 2)
    np.testing.assert_allclose(template(192, 224), (ARCFACE_TEMPLATE_112 - [8, 0]) * 2)
    with pytest.raises(ValueError, match="aspect ratio"):
        template(100, 112)


def test_aligned_crops_on_real_photos(bundled_model, reference_dir, widerface_dir):
    """Mean residual between the warped landmarks and the template on real faces, and every
    crop equals cv2.warpAffine with the returned matrix."""
    from retinaface_tf.inference import Detector

    model, config = bundled_model
    det = Detector(model=model, config=config, score_threshold=0.5)
    paths = [reference_dir / "biubug6_test.jpg",
             *sorted((widerface_dir / "val" / "images" / "12--Group").glob("*.jpg"))[:3]]
    residuals = []
    for path in paths:
        image = cv2.imread(str(path))
        faces = det.detect(image)
        out = align_faces(image, faces.boxes, faces.landmarks, size=112)
        assert out.crops.shape == (len(faces), 112, 112, 3) and out.crops.dtype == np.uint8
        assert out.from_landmarks.mean() > 0.9
        for crop, m in zip(out.crops, out.matrices):
            np.testing.assert_array_equal(crop, cv2.warpAffine(image, m.astype(np.float64), (112, 112)))
        residuals.append(out.residuals[out.from_landmarks])
    residuals = np.concatenate(residuals)
    assert len(residuals) > 50
    # measured on 31 real photos (452 faces): mean 2.79 px, median 1.86 px, 95th percentile 9.3 px
    assert residuals.mean() < 3.0 and np.percentile(residuals, 95) < 6.0
    wide = align_faces(image, faces.boxes, faces.landmarks, size=(96, 112))
    assert wide.crops.shape[1:] == (112, 96, 3)
    np.testing.assert_allclose(wide.residuals, out.residuals * 1.0, rtol=0.2, atol=0.5)


def test_border_faces_and_faces_without_landmarks():
    image = np.full((200, 300, 3), 128, np.uint8)
    boxes = np.array([[-20, 50, 60, 150],   # cut by the left border
                      [100, 40, 200, 160],  # landmarks collapsed to one point (no landmark head)
                      [150, 40, 250, 160]], np.float64)  # landmarks NaN
    lm = np.array([[[0, 85], [35, 85], [15, 105], [2, 125], [32, 125]],
                   [[150, 100]] * 5,
                   [[np.nan, np.nan]] * 5], np.float64)
    assert usable_landmarks(boxes, lm).tolist() == [True, False, False]
    out = align_faces(image, boxes, lm, size=112)
    assert out.from_landmarks.tolist() == [True, False, False]
    assert (out.crops[0][:, :10] == 0).all() and (out.crops[0][:, 60:] == 128).all()  # outside the image: black
    # a box-aligned face: the box maps onto the template's span in the crop, upright
    m = out.matrices[1]
    assert abs(m[0, 1]) < 1e-6 and abs(m[1, 0]) < 1e-6
    corners = apply_transforms(out.matrices[1:2].astype(np.float64), boxes[1:2].reshape(1, 2, 2))[0]
    assert np.all(corners[0] < 20) and np.all(corners[1] > 92)
    forced = align_faces(image, boxes, lm, use_landmarks=False)
    assert not forced.from_landmarks.any()
    empty = align_faces(image, np.zeros((0, 4)), np.zeros((0, 5, 2)))
    assert empty.crops.shape == (0, 112, 112, 3)


def test_detector_align_and_detect_crops_cli(tmp_path, bundled_model, capsys):
    """``Detector.align`` / ``Detections.align`` give the crops of ``align_faces``, and
    ``detect --crops DIR`` writes one PNG per face with its entries in the JSON."""
    from retinaface_tf.cli import main
    from retinaface_tf.fileio import bundled_image
    from retinaface_tf.inference import Detector

    model, config = bundled_model
    image = cv2.imread(str(bundled_image()))
    faces, aligned = Detector(model=model, config=config).align(image, size=(96, 112))
    expected = align_faces(image, faces.boxes, faces.landmarks, size=(96, 112))
    np.testing.assert_array_equal(aligned.crops, expected.crops)
    assert aligned.crops.shape == (len(faces), 112, 96, 3) and len(faces) > 10

    photos = tmp_path / "in"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), image)
    cv2.imwrite(str(photos / "b.png"), cv2.resize(image, (500, 333)))
    crops = tmp_path / "crops"
    assert main(["detect", str(photos), "-o", str(tmp_path / "out"), "--crops", str(crops), "--no-draw"]) == 0
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    n = 0
    for record in report["images"]:
        src = cv2.imread(record["image"])
        for face in record["faces"]:
            crop = cv2.imread(face["crop"])
            assert crop.shape == (112, 112, 3) and face["crop_from"] in ("landmarks", "box")
            m = np.array(face["crop_matrix"])
            # the crop is cv2.warpAffine with the recorded matrix (rounded to 5 decimals in the JSON)
            diff = np.abs(crop.astype(int) - cv2.warpAffine(src, m, (112, 112)).astype(int))
            assert np.mean(diff) < 1.0
            n += 1
    assert n == len(list(crops.glob("*.png"))) > 10
    # a folder that is not empty is refused before any work
    capsys.readouterr()
    assert main(["detect", str(photos), "-o", str(tmp_path / "out2"), "--crops", str(crops)]) != 0
    assert "--crops" in capsys.readouterr().err and not (tmp_path / "out2").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage error, exit 2
        main(["detect", str(photos), "-o", str(tmp_path / "out3"), "--crops", str(tmp_path / "c3"), "--crop-size", "0"])
    assert exit_info.value.code == 2
    # a crops folder inside an input folder is allowed (it is new or empty: nothing of it is read)
    assert main(["detect", str(photos), "-o", str(tmp_path / "out4"), "--crops", str(photos / "crops"), "--no-draw"]) == 0
    assert len(json.loads((tmp_path / "out4" / "detections.json").read_text())["images"]) == 2


def test_crop_size_argument():
    import argparse

    from retinaface_tf.commands.detect import crop_size_arg

    assert crop_size_arg("112") == (112, 112) and crop_size_arg("96x112") == (96, 112)
    for bad in ("0", "x", "12x", "5000"):
        with pytest.raises(argparse.ArgumentTypeError):
            crop_size_arg(bad)
