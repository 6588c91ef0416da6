"""Backbones: each a named entry of :data:`BACKBONES` (its layers, the three feature maps of
strides 8, 16, 32 it hands the FPN, their channels, its checkpoint key layout).

Every architecture is written **once**, against a *blocks* object
(:class:`retinaface_tf.models.layers.KerasBlocks` builds the trainable Conv → BN → activation
layers; :class:`retinaface_tf.models.fused.FusedBlocks` the same network with batch norm folded,
for inference), so the network that is trained, converted and served is one definition.

| name | architecture | features (channels) | checkpoints |
| --- | --- | --- | --- |
| ``mobilenet025`` | MobileNetV1 ×0.25 (biubug6's ``MobileNetV1``) | stage1/2/3 (64, 128, 256) | biubug6, yakhyo ``mobilenetv1_0.25`` |
| ``mobilenet050`` | MobileNetV1 ×0.5 | stage1/2/3 (128, 256, 512) | yakhyo ``mobilenetv1_0.50`` |
| ``mobilenet100`` | MobileNetV1 ×1 | stage1/2/3 (256, 512, 1024) | yakhyo ``mobilenetv1`` |
| ``mobilenetv2`` | torchvision MobileNetV2 (ReLU6) | after blocks 6, 13, 18 (32, 96, 1280) | yakhyo ``mobilenetv2`` |
| ``resnet18`` / ``resnet34`` | torchvision ResNet, BasicBlocks [2,2,2,2] / [3,4,6,3] | layer2/3/4 (128, 256, 512) | yakhyo |
| ``resnet50`` | torchvision ResNet-50 (v1.5: stride in each bottleneck's 3x3) | layer2/3/4 (512, 1024, 2048) | biubug6 ``Resnet50_Final.pth`` |

Layer names: the MobileNetV1 family keeps the reference's block names (``stage1_0_conv``,
``stage2_3_dw``, ...); torchvision layouts use the torchvision module path with ``.`` written
``_`` (``layer2_0_conv2``, ``layer2_0_downsample_0``, ``features_3_conv_1_0``), so their key
map is that substitution (:mod:`retinaface_tf.convert.mapping`).

The max-pool of the ResNet stem pads with zeros where PyTorch pads with ``-inf``: it follows a
ReLU, so every window holds a value ``>= 0`` and the maximum is the same.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras

from retinaface_tf.config import BACKBONES as BACKBONE_NAMES
from retinaface_tf.models.layers import KerasBlocks


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: ``value`` rounded to a multiple of ``divisor``, never
    more than 10 % below it (MobileNet channel widths)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# ---------------------------------------------------------------------- MobileNetV1
# (output channels of the width-1 network, stride) of each block; block 0 of stage1 is a full
# conv_bn 3 -> 32 x width, stride 2; the others are depthwise-separable (conv_dw).
MOBILENET_V1_STAGES = {
    "stage1": [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1)],
    "stage2": [(512, 2)] + [(512, 1)] * 5,
    "stage3": [(1024, 2), (1024, 1)],
}


def mobilenet_v1(blocks, x, *, width: float, leaky: float):
    """MobileNetV1 at ``width`` (0.25: the reference's mobilenet0.25), LeakyReLU(``leaky``)
    after every convolution. Returns the outputs of stage1/2/3 (strides 8, 16, 32)."""
    x = blocks.conv(x, make_divisible(32 * width), 3, 2, act=leaky, conv="stage1_0_conv", bn="stage1_0_bn",
                    act_name="stage1_0_relu")
    features = []
    for stage, specs in MOBILENET_V1_STAGES.items():
        first = 1 if stage == "stage1" else 0
        for i, (filters, stride) in enumerate(specs, start=first):
            name = f"{stage}_{i}"
            x = blocks.depthwise(x, 3, stride, act=leaky, conv=f"{name}_dw", bn=f"{name}_dw_bn",
                                 act_name=f"{name}_dw_relu")
            x = blocks.conv(x, make_divisible(filters * width), 1, 1, act=leaky, conv=f"{name}_pw",
                            bn=f"{name}_pw_bn", act_name=f"{name}_pw_relu")
        features.append(x)
    return features


# ---------------------------------------------------------------------- MobileNetV2
# torchvision's inverted-residual settings: expansion t, channels c, repeats n, first stride s.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_V2_FEATURES = (6, 13, 18)  # yakhyo's IntermediateLayerGetterByIndex: after these blocks


def mobilenet_v2(blocks, x, *, leaky: float = 0.0):
    """torchvision's MobileNetV2 (width 1, ReLU6) up to ``features.18``; returns the outputs of
    ``features.6`` (32 ch, stride 8), ``features.13`` (96, 16) and ``features.18`` (1280, 32)."""
    del leaky  # ReLU6 throughout
    x = blocks.conv(x, 32, 3, 2, act="relu6", conv="features_0_0", bn="features_0_1")
    index, channels, features = 1, 32, []
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features_{index}_conv"
            hidden = int(round(channels * t))
            y, k = x, 0
            if t != 1:
                y = blocks.conv(y, hidden, 1, 1, act="relu6", conv=f"{p}_0_0", bn=f"{p}_0_1")
                k = 1
            y = blocks.depthwise(y, 3, stride, act="relu6", conv=f"{p}_{k}_0", bn=f"{p}_{k}_1")
            residual = x if stride == 1 and channels == c else None
            x = blocks.conv(y, c, 1, 1, act=None, conv=f"{p}_{k + 1}", bn=f"{p}_{k + 2}", residual=residual)
            channels = c
            if index in MOBILENET_V2_FEATURES:
                features.append(x)
            index += 1
    x = blocks.conv(x, 1280, 1, 1, act="relu6", conv=f"features_{index}_0", bn=f"features_{index}_1")
    features.append(x)
    return features


# ---------------------------------------------------------------------- ResNet (torchvision)
def _basic_block(blocks, x, planes: int, stride: int, name: str, downsample: bool):
    identity = x
    y = blocks.conv(x, planes, 3, stride, act="relu", conv=f"{name}_conv1", bn=f"{name}_bn1")
    if downsample:
        identity = blocks.conv(x, planes, 1, stride, act=None, conv=f"{name}_downsample_0",
                               bn=f"{name}_downsample_1")
    return blocks.conv(y, planes, 3, 1, act="relu", conv=f"{name}_conv2", bn=f"{name}_bn2", residual=identity)


def _bottleneck(blocks, x, planes: int, stride: int, name: str, downsample: bool):
    identity = x
    y = blocks.conv(x, planes, 1, 1, act="relu", conv=f"{name}_conv1", bn=f"{name}_bn1")
    y = blocks.conv(y, planes, 3, stride, act="relu", conv=f"{name}_conv2", bn=f"{name}_bn2")  # v1.5: stride here
    if downsample:
        identity = blocks.conv(x, planes * 4, 1, stride, act=None, conv=f"{name}_downsample_0",
                               bn=f"{name}_downsample_1")
    return blocks.conv(y, planes * 4, 1, 1, act="relu", conv=f"{name}_conv3", bn=f"{name}_bn3", residual=identity)


def resnet(blocks, x, *, depths: tuple[int, int, int, int], bottleneck: bool, leaky: float = 0.0):
    """torchvision's ResNet (v1.5): conv1 7x7/2 (padding 3), BN, ReLU, max-pool 3x3/2 (padding
    1), layers 1-4 of BasicBlocks or Bottlenecks (stride in the first 3x3, 1x1 + BN downsample).
    Returns the outputs of layer2/3/4 (strides 8, 16, 32)."""
    del leaky  # ReLU throughout
    block, expansion = (_bottleneck, 4) if bottleneck else (_basic_block, 1)
    x = blocks.conv(x, 64, 7, 2, act="relu", conv="conv1", bn="bn1")
    x = blocks.max_pool(x, name="maxpool")
    channels, features = 64, []
    for layer, (depth, planes) in enumerate(zip(depths, (64, 128, 256, 512)), start=1):
        for i in range(depth):
            stride = 2 if layer > 1 and i == 0 else 1
            downsample = i == 0 and (stride != 1 or channels != planes * expansion)
            x = block(blocks, x, planes, stride, f"layer{layer}_{i}", downsample)
            channels = planes * expansion
        if layer > 1:
            features.append(x)
    return features


# ---------------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class Backbone:
    """A backbone: ``features(blocks, x, leaky=...)`` builds it on ``blocks`` and returns the
    three maps the FPN takes; ``channels`` are theirs; ``layout`` names its checkpoint key
    layout (:mod:`retinaface_tf.convert.mapping`): ``"mobilenet_v1"`` (the reference's block
    names) or ``"torchvision"`` (module paths)."""

    name: str
    features: Callable
    channels: tuple[int, int, int]
    layout: str
    description: str


def _register(*backbones: Backbone) -> dict[str, Backbone]:
    return {b.name: b for b in backbones}


BACKBONES: dict[str, Backbone] = _register(
    Backbone("mobilenet025", lambda b, x, leaky: mobilenet_v1(b, x, width=0.25, leaky=leaky), (64, 128, 256),
             "mobilenet_v1", "MobileNetV1 x0.25"),
    Backbone("mobilenet050", lambda b, x, leaky: mobilenet_v1(b, x, width=0.5, leaky=leaky), (128, 256, 512),
             "mobilenet_v1", "MobileNetV1 x0.5"),
    Backbone("mobilenet100", lambda b, x, leaky: mobilenet_v1(b, x, width=1.0, leaky=leaky), (256, 512, 1024),
             "mobilenet_v1", "MobileNetV1 x1"),
    Backbone("mobilenetv2", lambda b, x, leaky: mobilenet_v2(b, x), (32, 96, 1280), "torchvision", "MobileNetV2"),
    Backbone("resnet18", lambda b, x, leaky: resnet(b, x, depths=(2, 2, 2, 2), bottleneck=False), (128, 256, 512),
             "torchvision", "ResNet-18"),
    Backbone("resnet34", lambda b, x, leaky: resnet(b, x, depths=(3, 4, 6, 3), bottleneck=False), (128, 256, 512),
             "torchvision", "ResNet-34"),
    Backbone("resnet50", lambda b, x, leaky: resnet(b, x, depths=(3, 4, 6, 3), bottleneck=True), (512, 1024, 2048),
             "torchvision", "ResNet-50"),
)
assert tuple(BACKBONES) == tuple(BACKBONE_NAMES), "config.BACKBONES and the registry must list the same names"
BACKBONE_CHANNELS = {name: b.channels for name, b in BACKBONES.items()}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})") from None


def build_backbone(backbone: str, *, leaky: float = 0.1, weights: str | None = None) -> keras.Model:
    """The trainable backbone ``backbone`` as a Keras model named after it: ``[B, H, W, 3]``
    float (BGR minus mean) → three maps ``[B, ceil(H/s), ceil(W/s), C]``, s = 8, 16, 32.
    ``leaky``: the MobileNetV1 family's LeakyReLU slope (others have fixed activations).
    ``weights``: a Keras ``.weights.h5`` of this backbone (what ``convert`` writes)."""
    spec = get_backbone(backbone)
    inputs = keras.Input((None, None, 3), name="image")
    model = keras.Model(inputs, spec.features(KerasBlocks(), inputs, leaky=leaky), name=spec.name)
    if weights:
        model.load_weights(weights)
    return model
