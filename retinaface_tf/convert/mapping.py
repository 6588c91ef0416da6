"""Map PyTorch RetinaFace checkpoints onto the Keras network: which checkpoint a state dict is
(:func:`identify_checkpoint`), and its tensors into a Keras model (:func:`assign_state_dict`).

Two checkpoint **families** hold the same networks under other key names:

| family | full model | backbone under | heads |
| --- | --- | --- | --- |
| ``reference`` (biubug6/Pytorch_Retinaface) | ``body.*``, ``fpn.*``, ``ssh1..3.*`` | ``body.`` | ``ClassHead.{0,1,2}.conv1x1`` |
| ``yakhyo`` (yakhyo/retinaface-pytorch, ``uniface``) | ``fx.*``, ``fpn.*``, ``ssh1..3.*`` | ``fx.`` | ``class_head.class_head.{0,1,2}`` |

and ImageNet **backbone** checkpoints (no prefix, their classifier skipped): the reference's
``mobilenetV1X0.25_pretrain.tar`` and torchvision's ``resnet18/34/50-*.pth``,
``mobilenet_v2-*.pth``.

Inside the backbone, the **key style** follows the architecture's source: ``biubug6`` (the
reference's MobileNetV1 ``stage1.1.0`` / ``.1`` / ``.3`` / ``.4``), ``yakhyo`` (its MobileNetV1
``stage1.1.0.0`` / ``.0.1`` / ``.1.0`` / ``.1.1``) and ``torchvision`` (module paths; our layer
names are those paths with ``.`` written ``_``). FPN and SSH names are common to all.

Every Keras variable must get a tensor of the right shape and every tensor must be used
(``num_batches_tracked`` and an ImageNet classifier are the only ones skipped on purpose).
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from retinaface_tf.errors import CheckpointError

REFERENCE, YAKHYO = "reference", "yakhyo"
FULL, BACKBONE = "full", "backbone"
BODY_PREFIX = {REFERENCE: "body.", YAKHYO: "fx."}
_HEAD_KEYS = {REFERENCE: r"\1.\2.conv1x1",
              YAKHYO: {"ClassHead": "class_head.class_head", "BboxHead": "bbox_head.bbox_head",
                       "LandmarkHead": "landmark_head.landmark_head"}}

_MOBILENET_V1_RULES = {
    "biubug6": [
        (r"^(stage\d)_0_conv$", r"\1.0.0"), (r"^(stage\d)_0_bn$", r"\1.0.1"),
        (r"^(stage\d)_(\d+)_dw$", r"\1.\2.0"), (r"^(stage\d)_(\d+)_dw_bn$", r"\1.\2.1"),
        (r"^(stage\d)_(\d+)_pw$", r"\1.\2.3"), (r"^(stage\d)_(\d+)_pw_bn$", r"\1.\2.4"),
    ],
    "yakhyo": [
        (r"^(stage\d)_0_conv$", r"\1.0.0"), (r"^(stage\d)_0_bn$", r"\1.0.1"),
        (r"^(stage\d)_(\d+)_dw$", r"\1.\2.0.0"), (r"^(stage\d)_(\d+)_dw_bn$", r"\1.\2.0.1"),
        (r"^(stage\d)_(\d+)_pw$", r"\1.\2.1.0"), (r"^(stage\d)_(\d+)_pw_bn$", r"\1.\2.1.1"),
    ],
}
_NECK_RULES = [
    (r"^fpn_(output\d|merge\d)_conv$", r"fpn.\1.0"),
    (r"^fpn_(output\d|merge\d)_bn$", r"fpn.\1.1"),
    (r"^(ssh\d)_(conv\w+?)_conv$", r"\1.\2.0"),
    (r"^(ssh\d)_(conv\w+?)_bn$", r"\1.\2.1"),
]
_HEAD_LAYER = re.compile(r"^(ClassHead|BboxHead|LandmarkHead)_(\d)$")
_SKIPPED = re.compile(r"(^|\.)num_batches_tracked$")
CLASSIFIER = re.compile(r"^(fc|classifier)\.")  # an ImageNet classifier, unused by the detector


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a state dict holds: ``kind`` (``full`` / ``backbone``), ``family`` (``reference`` /
    ``yakhyo``; ``None`` for an ImageNet backbone), ``backbone`` (our network name, e.g.
    ``resnet50``), ``key_style`` inside the backbone, and ``evidence``: the key that told the
    network apart (quoted in errors)."""

    kind: str
    family: str | None
    backbone: str
    key_style: str
    evidence: str

    @property
    def body_prefix(self) -> str:
        return BODY_PREFIX[self.family] if self.kind == FULL else ""

    def describe(self) -> str:
        source = {REFERENCE: "biubug6/Pytorch_Retinaface", YAKHYO: "yakhyo/retinaface-pytorch"}.get(self.family)
        what = f"{self.backbone} RetinaFace ({source})" if self.kind == FULL else f"{self.backbone} ImageNet backbone"
        return f"a {what} checkpoint"


