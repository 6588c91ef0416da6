"""``.pth`` → Keras conversion of the reference's checkpoints (full model or ImageNet backbone)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from retinaface_tf.convert.mapping import assign_state_dict
from retinaface_tf.convert.torch_weights import load_torch_checkpoint
from retinaface_tf.errors import CheckpointError

FULL = "full"
BACKBONE = "backbone"


def checkpoint_kind(state_dict: dict, path: str) -> str:
    """``full`` (RetinaFace: ``body.*``, ``fpn.*``, ...) or ``backbone`` (ImageNet MobileNet:
    ``stage1.*`` ... ``fc.*``)."""
    keys = list(state_dict)
    if any(k.startswith("body.layer") for k in keys):
        raise CheckpointError(
            f"{path}: this is a ResNet50 RetinaFace checkpoint; its torchvision ResNet layout (stride in the "
            "3x3 conv) differs from keras.applications.ResNet50, so it cannot be converted")
    if any(k.startswith("body.") for k in keys) and any(k.startswith("ClassHead.") for k in keys):
        return FULL
    if any(k.startswith("stage1.") for k in keys):
        return BACKBONE
    raise CheckpointError(f"{path}: not a RetinaFace or MobileNetV1-0.25 checkpoint (first keys: {', '.join(keys[:3])})")


def load_reference_weights(model, path: str | os.PathLike) -> int:
    """Load a full reference RetinaFace ``.pth`` into ``model`` (all or nothing)."""
    path = os.fspath(path)
    sd = load_torch_checkpoint(path)
    if checkpoint_kind(sd, path) != FULL:
        raise CheckpointError(f"{path}: holds only backbone weights; use `retinaface-tf convert` and pass them as "
                              "model.backbone_weights")
    return assign_state_dict(model, sd, path=path, prefix="body.")


def load_reference_backbone(backbone_model, path: str | os.PathLike) -> int:
    """Load the ImageNet MobileNetV1-0.25 checkpoint into the backbone model (classifier skipped)."""
    path = os.fspath(path)
    sd = load_torch_checkpoint(path)
    if checkpoint_kind(sd, path) != BACKBONE:
        raise CheckpointError(f"{path}: is a full RetinaFace checkpoint, not a backbone one")
    return assign_state_dict(backbone_model, sd, path=path, prefix="", ignore=re.compile(r"^fc\."))


def convert_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, config=None) -> dict:
    """Convert ``checkpoint`` into ``output/`` atomically.

    Full model → ``output/model.weights.h5``; backbone → ``output/backbone.weights.h5``; both with
    ``output/config.yaml`` (the resolved config). Nothing is written unless every tensor maps.
    ``output`` must be new, empty, or a model folder: only the files convert writes, plus a README
    or licence (carried over); anything else there is an error before any work.
    Returns a summary dict.
    """
    from retinaface_tf.config import Config
    from retinaface_tf.fileio import atomic_directory, check_output_folder
    from retinaface_tf.inference import CONFIG_FILE, WEIGHTS_FILE
    from retinaface_tf.models import build_from_config
    from retinaface_tf.models.backbones import build_backbone

    checkpoint = os.fspath(checkpoint)
    cfg = config if isinstance(config, Config) else Config.preset("mobilenet025")
    if cfg.model.backbone != "mobilenet025":
        raise CheckpointError(f"{checkpoint}: only mobilenet025 reference checkpoints can be converted "
                              f"(config asks for {cfg.model.backbone})")
    owned = (WEIGHTS_FILE, "backbone.weights.h5", CONFIG_FILE)
    check_output_folder(output, owned=owned)  # before any work: never replace what convert did not write
    sd = load_torch_checkpoint(checkpoint)
    kind = checkpoint_kind(sd, checkpoint)
    if kind == FULL:
        model = build_from_config(cfg)
        n = assign_state_dict(model, sd, path=checkpoint, prefix="body.")
        filename = WEIGHTS_FILE
    else:
        model = build_backbone("mobilenet025", leaky=cfg.model.backbone_leaky)
        n = assign_state_dict(model, sd, path=checkpoint, prefix="", ignore=re.compile(r"^fc\."))
        filename = "backbone.weights.h5"
    with atomic_directory(output, owned=owned) as tmp:
        model.save_weights(str(Path(tmp) / filename))
        cfg.to_yaml(Path(tmp) / CONFIG_FILE)
    return {"kind": kind, "tensors": n, "skipped": len(sd) - n, "weights": str(Path(output) / filename)}
