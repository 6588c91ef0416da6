"""build_dataset end to end: real WIDER train images, determinism, arguments, TFRecord shards."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.config import DataConfig
from retinaface_tf.data.pipeline import DatasetError, build_dataset, dataset_kwargs
from retinaface_tf.data.tfrecord import TFRecordError, parse_example, read_tfrecords, write_tfrecords
from retinaface_tf.data.widerface import MissingImagesError, read_annotations
from retinaface_tf.ops.anchors import num_anchors

SIZE = 320
N = num_anchors(SIZE, SIZE)
DATA = DataConfig(image_size=SIZE)


@pytest.fixture(scope="module")
def train(widerface_dir):
    root = widerface_dir / "train"
    return root / "label.txt", root / "images"


def _check_batch(images, targets, masks, batch):
    """Shapes, finite values, and targets agreeing with their masks; returns the landmark mask
    (positives of faces with landmarks)."""
    assert images.shape == (batch, SIZE, SIZE, 3) and images.dtype == tf.float32
    assert targets["bbox"].shape == (batch, N, 4)
    assert targets["classes"].shape == (batch, N)
    assert targets["landmarks"].shape == (batch, N, 10)
    for t in (images, *targets.values()):
        assert np.isfinite(t.numpy()).all()
    positive, with_landmarks = (masks[k].numpy().astype(bool) for k in ("bbox", "landmarks"))
    np.testing.assert_array_equal(targets["classes"].numpy(), positive)
    assert not (with_landmarks & ~positive).any() and masks["classes"].numpy().all()
    return with_landmarks


def test_reads_real_wider_train_end_to_end(train):
    label, images = train
    ds = build_dataset(label, images, batch_size=6, data=DATA, seed=0)
    batches = list(ds.take(3))
    for x, y, m in batches:
        with_landmarks = _check_batch(x, y, m, 6)
        # This subset has no landmarks: positives train boxes and classes only.
        assert not with_landmarks.any()
    assert sum((y["classes"].numpy() != 0).sum() for _, y, _ in batches) > 18 * 5


def test_validation_mode_and_whole_epoch_without_remainder(train):
    label, images = train
    ann = read_annotations(label)
    ds = build_dataset(annotations=ann.images[:20], images_dir=images, batch_size=8, data=DATA, training=False)
    sizes = [_check_batch(x, y, m, x.shape[0]).shape[0] for x, y, m in ds]
    assert sizes == [8, 8, 4]  # unshuffled, last batch kept
    first = next(iter(ds))[0].numpy()
    np.testing.assert_array_equal(first, next(iter(ds))[0].numpy())


def test_seed_makes_stream_reproducible_and_epochs_differ(train):
    label, images = train

    def first(ds, n=3):
        return [(x.numpy(), [f.numpy() for f in y["faces"]]) for x, y, _ in ds.take(n)]

    kw = dict(batch_size=None, data=DATA, seed=5, return_faces=True)
    ds = build_dataset(label, images, **kw)
    a, b = first(ds), first(build_dataset(label, images, **kw))
    for (xa, fa), (xb, fb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        for field_a, field_b in zip(fa, fb):
            np.testing.assert_array_equal(field_a, field_b)
    again = first(ds)  # a second pass over the same dataset: new shuffle and augmentation
    assert any(xa.shape != xc.shape or not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, again))
    other = first(build_dataset(label, images, **{**kw, "seed": 6}))
    assert not all(np.array_equal(xa, xo) for (xa, _), (xo, _) in zip(a, other))


def test_argument_errors(train, tmp_path):
    label, images = train
    with pytest.raises(DatasetError, match="exactly one"):
        build_dataset(batch_size=2)
    with pytest.raises(DatasetError, match="exactly one"):
        build_dataset(label, images, tfrecord_pattern="x*", batch_size=2)
    with pytest.raises(DatasetError, match="return_faces"):
        build_dataset(label, images, batch_size=2, return_faces=True)
    with pytest.raises(DatasetError, match="multiple of 8"):
        build_dataset(label, images, batch_size=2, data=DataConfig(image_size=100))
    with pytest.raises(MissingImagesError, match="144 of 144"):
        build_dataset(label, tmp_path, batch_size=2)


def test_dataset_kwargs_from_config():
    from retinaface_tf.config import Config

    kw = dataset_kwargs(Config.preset("resnet50"))
    assert kw["data"].image_size == 840 and kw["data"].bgr_mean == (104.0, 117.0, 123.0)
    assert kw["loss"].match_threshold == 0.35 and kw["loss"].force_match_min_iou == 0.2
    assert kw["data"].crop_candidates == 250 and kw["anchors"].steps == (8, 16, 32)


def test_tfrecord_round_trip_and_training_from_shards(train, tmp_path):
    label, images = train
    ann = read_annotations(label)
    subset = ann.images[:9]
    paths = write_tfrecords(subset, images, tmp_path / "shards" / "train", num_shards=3)
    assert len(paths) == 3 and all(p.endswith(".tfrecord") for p in paths)

    got = {}
    for contents, faces in read_tfrecords(str(tmp_path / "shards" / "*.tfrecord"), shuffle_files=False):
        got[contents.numpy()] = faces
    for im in subset:
        data = (images / im.path).read_bytes()
        for field, want in zip(got[data], im.faces):
            np.testing.assert_allclose(field.numpy(), want)
    ds = build_dataset(tfrecord_pattern=str(tmp_path / "shards" / "*.tfrecord"), batch_size=3, data=DATA, seed=1)
    assert len([_check_batch(x, y, m, 3) for x, y, m in ds]) == 3

    # Several input pipelines (workers) split the shards between them.
    seen = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i)
        seen.append({c.numpy() for c, _ in read_tfrecords(paths, shuffle_files=False, input_context=ctx)})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 9

    with pytest.raises(TFRecordError, match="no TFRecord files"):
        read_tfrecords(str(tmp_path / "nothing-*.tfrecord"))


def test_tfrecord_landmarks_survive(tmp_path):
    import cv2

    from retinaface_tf.data.widerface import read_retinaface_labels

    img = np.full((64, 80, 3), 90, np.uint8)
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), img)
    (tmp_path / "label.txt").write_text(
        "# a.jpg\n10 10 20 24 14 15 0 24 15 0 19 20 0 15 28 0 25 28 0 0.9\n30 5 10 10" + " -1" * 16 + "\n")
    ann = read_retinaface_labels(tmp_path / "label.txt")
    paths = write_tfrecords(ann, tmp_path / "img", tmp_path / "rec", num_shards=1)
    serialized = next(iter(tf.data.TFRecordDataset(paths)))
    _, faces = parse_example(serialized)
    for field, want in zip(faces, ann.images[0].faces):
        np.testing.assert_allclose(field.numpy(), want)
    assert faces.has_landmarks.numpy().tolist() == [True, False]


def test_resnet50_training_size_840_is_accepted(train):
    """cfg_re50 trains at 840x840, which is not a multiple of 32: anchors and targets still agree."""
    label, images = train
    x, y, _ = next(iter(build_dataset(label, images, batch_size=1, data=DataConfig(image_size=840), seed=0)))
    assert x.shape == (1, 840, 840, 3)
    assert y["classes"].shape == (1, num_anchors(840, 840)) == (1, 2 * (105 * 105 + 53 * 53 + 27 * 27))


def test_label_file_source_is_fully_permuted_each_pass():
    """The reference's DataLoader(shuffle=True) draws a full permutation every epoch; a buffer
    smaller than the image count would keep some label-file order (found comparing pipelines)."""
    import tensorflow as tf

    from retinaface_tf.data.pipeline import shuffle_buffer

    names = tf.data.Dataset.from_tensor_slices([f"im{i}.jpg" for i in range(1239)])
    assert shuffle_buffer(names, 1000, files=True) == 1239
    assert shuffle_buffer(names, 5000, files=True) == 5000
    assert shuffle_buffer(names, 1000, files=False) == 1000
    assert shuffle_buffer(names.repeat(), 1000, files=True) == 1000  # unknown (infinite) size
