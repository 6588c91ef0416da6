"""What an export holds: its settings (:class:`ExportSettings`) and the exported graph
(:class:`ExportModule`, one ``tf.function`` per signature around the Keras network), plus the
description every export writes beside itself. Signatures and outputs: :mod:`retinaface_tf.serving`.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from retinaface_tf import __version__
from retinaface_tf.config import PostprocessConfig
from retinaface_tf.constants import LANDMARK_NAMES
from retinaface_tf.errors import ExportError
from retinaface_tf.models.fused import merged_heads
from retinaface_tf.ops.image import decode_image, preprocess
from retinaface_tf.ops.nms import detect_from_heads

DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_landmarks", "num_detections")
RAW_KEYS = ("bbox", "classes", "landmarks")
SIGNATURES = ("serving_default", "with_thresholds", "image_bytes", "image_bytes_with_thresholds", "raw")
# Pre- and post-processing ops are built under these name scopes so the int8 quantizer can be
# told to leave them in float32 (their TFLite tensor names contain them).
PREPROCESS_SCOPE = "preprocess"
POSTPROCESS_SCOPE = "postprocess"
# K and the pre-NMS candidates are padded output / working sizes baked into the graph
MAX_DETECTIONS_LIMIT = 100_000


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What is baked into an export.

    ``channel_order`` of the ``images`` input (``"rgb"`` or ``"bgr"``); ``score_threshold`` /
    ``iou_threshold`` used by signatures that do not take them; ``pre_nms_top_k`` candidates
    per image before NMS; ``max_detections`` = ``K``, the padded output length.
    """

    channel_order: str = "rgb"
    score_threshold: float = 0.5  # an application's threshold, not the evaluation's 0.02
    iou_threshold: float = PostprocessConfig.iou_threshold
    pre_nms_top_k: int = PostprocessConfig.pre_nms_top_k
    max_detections: int = PostprocessConfig.max_detections

    def __post_init__(self):
        if self.channel_order not in ("rgb", "bgr"):
            raise ExportError(f"channel order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ExportError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ExportError(f"IoU threshold must be in (0, 1], got {self.iou_threshold}")
        if not (1 <= self.max_detections <= MAX_DETECTIONS_LIMIT and 1 <= self.pre_nms_top_k <= MAX_DETECTIONS_LIMIT):
            raise ExportError(f"max detections and pre-NMS top-k must be in [1, {MAX_DETECTIONS_LIMIT}], got "
                              f"{self.max_detections} and {self.pre_nms_top_k}")

    @classmethod
    def from_config(cls, config, *, channel_order: str = "rgb", score_threshold: float = 0.5,
                    iou_threshold: float | None = None, pre_nms_top_k: int | None = None,
                    max_detections: int | None = None) -> "ExportSettings":
        """Settings with the config's NMS values wherever an argument is ``None``."""
        post = config.postprocess
        return cls(channel_order=channel_order, score_threshold=float(score_threshold),
                   iou_threshold=float(post.iou_threshold if iou_threshold is None else iou_threshold),
                   pre_nms_top_k=int(post.pre_nms_top_k if pre_nms_top_k is None else pre_nms_top_k),
                   max_detections=int(post.max_detections if max_detections is None else max_detections))


class ExportModule(tf.Module):
    """The exported graph: one ``tf.function`` per signature around a Keras RetinaFace.

    Args:
      model: the Keras network (see :mod:`retinaface_tf.models.retinaface`).
      settings: :class:`ExportSettings`.
      min_sizes, steps, variances, clip: the anchor layout and box coder variances.
      input_size: ``None`` for any image size (SavedModel), or ``(height, width)`` for a fixed
        batch-1 input (TFLite: static shapes, anchors folded into constants, and the batch-1
        NMS branch of :func:`~retinaface_tf.ops.nms.postprocess`).
      network_order: the channel order ``model`` takes: ``"bgr"`` (every RetinaFace), or ``"rgb"``
        for a network built with the channel flip folded into its first convolution
        (``fuse_for_inference(model, input_order="rgb")``, see :func:`network_order`).
    """

    def __init__(self, model, settings: ExportSettings, *, min_sizes, steps, variances, clip: bool = False,
                 input_size: tuple[int, int] | None = None, network_order: str = "bgr"):
        super().__init__(name="retinaface_export")
        self.model = model
        # Keras 3 variables are not tf.Variables, so tf.Module does not find them through the
        # model; listing the backing tf.Variables makes the SavedModel save and restore them.
        self._variables = [v.value for v in model.variables]
        self._forward = merged_heads(model) or model  # detections: merged heads split after gathering rows
        self._settings = settings
        self._anchor_args = dict(min_sizes=tuple(tuple(s) for s in min_sizes), steps=tuple(steps), clip=bool(clip))
        self._variances = tuple(variances)
        self._input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self._network_order = network_order
        self._uint8_network = model.inputs[0].dtype == "uint8"  # fuse_for_inference(uint8_input=True)

    # ------------------------------------------------------------------ graph pieces
    def _network(self, images, channel_order, *, forward=None):
        with tf.name_scope(PREPROCESS_SCOPE):
            if self._uint8_network:  # the network casts and folds the mean itself (MeanBorder)
                x = images if channel_order == self._network_order else tf.reverse(images, axis=[-1])
            else:
                x = preprocess(images, channel_order=channel_order, network_order=self._network_order)
        return (forward or self.model)(x, training=False)

    def _detect(self, images, score_threshold, iou_threshold, *, channel_order: str, single_image: bool = False):
        """uint8 ``[B, H, W, 3]`` → padded detections dict (see the module docstring)."""
        s = self._settings
        out = self._network(images, channel_order, forward=self._forward)
        with tf.name_scope(POSTPROCESS_SCOPE):
            if self._input_size is not None:
                h, w = self._input_size
            else:
                h, w = tf.shape(images)[1], tf.shape(images)[2]
            ones = tf.ones(tf.stack([tf.shape(images)[0], 2]), tf.float32)
            det = detect_from_heads(out, input_size=(h, w), output_scale=ones, score_threshold=score_threshold,
                                    iou_threshold=iou_threshold, pre_nms_top_k=s.pre_nms_top_k,
                                    max_detections=s.max_detections, variances=self._variances,
                                    single_image=single_image, **self._anchor_args)
            return {"detection_boxes": det["boxes"], "detection_scores": det["scores"],
                    "detection_landmarks": det["landmarks"], "num_detections": det["num_detections"]}

    def _detect_encoded(self, image_bytes, score_threshold, iou_threshold):
        """string ``[B]`` of encoded images → padded detections; each image is decoded and run
        through the network at its own size (one image per loop iteration)."""
        k = self._settings.max_detections

        def one(data):
            image = decode_image(data)  # RGB, OpenCV's pixels (JPEG: INTEGER_ACCURATE IDCT)
            det = self._detect(image[None], score_threshold, iou_threshold, channel_order="rgb", single_image=True)
            return tuple(det[key][0] for key in DETECTION_KEYS)

        outs = tf.map_fn(one, image_bytes, fn_output_signature=(
            tf.TensorSpec([k, 4], tf.float32), tf.TensorSpec([k], tf.float32),
            tf.TensorSpec([k, 5, 2], tf.float32), tf.TensorSpec([], tf.int32)))
        return dict(zip(DETECTION_KEYS, outs))

    # ------------------------------------------------------------------ signatures
    def _images_spec(self):
        shape = [None, None, None, 3] if self._input_size is None else [1, *self._input_size, 3]
        return tf.TensorSpec(shape, tf.uint8, name="images")

    def _checked(self, tensor, spec):
        """A loaded signature checks dtypes but not shapes: a rank-3 image would reach the
        convolution kernel and abort the process. EnsureShape turns that into an
        ``InvalidArgumentError`` naming the input and the expected shape. (Fixed-size TFLite
        inputs are checked by the interpreter.)"""
        if self._input_size is not None:
            return tensor
        tensor = tf.ensure_shape(tensor, spec.shape, name=f"check_{spec.name}")
        if spec.name == "images":
            with tf.control_dependencies([tf.debugging.assert_positive(
                    tf.shape(tensor)[:3], message="images must be [batch, height, width, 3], each >= 1")]):
                tensor = tf.identity(tensor)
        return tensor

    def signatures(self, names=None) -> dict:
        """``{signature name: concrete function}`` (all five for any size; ``serving_default``
        and ``raw`` for a fixed size). ``names``: only these (each traced only if asked for; the
        ONNX export converts two of them)."""
        s = self._settings
        order = s.channel_order
        single = self._input_size is not None
        available = ("serving_default", "raw") if single else SIGNATURES
        names = available if names is None else tuple(names)
        unknown = [name for name in names if name not in available]
        if unknown:
            raise ValueError(f"ExportModule.signatures: no signature {unknown[0]!r} (have {', '.join(available)})")
        score_spec = tf.TensorSpec([], tf.float32, name="score_threshold")
        iou_spec = tf.TensorSpec([], tf.float32, name="iou_threshold")
        bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

        def serving_default():
            @tf.function(input_signature=[self._images_spec()])
            def serving_default(images):
                images = self._checked(images, self._images_spec())
                return self._detect(images, s.score_threshold, s.iou_threshold, channel_order=order,
                                    single_image=single)
            return serving_default

        def raw():
            @tf.function(input_signature=[self._images_spec()])
            def raw(images):
                images = self._checked(images, self._images_spec())
                out = self._network(images, order)
                return {key: out[key] for key in RAW_KEYS}
            return raw

        def with_thresholds():
            @tf.function(input_signature=[self._images_spec(), score_spec, iou_spec])
            def with_thresholds(images, score_threshold, iou_threshold):
                images = self._checked(images, self._images_spec())
                return self._detect(images, score_threshold, iou_threshold, channel_order=order)
            return with_thresholds

        def image_bytes():
            @tf.function(input_signature=[bytes_spec])
            def image_bytes(image_bytes):
                image_bytes = self._checked(image_bytes, bytes_spec)
                return self._detect_encoded(image_bytes, s.score_threshold, s.iou_threshold)
            return image_bytes

        def image_bytes_with_thresholds():
            @tf.function(input_signature=[bytes_spec, score_spec, iou_spec])
            def image_bytes_with_thresholds(image_bytes, score_threshold, iou_threshold):
                image_bytes = self._checked(image_bytes, bytes_spec)
                return self._detect_encoded(image_bytes, score_threshold, iou_threshold)
            return image_bytes_with_thresholds

        builders = {"serving_default": serving_default, "raw": raw, "with_thresholds": with_thresholds,
                    "image_bytes": image_bytes, "image_bytes_with_thresholds": image_bytes_with_thresholds}
        return {name: builders[name]().get_concrete_function() for name in available if name in names}


def network_order(config, channel_order: str) -> str:
    """The channel order an export's network takes: the image's own (for RGB input the flip is
    folded into the first convolution, ``fuse_for_inference(input_order="rgb")``, any backbone)."""
    del config  # every backbone of the registry folds the flip
    return "rgb" if channel_order == "rgb" else "bgr"


def build_export_module(model, config, settings: ExportSettings, *, input_size=None,
                        network_order: str = "bgr") -> ExportModule:
    a = config.anchors
    return ExportModule(model, settings, min_sizes=a.min_sizes, steps=a.steps, variances=a.variances, clip=a.clip,
                        input_size=input_size, network_order=network_order)


def export_info(fmt: str, settings: ExportSettings, **extra) -> dict:
    info = {"format": fmt, "retinaface_tf_version": __version__, **dataclasses.asdict(settings), **extra,
            "box_format": "xyxy (pixels, input image)", "landmark_order": list(LANDMARK_NAMES)}
    return info


def resolved_config(config, settings: ExportSettings):
    return config.override({"postprocess.iou_threshold": settings.iou_threshold,
                            "postprocess.score_threshold": settings.score_threshold,
                            "postprocess.pre_nms_top_k": settings.pre_nms_top_k,
                            "postprocess.max_detections": settings.max_detections}, source="export settings")
