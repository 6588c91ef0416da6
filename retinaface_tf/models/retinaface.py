"""RetinaFace: backbone → 3-level FPN → SSH context modules → class / box / landmark heads.

The network input is what the reference feeds its model: float32 ``[B, H, W, 3]``, BGR, minus
the mean (104, 117, 123), unscaled, any H and W. :func:`retinaface_tf.ops.image.preprocess` turns
uint8 images into that and is used by the data pipeline, the Detector and every export, so none of
them takes anything but plain images.

Outputs (a dict), anchors ordered level → row → column → min size, ``N = num_anchors(H, W)``:
- ``bbox``      ``[B, N, 4]`` box deltas (dx, dy, dw, dh)
- ``classes``   ``[B, N, 2]`` logits (background, face); softmax gives the reference's ``conf``
- ``landmarks`` ``[B, N, 10]`` landmark deltas (x0, y0, ..., x4, y4)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from retinaface_tf.config import ModelConfig
from retinaface_tf.models.backbones import build_backbone
from retinaface_tf.models.layers import UpsampleLike, activation, conv_bn, torch_conv_init, torch_uniform


def fpn(features, *, channels: int, leaky: float):
    """The reference's FPN: 1x1 laterals, top-down nearest upsampling to the lateral's exact
    size, 3x3 merges on levels 1 and 2."""
    c1, c2, c3 = features
    o1 = conv_bn(c1, channels, kernel=1, leaky=leaky, name="fpn_output1")
    o2 = conv_bn(c2, channels, kernel=1, leaky=leaky, name="fpn_output2")
    o3 = conv_bn(c3, channels, kernel=1, leaky=leaky, name="fpn_output3")
    o2 = layers.Add(name="fpn_add2")([o2, UpsampleLike(name="fpn_up3")([o3, o2])])
    o2 = conv_bn(o2, channels, leaky=leaky, name="fpn_merge2")
    o1 = layers.Add(name="fpn_add1")([o1, UpsampleLike(name="fpn_up2")([o2, o1])])
    o1 = conv_bn(o1, channels, leaky=leaky, name="fpn_merge1")
    return [o1, o2, o3]


def ssh(x, *, channels: int, leaky: float, name: str):
    """Single Stage Headless context module: 3x3 ‖ 5x5 (two 3x3) ‖ 7x7 (three 3x3), then ReLU."""
    c3 = conv_bn(x, channels // 2, leaky=None, name=f"{name}_conv3X3")
    c5_1 = conv_bn(x, channels // 4, leaky=leaky, name=f"{name}_conv5X5_1")
    c5 = conv_bn(c5_1, channels // 4, leaky=None, name=f"{name}_conv5X5_2")
    c7_2 = conv_bn(c5_1, channels // 4, leaky=leaky, name=f"{name}_conv7X7_2")
    c7 = conv_bn(c7_2, channels // 4, leaky=None, name=f"{name}_conv7x7_3")
    out = layers.Concatenate(axis=-1, name=f"{name}_concat")([c3, c5, c7])
    return activation(out, 0, name)


def head(features, *, per_anchor: int, num_anchors: int, name: str):
    outs = []
    for i, f in enumerate(features):
        y = layers.Conv2D(num_anchors * per_anchor, 1, kernel_initializer=torch_conv_init(),
                          bias_initializer=torch_uniform(f.shape[-1]), name=f"{name}_{i}")(f)
        outs.append(layers.Reshape((-1, per_anchor), name=f"{name}_{i}_flat")(y))
    # float32 outputs even under a mixed_float16 policy, so the loss is computed in float32
    return layers.Concatenate(axis=1, name=name, dtype="float32")(outs)


def build_retinaface(*, backbone: str = ModelConfig.backbone, fpn_channels: int = ModelConfig.fpn_channels,
                     fpn_leaky: float = ModelConfig.fpn_leaky, backbone_leaky: float = ModelConfig.backbone_leaky,
                     num_anchors: int = ModelConfig.num_anchors, backbone_weights: str | None = None,
                     name: str = "retinaface", model_class: type = keras.Model,
                     input_dtype: str = "float32") -> keras.Model:
    """The RetinaFace network as a Keras functional model (see the module docstring for I/O).
    ``model_class`` may be a functional subclass of ``keras.Model`` (training uses one);
    ``input_dtype="float64"`` (with a float64 dtype policy) builds an exact reference copy."""
    inputs = keras.Input((None, None, 3), name="image", dtype=input_dtype)
    body = build_backbone(backbone, leaky=backbone_leaky, weights=backbone_weights)
    features = body(inputs)
    pyramid = fpn(features, channels=fpn_channels, leaky=fpn_leaky)
    contexts = [ssh(f, channels=fpn_channels, leaky=fpn_leaky, name=f"ssh{i + 1}") for i, f in enumerate(pyramid)]
    outputs = {
        "bbox": head(contexts, per_anchor=4, num_anchors=num_anchors, name="BboxHead"),
        "classes": head(contexts, per_anchor=2, num_anchors=num_anchors, name="ClassHead"),
        "landmarks": head(contexts, per_anchor=10, num_anchors=num_anchors, name="LandmarkHead"),
    }
    return model_class(inputs, outputs, name=name)


def build_from_config(config, backbone_weights: str | None = None, model_class: type = keras.Model,
                      input_dtype: str = "float32") -> keras.Model:
    m = config.model
    return build_retinaface(backbone=m.backbone, fpn_channels=m.fpn_channels, fpn_leaky=m.fpn_leaky,
                            backbone_leaky=m.backbone_leaky, num_anchors=m.num_anchors,
                            backbone_weights=backbone_weights or m.backbone_weights, model_class=model_class,
                            input_dtype=input_dtype)

