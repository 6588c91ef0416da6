"""Training runs on every new backbone: ResNet-50 from a torchvision-style ImageNet state dict
(``--backbone-weights``, as the reference's training starts), MobileNetV2 and ResNet-18 likewise;
a killed ResNet-50 run resumes where it stopped, and its run folder works in the Detector."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO
from test_convert import write_zip_checkpoint

from retinaface_tf.cli import main
from retinaface_tf.convert.torch_weights import load_torch_checkpoint

FIXTURES = {"resnet50": ("resnet50_random.pth", "body."), "mobilenetv2": ("yakhyo/yakhyo_mobilenetv2_random.pth", "fx."),
            "resnet18": ("yakhyo/yakhyo_resnet18_random.pth", "fx.")}


def _imagenet_state_dict(reference_dir, tmp_path, network):
    """A torchvision ImageNet state dict of ``network``: the fixture's backbone tensors, prefix
    removed, plus a classifier (skipped by the conversion)."""
    name, prefix = FIXTURES[network]
    path = reference_dir / name
    if not path.exists():
        pytest.skip(f"fixture {path} not found")
    state = {k[len(prefix):]: v for k, v in load_torch_checkpoint(path).items() if k.startswith(prefix)}
    head = "classifier.1" if network == "mobilenetv2" else "fc"
    state[f"{head}.weight"], state[f"{head}.bias"] = np.zeros((1000, 4), np.float32), np.zeros(1000, np.float32)
    out = tmp_path / f"{network}-imagenet.pth"
    write_zip_checkpoint(out, state)
    return out


def _train_slice(widerface_dir, tmp_path, n):
    train = widerface_dir / "train"
    if not (train / "label.txt").exists():
        pytest.skip(f"WIDER train not found at {train}")
    lines, count = [], 0
    for line in (train / "label.txt").read_text().splitlines():
        if line.startswith("#"):
            count += 1
            if count > n:
                break
        lines.append(line)
    label = tmp_path / "label.txt"
    label.write_text("\n".join(lines) + "\n")
    return label, train / "images"


def _losses(run):
    with open(run / "history.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("network", ["resnet50", "mobilenetv2", "resnet18"])
def test_short_fit_from_imagenet_backbone_learns(reference_dir, widerface_dir, tmp_path, network):
    backbone = _imagenet_state_dict(reference_dir, tmp_path, network)
    label, images = _train_slice(widerface_dir, tmp_path, 8)
    run = tmp_path / "run"
    assert main(["train", "--config", network, "--backbone-weights", str(backbone), "--label-file", str(label),
                 "--images", str(images), "--output", str(run), "--set", "data.image_size=160",
                 "--set", "train.learning_rate=0.01", "--batch-size", "8", "--epochs", "6", "--quiet"]) == 0
    losses = _losses(run)
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_resnet50_run_resumes_after_a_kill_and_serves(reference_dir, widerface_dir, tmp_path):
    backbone = _imagenet_state_dict(reference_dir, tmp_path, "resnet50")
    label, images = _train_slice(widerface_dir, tmp_path, 4)
    run = tmp_path / "run"
    args = ["train", "--config", "resnet50", "--backbone-weights", str(backbone), "--label-file", str(label),
            "--images", str(images), "--output", str(run), "--set", "data.image_size=96", "--batch-size", "2",
            "--epochs", "2", "--quiet"]
    code = textwrap.dedent(f"""
        import os, signal, keras
        from retinaface_tf.training import trainer
        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                os.kill(os.getpid(), signal.SIGKILL)
        original = trainer.train
        def train(*a, **k):
            return original(*a, extra_callbacks=[Kill()], **k)
        trainer.train = train
        import retinaface_tf.commands.train as command
        command.train = train
        from retinaface_tf.cli import main
        main({args!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (run / "backup").is_dir() and len(_losses(run)) == 1
    assert main(args) == 0  # the same command again: resumes at epoch 2
    assert len(_losses(run)) == 2 and not (run / "backup").exists()
    from retinaface_tf.inference import Detector
    detector = Detector(run, score_threshold=0.0)
    assert detector.config.model.backbone == "resnet50"
    faces = detector.detect(np.zeros((96, 128, 3), np.uint8))
    assert faces.boxes.shape[1:] == (4,) and np.all(np.isfinite(faces.boxes))
