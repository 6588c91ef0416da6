"""MultiBoxLoss: equal to the reference on its fixed batch, hard negative mining, empty
batches, model.fit, and the global normalisation across replicas."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from retinaface_tf.losses import (BoxRegressionLoss, ClassificationLoss, LandmarkLoss, MultiBoxLoss,
                                  hard_negative_mask, smooth_l1)
from retinaface_tf.ops.faces import Faces
from retinaface_tf.ops.matcher import match_anchors
from retinaface_tf.ops.targets import pack_targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def reference(reference_dir):
    return dict(np.load(reference_dir / "multibox_loss.npz"))


def _predictions(ref):
    return {"bbox": tf.constant(ref["pred_loc"]), "classes": tf.constant(ref["pred_conf"]),
            "landmarks": tf.constant(ref["pred_landm"])}


def _assert_reference_terms(terms, ref):
    np.testing.assert_allclose(float(terms["bbox"]), ref["loss_loc"], rtol=1e-4)
    np.testing.assert_allclose(float(terms["classes"]), ref["loss_conf"], rtol=1e-4)
    np.testing.assert_allclose(float(terms["landmarks"]), ref["loss_landm"], rtol=1e-4)


def test_reference_loss_from_reference_targets(reference):
    y_true, masks = pack_targets(reference["loc_t"], reference["conf_t"], reference["landm_t"])
    loss = MultiBoxLoss(neg_pos_ratio=7, loc_weight=float(reference["loc_weight"]))
    _assert_reference_terms(loss.terms(y_true, _predictions(reference), masks), reference)
    total = 2.0 * reference["loss_loc"] + reference["loss_conf"] + reference["loss_landm"]
    np.testing.assert_allclose(float(loss(y_true, _predictions(reference), masks)), total, rtol=1e-4)


def test_reference_loss_end_to_end_from_faces(reference):
    """Our matcher → our loss, from the reference's raw face rows."""
    outs = [match_anchors(Faces(t[:, :4], t[:, 4:14], t[:, 14] > 0, np.arange(len(t))), reference["priors"])
            for t in (reference["targets_0"], reference["targets_1"])]
    y_true, masks = pack_targets(*(tf.stack([getattr(m, k) for m in outs])
                                   for k in ("box_deltas", "labels", "landmark_deltas")))
    _assert_reference_terms(MultiBoxLoss().terms(y_true, _predictions(reference), masks), reference)


def test_terms_are_keras_losses_with_config_round_trip():
    for cls, kw in ((BoxRegressionLoss, {}), (ClassificationLoss, {"neg_pos_ratio": 3}), (LandmarkLoss, {}),
                    (MultiBoxLoss, {"neg_pos_ratio": 5, "loc_weight": 1.5, "landmark_weight": 0.5})):
        loss = cls(**kw)
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(again) is cls and again.get_config() == loss.get_config()
    kwargs = MultiBoxLoss(loc_weight=1.5).compile_kwargs()
    assert kwargs["loss_weights"] == {"bbox": 1.5, "classes": 1.0, "landmarks": 1.0}
    with pytest.raises(TypeError, match="compile_kwargs"):
        MultiBoxLoss()(tf.zeros([1, 4, 5]), tf.zeros([1, 4, 4]))


def test_masks_are_required_and_read_as_masks():
    """Each term takes its anchor mask (Keras' sample_weight): 1 / 0 weights, or bool the same."""
    targets, masks = pack_targets(tf.fill([1, 3, 4], 0.5), tf.constant([[1, -1, 0]]), tf.fill([1, 3, 10], 0.5))
    pred = {"bbox": tf.zeros([1, 3, 4]), "classes": tf.zeros([1, 3, 2]), "landmarks": tf.zeros([1, 3, 10])}
    assert masks["bbox"].numpy().tolist() == [[1, 1, 0]] and masks["landmarks"].numpy().tolist() == [[1, 0, 0]]
    assert targets["classes"].numpy().tolist() == [[1, 1, 0]] and targets["bbox"].shape == (1, 3, 4)
    for cls, key in ((BoxRegressionLoss, "bbox"), (ClassificationLoss, "classes"), (LandmarkLoss, "landmarks")):
        with pytest.raises(ValueError, match="needs the anchor mask"):
            cls()(targets[key], pred[key])
        as_bool = tf.cast(masks[key], tf.bool)
        assert float(cls()(targets[key], pred[key], as_bool)) == float(cls()(targets[key], pred[key], masks[key]))


def test_smooth_l1_is_pytorch_beta_1():
    x = tf.constant([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.5])
    np.testing.assert_allclose(smooth_l1(x).numpy(), [2.5, 0.5, 0.125, 0.0, 0.03125, 0.5, 2.0])


