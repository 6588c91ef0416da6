"""WIDER FACE AP during training: a validation callback for
:func:`retinaface_tf.training.train` (``train --val-images ... --val-every N``)."""

from __future__ import annotations

import sys

from retinaface_tf.config import Config
from retinaface_tf.evaluation.tta import predict_images
from retinaface_tf.evaluation.widerface import SETTINGS, evaluate_predictions, list_images, load_ground_truth
from retinaface_tf.inference import Detector
from retinaface_tf.training.callbacks import ValidationCallback


class WiderValidation(ValidationCallback):
    """WIDER FACE AP of the current weights on a val folder at the end of every ``every``-th
    epoch; adds ``val_easy_ap``, ``val_medium_ap``, ``val_hard_ap`` to the logs (NaN at the other
    epochs), and ``best.weights.h5`` follows the hard AP. The ground truth and the image list are
    read here, before training starts (a bad folder fails at once)."""

    monitor = ("val_hard_ap", "max")

    def __init__(self, images_dir, ground_truth_dir, *, every: int, config: Config, max_images: int | None = None):
        super().__init__()
        self.every = max(1, int(every))
        self.config = config
        self.ground_truth = load_ground_truth(ground_truth_dir)
        images = list_images(images_dir, self.ground_truth)
        if max_images:
            images = dict(list(images.items())[:max_images])
        self.images = images
        self._detector = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            # CSVLogger fixes its columns at the first epoch: log NaN so the AP columns exist
            if logs is not None:
                logs.update({f"val_{s}_ap": float("nan") for s in SETTINGS})
            return
        if self._detector is None:  # holds the model itself: later epochs reuse the traced graph
            self._detector = Detector(model=self.model, config=self.config, score_threshold=0.02, fused=False)
        preds, _ = predict_images(self._detector, self.images, progress=False)
        result = evaluate_predictions(preds, self.ground_truth)
        if logs is not None:
            for setting, ap in result.ap.items():
                logs[f"val_{setting}_ap"] = float(ap)
        print(f"\nepoch {epoch + 1}: WIDER val AP easy {result.ap['easy']:.4f} medium {result.ap['medium']:.4f} "
              f"hard {result.ap['hard']:.4f} ({result.num_images} images)", file=sys.stderr)
