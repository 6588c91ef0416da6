"""Images of different sizes in one batch (issue 13 §3): padded into a canvas, masked so that every
image's detections equal its own run alone."""

import cv2
import numpy as np
import pytest

from retinaface_tf.constants import BGR_MEAN
from retinaface_tf.fileio import bundled_image
from retinaface_tf.inference import Detector, pad_canvas_size, pad_to_canvas
from retinaface_tf.ops.anchors import anchor_grid, anchors_inside, generate_anchors_np, reindex_anchors


def test_canvas_is_the_largest_side_rounded_to_32():
    assert pad_canvas_size([(100, 200), (65, 300)]) == (128, 320)
    assert pad_canvas_size([(64, 32)]) == (64, 32)
    a = np.full((3, 5, 3), 7, np.uint8)
    b = np.full((40, 2, 3), 9, np.uint8)
    canvas = pad_to_canvas([a, b])
    assert canvas.shape == (2, 64, 32, 3) and canvas.dtype == np.uint8
    assert (canvas[0, :3, :5] == 7).all() and (canvas[1, :40, :2] == 9).all()
    assert (canvas[0, 3:] == np.round(BGR_MEAN)).all() and (canvas[0, :, 5:] == np.round(BGR_MEAN)).all()


@pytest.mark.parametrize("size", [(100, 200), (333, 517), (64, 64), (1, 1)])
def test_reindexed_canvas_anchors_are_the_images_own(size):
    canvas = pad_canvas_size([size, (480, 640)])
    grid = anchor_grid(*canvas)
    inside = np.flatnonzero(anchors_inside(grid, size))
    own = generate_anchors_np(*size)
    assert len(inside) == len(own)  # exactly the image's anchors exist inside it
    mine = reindex_anchors(inside, grid, size)
    np.testing.assert_array_equal(mine, np.arange(len(own)))
    # same centres and sizes in pixels
    in_canvas = generate_anchors_np(*canvas)[inside] * np.array([canvas[1], canvas[0]] * 2)
    np.testing.assert_allclose(in_canvas, own[mine] * np.array([size[1], size[0]] * 2), atol=1e-3)
    assert (reindex_anchors(np.array([-1, inside[0]]), grid, size) == [-1, 0]).all()


@pytest.fixture(scope="module")
def sized_photos():
    photo = cv2.imread(str(bundled_image()))
    sizes = [(480, 640), (333, 517), (700, 401), (480, 640), (257, 300), (512, 512)]
    return [cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA) for h, w in sizes]


def _assert_same(a, b):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05, rtol=0)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.05, rtol=0)
    np.testing.assert_array_equal(a.anchor_indices, b.anchor_indices)


def test_mixed_size_batch_equals_one_by_one(bundled_model, sized_photos):
    model, config = bundled_model
    batched = Detector(model=model, config=config, score_threshold=0.02, batch_size=8)
    alone = Detector(model=model, config=config, score_threshold=0.02, batch_size=1)
    calls = []
    run = batched._run
    batched._run = lambda batch, thr: calls.append([im.shape for im, _ in batch]) or run(batch, thr)
    results = batched.detect_batch(sized_photos)
    assert max(len(set(c)) for c in calls) > 1  # sizes really were mixed in a batch
    assert sum(len(c) for c in calls) == len(sized_photos) and len(calls) < len(sized_photos)
    for image, got in zip(sized_photos, results):
        _assert_same(got, alone.detect(image))
    assert sum(len(r) for r in results) > 50


def test_mixed_size_batch_on_real_val_images(bundled_model, widerface_dir):
    paths = sorted((widerface_dir / "val" / "images").glob("*/*.jpg"))[:10]
    images = [cv2.imread(str(p)) for p in paths]
    assert len({im.shape for im in images}) > 3
    model, config = bundled_model
    batched = Detector(model=model, config=config, score_threshold=0.02, batch_size=5)
    alone = Detector(model=model, config=config, score_threshold=0.02, batch_size=1)
    got = dict(batched.iter_detect([str(p) for p in paths]))
    assert sorted(got) == list(range(len(paths)))
    for i, image in enumerate(images):
        _assert_same(got[i], alone.detect(image))


def test_equal_sizes_only_when_mixed_sizes_is_off(bundled_model, sized_photos):
    model, config = bundled_model
    det = Detector(model=model, config=config, batch_size=8, mixed_sizes=False)
    calls = []
    run = det._run
    det._run = lambda batch, thr: calls.append({im.shape for im, _ in batch}) or run(batch, thr)
    det.detect_batch(sized_photos)
    assert all(len(c) == 1 for c in calls)
    # the unfused path has no masked network: it never pads either
    assert not Detector(model=model, config=config, fused=False).mixed_sizes


def test_batches_waste_at_most_half_again_their_pixels(bundled_model):
    model, config = bundled_model
    det = Detector(model=model, config=config, batch_size=4)
    held = [(i, np.zeros((h, w, 3), np.uint8), (1.0, 1.0), f"im{i}")
            for i, (h, w) in enumerate([(96, 96), (100, 96), (400, 400), (410, 400), (420, 400)])]
    batch, rest = det._take_batch(held)
    assert [e[0] for e in batch] == [0, 1] and [e[0] for e in rest] == [2, 3, 4]
    batch, rest = det._take_batch(rest)
    assert [e[0] for e in batch] == [2, 3, 4] and rest == []
