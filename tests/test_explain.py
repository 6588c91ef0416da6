"""explain: the tf-keras-vis adapter (single-output face-score model), anchor tracing, maps
concentrated on the explained face, and the CLI's PNGs and errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tf_keras_vis")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def photo(reference_dir):
    from retinaface_tf.fileio import read_image
    return read_image(reference_dir / "biubug6_test.jpg")


@pytest.fixture(scope="module")
def detections(bundled_model, photo):
    from retinaface_tf.inference import Detector
    model, cfg = bundled_model
    return Detector(model=model, config=cfg, score_threshold=0.3).detect(photo)


@pytest.fixture(scope="module")
def largest(bundled_model, photo):
    from retinaface_tf.vis.explain import explain_face
    model, cfg = bundled_model
    return explain_face(photo, model=model, config=cfg, face="largest", smooth_samples=4, seed=0)


def _net_input(image):
    from retinaface_tf.models import preprocess
    return preprocess(image[None], channel_order="bgr").numpy()


def test_anchor_level_follows_anchor_layout():
    from retinaface_tf.vis.explain import anchor_level
    from retinaface_tf.config import AnchorConfig
    # 100x130 input: levels of 13x17x2=442, 7x9x2=126, 4x5x2=40 anchors
    kw = dict(min_sizes=AnchorConfig.min_sizes, steps=AnchorConfig.steps)
    assert [anchor_level(i, 100, 130, **kw) for i in (0, 441, 442, 567, 568, 607)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        anchor_level(608, 100, 130, **kw)


def test_face_score_model_outputs_one_anchor(bundled_model, photo):
    import tensorflow as tf

    from retinaface_tf.vis.explain import face_score_model
    model, _ = bundled_model
    x = _net_input(photo[:160, :224])
    logits = model(x, training=False)["classes"].numpy()[0]
    for index in (0, 777, logits.shape[0] - 1):
        logodds = face_score_model(model, index, target="logodds")([x]).numpy()
        prob = face_score_model(model, index, target="probability")([x]).numpy()
        assert logodds.shape == (1, 1) and prob.shape == (1, 1)
        np.testing.assert_allclose(logodds[0, 0], logits[index, 1] - logits[index, 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(prob[0, 0], tf.nn.softmax(logits[index])[1].numpy(), rtol=1e-5, atol=1e-6)
    # the SSH outputs Grad-CAM++ needs stay reachable by name in the wrapper
    wrapper = face_score_model(model, 0)
    assert all(wrapper.get_layer(f"ssh{i}_relu") is model.get_layer(f"ssh{i}_relu") for i in (1, 2, 3))
    with pytest.raises(ValueError):
        face_score_model(model, 0, target="softmax")


def test_find_anchor_recovers_each_detection(bundled_model, photo, detections):
    """Every box NMS kept is one anchor's decoded box: IoU 1 and that anchor's score."""
    from retinaface_tf.vis.explain import find_anchor
    model, cfg = bundled_model
    a = cfg.anchors
    out = model(_net_input(photo), training=False)
    h, w = photo.shape[:2]
    levels = set()
    for box, score in zip(detections.boxes, detections.scores):
        m = find_anchor(out, box, height=h, width=w, min_sizes=a.min_sizes, steps=a.steps, variances=a.variances)
        assert m.iou > 0.999
        assert m.score == pytest.approx(float(score), abs=1e-5)
        # the anchor lies on its level's grid, centred on a cell
        step = a.steps[m.level]
        cx = (m.anchor_xyxy[0] + m.anchor_xyxy[2]) / 2
        assert (cx / step - 0.5) == pytest.approx(round(cx / step - 0.5), abs=1e-3)
        levels.add(m.level)
    assert len(detections) > 20 and levels  # the group photo has ~30 faces


def test_saliency_equals_direct_gradient(bundled_model, photo):
    """tf-keras-vis' vanilla saliency through our adapter = max_c |d logodds / d input| (normalised),
    computed here with a plain GradientTape on the original dict-output model."""
    import tensorflow as tf

    from retinaface_tf.vis.explain import face_score_model, saliency_map
    model, _ = bundled_model
    x = _net_input(photo[330:490, 250:420])
    index = 300
    got = saliency_map(face_score_model(model, index), x, smooth_samples=0)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = model(xt, training=False)["classes"]
        score = logits[0, index, 1] - logits[0, index, 0]
    g = tf.reduce_max(tf.abs(tape.gradient(score, xt)), axis=-1)[0].numpy()
    want = (g - g.min()) / (g.max() - g.min())
    assert got.shape == x.shape[1:3]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_gradcam_pp_equals_direct_formula(bundled_model, photo):
    """tf-keras-vis' Grad-CAM++ at ssh2_relu through our adapter = the paper's formula written
    here with a GradientTape (exp(score) second/third-order terms), before upsampling."""
    import keras
    import tensorflow as tf

    from retinaface_tf.vis.explain import face_score_model, gradcam_pp_map
    model, _ = bundled_model
    x = _net_input(photo[320:480, 240:432])  # 160x192: multiples of 16, so no crop after upsampling
    h, w = x.shape[1:3]
    index = 20 * 24 * 2 + 5 * 12 * 2 + 7 * 2  # level 2 (stride 16), row 5, column 7
    got = gradcam_pp_map(face_score_model(model, index), x, layer="ssh2_relu", step=16)

    probe = keras.Model(model.inputs, [model.get_layer("ssh2_relu").output, model.get_layer("ClassHead").output])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        feats, logits = probe(xt, training=False)
        score = logits[0, index, 1] - logits[0, index, 0]
    g = tape.gradient(score, feats)[0].numpy().astype(np.float64)  # [fh, fw, C]
    a = feats[0].numpy().astype(np.float64)
    e = np.exp(float(score))
    d1, d2, d3 = e * g, e * g ** 2, e * g ** 3
    denom = 2 * d2 + d3 * a.sum(axis=(0, 1), keepdims=True)
    alphas = d2 / np.where(d2 == 0, denom + 1, denom)
    norm = alphas.sum(axis=(0, 1), keepdims=True)
    alphas /= np.where(norm == 0, 1, norm)
    weights = (np.maximum(d1, 0) * alphas).sum(axis=(0, 1))
    cam = np.maximum((weights * a).sum(-1), 0)
    # only the anchor's own cell gets a gradient: the class head is a 1x1 convolution
    assert np.count_nonzero(np.abs(g).sum(-1)) == 1 and np.abs(g[5, 7]).sum() > 0
    import cv2
    want = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    want = np.maximum(want, 0) / want.max()
    assert got.shape == (h, w)
    np.testing.assert_allclose(got, want, atol=2e-3)


def _face_free_boxes(h, w, bw, bh, face_boxes, *, only=None):
    """Top-left corners of ``bw x bh`` boxes inside the photo that overlap no face box (pixel
    xyxy): every corner of a half-box grid, or the corners in ``only``."""
    corners = only if only is not None else [
        (x, y) for y in range(0, h - bh + 1, max(1, bh // 2)) for x in range(0, w - bw + 1, max(1, bw // 2))]
    out = []
    for x, y in corners:
        if x < 0 or y < 0 or x + bw > w or y + bh > h:
            continue
        ix = np.minimum(x + bw, face_boxes[:, 2]) - np.maximum(x, face_boxes[:, 0])
        iy = np.minimum(y + bh, face_boxes[:, 3]) - np.maximum(y, face_boxes[:, 1])
        if not np.any((ix > 0) & (iy > 0)):
            out.append((x, y))
    return out


@pytest.mark.parametrize("kind", ["saliency", "gradcam_pp"])
def test_maps_concentrated_on_explained_face(largest, detections, photo, kind):
    heat = getattr(largest, kind)
    h, w = photo.shape[:2]
    assert heat.shape == (h, w) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    areas = (detections.boxes[:, 2] - detections.boxes[:, 0]) * (detections.boxes[:, 3] - detections.boxes[:, 1])
    np.testing.assert_allclose(largest.box, detections.boxes[np.argmax(areas)], atol=1e-3)
    x1, y1, x2, y2 = np.round(largest.box).astype(int)
    bw, bh = x2 - x1, y2 - y1
    inside = heat[y1:y2, x1:x2].sum()
    # the same box shifted (nearest shift down / right / left / up that overlaps no face)
    free = set(_face_free_boxes(h, w, bw, bh, detections.boxes, only=[
        (x1 + dx * k * bw // 2, y1 + dy * k * bh // 2) for k in range(1, 9)
        for dx, dy in ((0, 1), (1, 0), (-1, 0), (0, -1))]))
    sx, sy = next((x1 + dx * k * bw // 2, y1 + dy * k * bh // 2) for k in range(1, 9)
                  for dx, dy in ((0, 1), (1, 0), (-1, 0), (0, -1)) if (x1 + dx * k * bw // 2, y1 + dy * k * bh // 2) in free)
    shifted = heat[sy:sy + bh, sx:sx + bw].sum()
    # Grad-CAM++ weights whole SSH channels, which also fire on face-like texture: coarser
    assert inside > (3 if kind == "saliency" else 1.5) * shifted
    # and more than in any equal-size face-free box of the photo
    others = [heat[y:y + bh, x:x + bw].sum() for x, y in _face_free_boxes(h, w, bw, bh, detections.boxes)]
    assert len(others) > 50
    assert inside > max(others)
    if kind == "saliency":  # the saliency is local: most of the photo's mass sits near the face
        near = heat[max(0, y1 - bh):y2 + bh, max(0, x1 - bw):x2 + bw].sum()
        assert near > 0.3 * heat.sum()


@pytest.mark.parametrize("given", [True, False], ids=["image", "default-image"])
def test_explain_cli_writes_pngs_of_photo_size(reference_dir, tmp_path, capsys, given):
    import cv2

    from retinaface_tf.cli import main
    image = [str(reference_dir / "biubug6_test.jpg")] if given else []  # default: the bundled copy of that photo
    rc = main(["explain", *image, "--face", "2", "--smooth-samples", "1", "--max-size", "512",
               "--output", str(tmp_path / "out")])
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["biubug6_test_face2_gradcampp.png", "biubug6_test_face2_saliency.png"]
    for name in names:
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        pic = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert pic.shape == (624, 1024, 3)
        assert pic.std() > 10  # a picture, not a blank
    assert "face 2: box [" in capsys.readouterr().out


def test_explain_cli_errors_are_one_line(reference_dir, tmp_path, capsys):
    from retinaface_tf.cli import main
    image = str(reference_dir / "biubug6_test.jpg")
    assert main(["explain", image, "--face", "999", "--smooth-samples", "0", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and image in err and "face 999 requested" in err
    assert main(["explain", str(tmp_path / "missing.jpg"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.jpg: no such file" in err
    assert main(["explain", image, "--box", "50,50,40,90", "-o", str(tmp_path)]) == 2
    assert "x2 > x1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_explain_a_given_box_with_downscaling(bundled_model, photo, detections):
    """--box: the anchor whose decoded box fits a given box; with max_size the network sees a
    downscaled photo but boxes and maps come back at the original size."""
    from retinaface_tf.vis.explain import explain_face
    model, cfg = bundled_model
    crop = photo[300:560, 200:560]  # 360x260 around the largest face
    e = explain_face(crop, model=model, config=cfg, box=[104, 86, 168, 165], smooth_samples=0)
    assert e.face_index == -1 and e.anchor.iou > 0.8 and e.score > 0.9  # the sunglasses face is found
    small = explain_face(crop, model=model, config=cfg, box=[104, 86, 168, 165], smooth_samples=0, max_size=240)
    assert small.saliency.shape == small.gradcam_pp.shape == crop.shape[:2]
    np.testing.assert_allclose(small.box, [104, 86, 168, 165], atol=1e-3)
    # the anchor comes back in original pixels: an anchor size divided by the 240/360 scale
    width = float(small.anchor.anchor_xyxy[2] - small.anchor.anchor_xyxy[0])
    assert round(width * 240 / 360, 3) in (16, 32, 64, 128) and width > 20