def _first_keys(keys, n: int = 3) -> str:
    return ", ".join(list(keys)[:n])


def _identify_backbone(body: dict, prefix: str, path: str) -> tuple[str, str, str]:
    """``(network, key style, evidence key)`` of a backbone state dict (keys without prefix)."""
    def shape(key):
        value = body.get(key)
        return getattr(value, "shape", ())

    if "stage1.0.0.weight" in body:
        style = "yakhyo" if "stage1.1.0.0.weight" in body else "biubug6"
        width = shape("stage1.0.0.weight")[:1]
        network = {(8,): "mobilenet025", (16,): "mobilenet050", (32,): "mobilenet100"}.get(width)
        if network is None:
            raise CheckpointError(f"{path}: a MobileNetV1 whose first convolution has {width} output channels "
                                  f"({prefix}stage1.0.0.weight); known widths: 8 (x0.25), 16 (x0.5), 32 (x1)")
        return network, style, f"{prefix}stage1.0.0.weight {tuple(shape('stage1.0.0.weight'))}"
    if "features.0.0.weight" in body:
        return "mobilenetv2", "torchvision", f"{prefix}features.0.0.weight"
    if "layer1.0.conv1.weight" in body:
        blocks = len({k.split(".")[1] for k in body if k.startswith("layer3.")})
        if "layer1.0.conv3.weight" in body:
            if blocks != 6:
                raise CheckpointError(f"{path}: a bottleneck ResNet with {blocks} blocks in {prefix}layer3 "
                                      "(only ResNet-50, with 6, is supported)")
            return "resnet50", "torchvision", f"{prefix}layer1.0.conv3.weight"
        network = {2: "resnet18", 6: "resnet34"}.get(blocks)
        if network is None:
            raise CheckpointError(f"{path}: a BasicBlock ResNet with {blocks} blocks in {prefix}layer3 "
                                  "(ResNet-18 has 2, ResNet-34 has 6)")
        return network, "torchvision", f"{prefix}layer3 ({blocks} blocks)"
    raise CheckpointError(f"{path}: not a RetinaFace or backbone checkpoint this project knows "
                          f"(first keys: {_first_keys(prefix + k for k in body)})")


def identify_checkpoint(state_dict: dict, path: str) -> CheckpointInfo:
    """Tell the family, the kind and the network of ``state_dict`` from its keys (and the width
    of the first convolution / the number of ResNet blocks)."""
    keys = list(state_dict)
    if any(k.startswith("ClassHead.") for k in keys):
        kind, family = FULL, REFERENCE
    elif any(k.startswith("class_head.class_head.") for k in keys):
        kind, family = FULL, YAKHYO
    else:
        kind, family = BACKBONE, None
    prefix = BODY_PREFIX[family] if kind == FULL else ""
    body = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if kind == FULL and not body:
        raise CheckpointError(f"{path}: a {family} RetinaFace checkpoint without backbone tensors ({prefix}*)")
    network, style, evidence = _identify_backbone(body, prefix, path)
    return CheckpointInfo(kind, family, network, style, evidence)


def _backbone_prefix(layer_name: str, key_style: str) -> str | None:
    if key_style == "torchvision":
        return layer_name.replace("_", ".")
    for pattern, template in _MOBILENET_V1_RULES[key_style]:
        if re.match(pattern, layer_name):
            return re.sub(pattern, template, layer_name)
    return None


