"""Real data: fine-tuning the bundled model for one epoch on WIDER train must not lower its WIDER
val AP by more than 1 point (slow: ~3 minutes on 2 cores)."""

import json

import pytest

from retinaface_tf.config import Config
from retinaface_tf.fileio import bundled_model_dir
from retinaface_tf.inference import Detector
from retinaface_tf.models.weights import load_model
from retinaface_tf.training import train


def _val_ap(detector, widerface_dir):
    from retinaface_tf.evaluation.tta import predict_images
    from retinaface_tf.evaluation.widerface import evaluate_predictions, list_images, load_ground_truth

    gt = load_ground_truth(widerface_dir / "ground_truth")
    preds, _ = predict_images(detector, list_images(widerface_dir / "val" / "images", gt), progress=False)
    return evaluate_predictions(preds, gt).ap


@pytest.mark.slow
def test_finetune_one_epoch_keeps_val_ap(widerface_dir, tmp_path, capsys):
    cfg = Config.preset("mobilenet025").override({"train.epochs": "1"})
    train(cfg, output_dir=tmp_path / "run", label_file=widerface_dir / "train" / "label.txt",
          images_dir=widerface_dir / "train" / "images", weights=bundled_model_dir(),
          verbose=0)
    model, config = load_model(tmp_path / "run")
    after = _val_ap(Detector(model=model, config=config, score_threshold=0.02, max_detections=5000), widerface_dir)
    before = _val_ap(Detector(score_threshold=0.02, max_detections=5000), widerface_dir)
    with capsys.disabled():
        print("\nWIDER val AP before/after one fine-tuning epoch:", json.dumps({"before": before, "after": after}))
    for setting in ("easy", "medium", "hard"):
        assert after[setting] >= before[setting] - 0.01, (setting, before, after)
