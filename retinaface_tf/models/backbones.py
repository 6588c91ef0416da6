"""Backbones returning the three feature maps (strides 8, 16, 32).

- ``mobilenet025``: MobileNetV1-0.25 exactly as the reference (``models/net.py``: stage1..3).
- ``resnet50``: ``keras.applications.ResNet50`` (weights only from a local file, never
  downloaded); features ``conv3_block4_out``, ``conv4_block6_out``, ``conv5_block3_out``.
  Its stride sits in the first 1x1 convolution of each stage (Keras/Caffe layout) where
  torchvision puts it in the 3x3, so biubug6's ``Resnet50_Final.pth`` does not map onto it.
"""

from __future__ import annotations

import keras

from retinaface_tf.models.layers import conv_bn, conv_dw

# (filters, stride) of each conv_dw block; block 0 of stage1 is a full conv_bn 3→8 stride 2.
MOBILENET_STAGES = {
    "stage1": [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1)],
    "stage2": [(128, 2)] + [(128, 1)] * 5,
    "stage3": [(256, 2), (256, 1)],
}
BACKBONE_CHANNELS = {"mobilenet025": (64, 128, 256), "resnet50": (512, 1024, 2048)}


def mobilenet_v1_025(*, leaky: float = 0.1, name: str = "mobilenet025") -> keras.Model:
    """``[B, H, W, 3]`` float (BGR minus mean) → three maps ``[B, ceil(H/s), ceil(W/s), C]``,
    s = 8, 16, 32, C = 64, 128, 256."""
    inputs = keras.Input((None, None, 3), name="image")
    x = conv_bn(inputs, 8, stride=2, leaky=leaky, name="stage1_0")
    outputs = []
    for stage, blocks in MOBILENET_STAGES.items():
        first = 1 if stage == "stage1" else 0
        for i, (filters, stride) in enumerate(blocks, start=first):
            x = conv_dw(x, filters, stride=stride, leaky=leaky, name=f"{stage}_{i}")
        outputs.append(x)
    return keras.Model(inputs, outputs, name=name)


def resnet50(*, weights: str | None = None, name: str = "resnet50") -> keras.Model:
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    if weights:
        base.load_weights(weights)
    outs = [base.get_layer(n).output for n in ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")]
    return keras.Model(base.inputs, outs, name=name)


def build_backbone(backbone: str, *, leaky: float = 0.1, weights: str | None = None) -> keras.Model:
    if backbone == "mobilenet025":
        model = mobilenet_v1_025(leaky=leaky)
        if weights:
            model.load_weights(weights)
        return model
    if backbone == "resnet50":
        return resnet50(weights=weights)
    raise ValueError(f"unknown backbone {backbone!r} (known: mobilenet025, resnet50)")