def test_hard_negative_mining_picks_highest_losses_per_image():
    loss = tf.constant([[0.1, 5.0, 0.3, 4.0, 0.2, 3.0, 9.0, 0.05],
                        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    positive = tf.constant([[False, False, False, False, False, False, True, False],  # 1 pos -> 2 negs
                            [True] + [False] * 7,  # 1 pos -> min(2, N - 1 = 7)
                            [False] * 8])  # no positives -> no negatives
    neg = hard_negative_mask(loss, positive, neg_pos_ratio=2).numpy()
    # The positive's own loss (9.0) is ignored: it counts as 0.
    assert np.flatnonzero(neg[0]).tolist() == [1, 3]
    assert np.flatnonzero(neg[1]).tolist() == [6, 7]
    assert not neg[2].any()
    many = hard_negative_mask(loss[1:2], tf.constant([[True] * 4 + [False] * 4]), neg_pos_ratio=7).numpy()
    assert many.sum() == 7  # clamped to N - 1


def test_no_faces_gives_zero_finite_loss_and_gradients():
    n = 300
    y_true, masks = pack_targets(tf.zeros([2, n, 4]), tf.zeros([2, n]), tf.zeros([2, n, 10]))
    pred = {"bbox": tf.Variable(tf.random.normal([2, n, 4])), "classes": tf.Variable(tf.random.normal([2, n, 2])),
            "landmarks": tf.Variable(tf.random.normal([2, n, 10]))}
    loss = MultiBoxLoss()
    with tf.GradientTape() as tape:
        total = loss(y_true, pred, masks)
    assert float(total) == 0.0
    for g in tape.gradient(total, list(pred.values())):
        assert g is None or np.isfinite(g.numpy()).all()


def test_unused_targets_never_leak_nan():
    """inf / NaN in target slots the losses must ignore (background box targets, landmark
    targets of landmark-less faces) do not reach the loss."""
    labels = tf.constant([[1.0, -1.0, 0.0, 0.0]])
    box = tf.constant([[[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0], [np.inf, np.nan, 0, 0], [0, 0, -np.inf, 0]]])
    lm = tf.concat([tf.fill([1, 1, 10], 0.5), tf.fill([1, 3, 10], np.nan)], axis=1)
    y_true, masks = pack_targets(box, labels, lm)
    pred = {"bbox": tf.zeros([1, 4, 4]), "classes": tf.zeros([1, 4, 2]), "landmarks": tf.zeros([1, 4, 10])}
    terms = MultiBoxLoss().terms(y_true, pred, masks)
    np.testing.assert_allclose(float(terms["bbox"]), (0.005 + 0.02 + 0.045 + 0.08) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(terms["landmarks"]), 10 * 0.125, rtol=1e-6)
    # 2 positives, 2 background (both mined: 7 * 2 clamped to N - 1 = 3), each CE = log 2.
    np.testing.assert_allclose(float(terms["classes"]), 4 * np.log(2.0) / 2, rtol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_fit_logs_the_three_terms(jit_compile):
    """A small stand-in with the detector's output dict (the real network's fit is the training
    tests' job): compile_kwargs works with model.fit (also XLA-compiled, as Keras does on GPUs)
    and Keras logs each term."""
    from retinaface_tf.ops.anchors import generate_anchors_np

    size = 64
    anchors = generate_anchors_np(size, size)
    n = len(anchors)
    boxes = np.array([[0.1, 0.1, 0.45, 0.5], [0.5, 0.4, 0.9, 0.95]], np.float32)
    lms = np.tile(np.array([[0.2, 0.2, 0.3, 0.2, 0.25, 0.3, 0.2, 0.4, 0.3, 0.4]], np.float32), (2, 1))
    match = match_anchors(Faces(boxes, lms, [True, False], [0, 1]), anchors)
    assert (match.labels.numpy() == 1).any() and (match.labels.numpy() == -1).any()
    targets, masks = pack_targets(*(tf.stack([x] * 4) for x in (match.box_deltas, match.labels,
                                                                match.landmark_deltas)))
    images = tf.random.uniform([4, size, size, 3], -120.0, 120.0, seed=1)
    ds = tf.data.Dataset.from_tensor_slices((images, targets, masks)).batch(2)

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = {k: keras.layers.Reshape((n, d), name=k)(keras.layers.Dense(n * d)(x))
               for k, d in (("bbox", 4), ("classes", 2), ("landmarks", 10))}
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), jit_compile=jit_compile, **MultiBoxLoss().compile_kwargs())
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert {"loss", "bbox_loss", "classes_loss", "landmarks_loss"} <= set(logs)
    assert all(np.isfinite(v) and v > 0 for v in logs.values())
    np.testing.assert_allclose(logs["loss"], 2 * logs["bbox_loss"] + logs["classes_loss"] + logs["landmarks_loss"],
                               rtol=1e-4)


_DISTRIBUTED = r"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from retinaface_tf.losses import MultiBoxLoss
from retinaface_tf.ops.targets import pack_targets
ref = dict(np.load(REFERENCE))
y_true, masks = pack_targets(ref["loc_t"], ref["conf_t"], ref["landm_t"])
y_pred = {"bbox": ref["pred_loc"], "classes": ref["pred_conf"], "landmarks": ref["pred_landm"]}
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ds = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensors((y_true, y_pred, masks)).unbatch().batch(2))
loss = MultiBoxLoss()
def step(t, p, m):
    terms = loss.terms(t, p, m)
    return terms["bbox"], terms["classes"], terms["landmarks"]
per_replica = strategy.run(step, args=next(iter(ds)))
sums = [float(strategy.reduce("SUM", v, axis=None)) for v in per_replica]
print("RESULT", *sums, ref["loss_loc"], ref["loss_conf"], ref["loss_landm"])
"""


def test_mirrored_strategy_normalises_by_global_positives(reference_dir):
    """Each replica holds one image; the per-replica values summed over replicas (what the
    summed gradients see) equal the whole-batch loss."""
    code = _DISTRIBUTED.replace("REFERENCE", repr(str(reference_dir / "multibox_loss.npz")))
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, out.stderr[-2000:]
    values = [float(v) for v in line.split()[1:]]
    np.testing.assert_allclose(values[:3], values[3:], rtol=1e-4)
