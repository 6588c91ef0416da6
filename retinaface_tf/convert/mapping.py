"""Map reference (biubug6) state-dict tensors onto the Keras RetinaFace / MobileNet layers, and
load the reference's checkpoints (full RetinaFace or ImageNet backbone) into a Keras model.

Every Keras layer name translates to one torch module prefix; every Keras variable must get a
tensor of the right shape and every torch tensor must be used (``num_batches_tracked`` and, for
the ImageNet backbone, the classifier ``fc.*`` are the only ones skipped on purpose).
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np

from retinaface_tf.convert.torch_weights import load_torch_checkpoint
from retinaface_tf.errors import CheckpointError

_RULES = [
    # keras layer name regex, torch prefix template
    (r"^(stage\d)_0_conv$", r"\1.0.0"),
    (r"^(stage\d)_0_bn$", r"\1.0.1"),
    (r"^(stage\d)_(\d+)_dw$", r"\1.\2.0"),
    (r"^(stage\d)_(\d+)_dw_bn$", r"\1.\2.1"),
    (r"^(stage\d)_(\d+)_pw$", r"\1.\2.3"),
    (r"^(stage\d)_(\d+)_pw_bn$", r"\1.\2.4"),
    (r"^fpn_(output\d|merge\d)_conv$", r"fpn.\1.0"),
    (r"^fpn_(output\d|merge\d)_bn$", r"fpn.\1.1"),
    (r"^(ssh\d)_(conv\w+?)_conv$", r"\1.\2.0"),
    (r"^(ssh\d)_(conv\w+?)_bn$", r"\1.\2.1"),
    (r"^(ClassHead|BboxHead|LandmarkHead)_(\d)$", r"\1.\2.conv1x1"),
]
_SKIPPED = re.compile(r"(^|\.)num_batches_tracked$")


def torch_prefix(layer_name: str) -> str | None:
    for pattern, template in _RULES:
        if re.match(pattern, layer_name):
            return re.sub(pattern, template, layer_name)
    return None


def _iter_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def _layer_arrays(layer, prefix: str, sd: dict, path: str) -> list[tuple[str, np.ndarray]]:
    """The torch tensors for ``layer``'s variables, in Keras layout."""
    def get(suffix):
        key = f"{prefix}.{suffix}"
        if key not in sd:
            raise CheckpointError(f"{path}: missing tensor {key} for Keras layer {layer.name}")
        return key, sd[key]

    if isinstance(layer, keras.layers.BatchNormalization):
        return [get("weight"), get("bias"), get("running_mean"), get("running_var")]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        key, w = get("weight")
        out = [(key, np.transpose(w, (2, 3, 0, 1)))]  # [C,1,kh,kw] -> [kh,kw,C,1]
    elif isinstance(layer, keras.layers.Conv2D):
        key, w = get("weight")
        out = [(key, np.transpose(w, (2, 3, 1, 0)))]  # [O,I,kh,kw] -> [kh,kw,I,O]
    else:
        raise CheckpointError(f"{path}: no mapping for Keras layer {layer.name} ({type(layer).__name__})")
    if layer.use_bias:
        out.append(get("bias"))
    return out


def assign_state_dict(model: keras.Model, state_dict: dict[str, np.ndarray], *, path: str,
                      prefix: str = "", ignore: re.Pattern | None = None) -> int:
    """Copy ``state_dict`` (torch names, optional ``prefix`` such as ``"body."`` for backbone
    layers) into ``model``. Fails loudly on a missing, unused or mis-shaped tensor and assigns
    nothing unless everything fits. Returns the number of tensors used."""
    backbone_names = {layer.name for m in model.layers if isinstance(m, keras.Model) for layer in _iter_layers(m)}
    plan = []
    used = set()
    for layer in _iter_layers(model):
        if not layer.weights:
            continue
        tp = torch_prefix(layer.name)
        if tp is None:
            raise CheckpointError(f"{path}: Keras layer {layer.name} has no reference counterpart")
        if layer.name in backbone_names or layer.name.startswith("stage"):
            tp = prefix + tp
        arrays = _layer_arrays(layer, tp, state_dict, path)
        if len(arrays) != len(layer.weights):
            raise CheckpointError(f"{path}: layer {layer.name} has {len(layer.weights)} variables, got {len(arrays)}")
        for var, (key, arr) in zip(layer.weights, arrays):
            if tuple(var.shape) != arr.shape:
                raise CheckpointError(
                    f"{path}: tensor {key} has shape {arr.shape} (Keras layout) but {var.path} needs {tuple(var.shape)}")
            plan.append((var, arr))
            used.add(key)
    unused = [k for k in state_dict if k not in used and not _SKIPPED.search(k) and not (ignore and ignore.search(k))]
    if unused:
        more = f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""
        raise CheckpointError(f"{path}: {len(unused)} tensors fit no Keras layer: {', '.join(unused[:5])}{more}")
    for var, arr in plan:
        var.assign(arr.astype(var.dtype))
    return len(used)


# ---------------------------------------------------------------------- reference checkpoints
FULL = "full"
BACKBONE = "backbone"
_CLASSIFIER = re.compile(r"^fc\.")  # the ImageNet classifier, unused by the detector


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


def assign_full_model(model: keras.Model, state_dict: dict, *, path: str) -> int:
    """A full RetinaFace state dict (backbone under ``body.``) into the RetinaFace ``model``."""
    return assign_state_dict(model, state_dict, path=path, prefix="body.")


def assign_backbone(backbone_model: keras.Model, state_dict: dict, *, path: str) -> int:
    """The ImageNet MobileNetV1-0.25 state dict into the backbone model (classifier skipped)."""
    return assign_state_dict(backbone_model, state_dict, path=path, prefix="", ignore=_CLASSIFIER)


def load_reference_weights(model: keras.Model, path: str | os.PathLike) -> int:
    """Load a full reference RetinaFace ``.pth`` into ``model`` (all or nothing)."""
    path = os.fspath(path)
    state_dict = load_torch_checkpoint(path)
    if checkpoint_kind(state_dict, path) != FULL:
        raise CheckpointError(f"{path}: holds only backbone weights; use `retinaface-tf convert` and pass them as "
                              "model.backbone_weights")
    return assign_full_model(model, state_dict, path=path)


def load_reference_backbone(backbone_model: keras.Model, path: str | os.PathLike) -> int:
    """Load the ImageNet MobileNetV1-0.25 checkpoint into the backbone model (classifier skipped)."""
    path = os.fspath(path)
    state_dict = load_torch_checkpoint(path)
    if checkpoint_kind(state_dict, path) != BACKBONE:
        raise CheckpointError(f"{path}: is a full RetinaFace checkpoint, not a backbone one")
    return assign_backbone(backbone_model, state_dict, path=path)
