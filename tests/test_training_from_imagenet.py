"""Real data, from the ImageNet backbone: a few epochs of the short recipe
(configs/mobilenet025_short.yaml) on a slice of WIDER train5 must raise WIDER val AP far above
the untrained model's (slow: several minutes on 2 cores). The full 40-epoch runs, side by side
with the reference's own training, are in docs/training.md "Training from ImageNet"."""

from __future__ import annotations

import json

import pytest

from retinaface_tf.config import Config
from retinaface_tf.inference import Detector
from retinaface_tf.models import build_from_config
from retinaface_tf.models.weights import load_model
from retinaface_tf.training import load_initial_weights, train

TRAIN_IMAGES = 384
VAL_IMAGES = 80
EPOCHS = 8


def _slice_label_file(src, dst, n):
    out, count = [], 0
    for line in src.read_text().splitlines():
        if line.startswith("#"):
            count += 1
            if count > n:
                break
        out.append(line)
    dst.write_text("\n".join(out) + "\n")
    return dst


def _val_ap(detector, widerface_dir):
    from retinaface_tf.evaluation.tta import predict_images
    from retinaface_tf.evaluation.widerface import evaluate_predictions, list_images, load_ground_truth

    gt = load_ground_truth(widerface_dir / "ground_truth")
    images = dict(list(list_images(widerface_dir / "val" / "images", gt).items())[:VAL_IMAGES])
    preds, _ = predict_images(detector, images, progress=False)
    return evaluate_predictions(preds, gt).ap


@pytest.mark.slow
def test_short_recipe_learns_faces_from_imagenet(widerface_dir, reference_dir, tmp_path, capsys):
    train5 = widerface_dir / "train5"
    if not (train5 / "label.txt").exists():
        pytest.skip(f"WIDER train5 not found at {train5}")
    label = _slice_label_file(train5 / "label.txt", tmp_path / "label.txt", TRAIN_IMAGES)
    backbone = reference_dir / "mobilenetV1X0.25_pretrain.tar"
    cfg = Config.load("mobilenet025_short").override({"train.epochs": EPOCHS})

    untrained = build_from_config(cfg)
    load_initial_weights(untrained, backbone_weights=backbone)
    before = _val_ap(Detector(model=untrained, config=cfg, score_threshold=0.02), widerface_dir)

    train(cfg, output_dir=tmp_path / "run", label_file=label, images_dir=train5 / "images",
          backbone_weights=backbone, verbose=0)
    model, config = load_model(tmp_path / "run")
    after = _val_ap(Detector(model=model, config=config, score_threshold=0.02), widerface_dir)
    with capsys.disabled():
        print(f"\nWIDER val AP ({VAL_IMAGES} images) untrained / after {EPOCHS} epochs on {TRAIN_IMAGES} train5 images:",
              json.dumps({"untrained": before, "trained": after}))
    # measured (2026-11-22, 2-core VM): untrained 0.0002 / 0.0001 / 0.0001, after 8 epochs
    # 0.459 / 0.290 / 0.058 (easy / medium / hard); hard AP needs more epochs than this test runs
    for setting, margin in (("easy", 0.3), ("medium", 0.18)):
        assert after[setting] >= before[setting] + margin, (setting, before, after)