def torch_prefix(layer_name: str, *, family: str = REFERENCE, key_style: str = "biubug6",
                 in_backbone: bool | None = None) -> str | None:
    """The torch module prefix of the Keras layer ``layer_name`` (without the body prefix for
    backbone layers), or ``None``. ``in_backbone=None``: guessed from the MobileNetV1 names."""
    if in_backbone is None:
        in_backbone = layer_name.startswith("stage")
    if in_backbone:
        return _backbone_prefix(layer_name, key_style)
    for pattern, template in _NECK_RULES:
        if re.match(pattern, layer_name):
            return re.sub(pattern, template, layer_name)
    head = _HEAD_LAYER.match(layer_name)
    if head:
        keys = _HEAD_KEYS[family]
        return head.expand(keys) if isinstance(keys, str) else f"{keys[head.group(1)]}.{head.group(2)}"
    return None


def _iter_layers(model: keras.Model, in_backbone: bool = False):
    """``(layer, in_backbone)`` for every layer with weights, nested models flattened."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer, True)
        else:
            yield layer, in_backbone


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
        if getattr(w, "ndim", 0) != 4:
            raise CheckpointError(f"{path}: tensor {key} has shape {np.shape(w)}, a depthwise kernel has 4 dimensions")
        out = [(key, np.transpose(w, (2, 3, 0, 1)))]  # [C,1,kh,kw] -> [kh,kw,C,1]
    elif isinstance(layer, keras.layers.Conv2D):
        key, w = get("weight")
        if getattr(w, "ndim", 0) != 4:
            raise CheckpointError(f"{path}: tensor {key} has shape {np.shape(w)}, a convolution kernel has 4 dimensions")
        out = [(key, np.transpose(w, (2, 3, 1, 0)))]  # [O,I,kh,kw] -> [kh,kw,I,O]
    else:
        raise CheckpointError(f"{path}: no mapping for Keras layer {layer.name} ({type(layer).__name__})")
    if layer.use_bias:
        out.append(get("bias"))
    return out


def assign_state_dict(model: keras.Model, state_dict: dict[str, np.ndarray], *, path: str,
                      prefix: str = "", family: str = REFERENCE, key_style: str = "biubug6",
                      ignore: re.Pattern | None = None) -> int:
    """Copy ``state_dict`` into ``model``: backbone layers (those of a nested model, or all of
    ``model`` when it is the backbone itself) under ``prefix`` (``"body."``, ``"fx."``, or ``""``)
    in ``key_style``; FPN, SSH and heads by ``family``. Fails with a one-line
    :class:`CheckpointError` naming the tensor on a missing, unused or mis-shaped tensor and
    assigns nothing unless everything fits. Returns the number of tensors used."""
    plan = []
    used = set()
    nested = any(isinstance(layer, keras.Model) for layer in model.layers)
    for layer, in_backbone in _iter_layers(model):
        if not layer.weights:
            continue
        in_backbone = in_backbone or not nested
        tp = torch_prefix(layer.name, family=family, key_style=key_style, in_backbone=in_backbone)
        if tp is None:
            raise CheckpointError(f"{path}: Keras layer {layer.name} has no checkpoint counterpart")
        if in_backbone:
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


def assign_checkpoint(model: keras.Model, state_dict: dict, info: CheckpointInfo, *, path: str) -> int:
    """A state dict that :func:`identify_checkpoint` described as ``info`` into ``model`` (the
    whole RetinaFace for a full checkpoint, the backbone model for a backbone one), after
    checking that ``model`` is that network."""
    network = _network_of(model, info.kind)
    if network != info.backbone:
        raise CheckpointError(f"{path}: {info.describe()} ({info.evidence}), but the model to fill is a "
                              f"{network} network")
    return assign_state_dict(model, state_dict, path=path, prefix=info.body_prefix, family=info.family or REFERENCE,
                             key_style=info.key_style, ignore=CLASSIFIER if info.kind == BACKBONE else None)


def _network_of(model: keras.Model, kind: str) -> str:
    if kind == BACKBONE:
        return model.name
    return next((layer.name for layer in model.layers if isinstance(layer, keras.Model)), model.name)
