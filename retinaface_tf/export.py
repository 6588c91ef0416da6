"""Deployment exports: a TF Serving SavedModel and TFLite models, post-processing inside.

Both run without this package: preprocessing (:func:`retinaface_tf.models.preprocess`) and
anchors + decode + NMS (:func:`retinaface_tf.ops.nms.detect_from_heads`, the same code the
:class:`~retinaface_tf.Detector` runs) are traced into the exported graph.

SavedModel signatures (``saved_models/NAME/<version>/``), thresholds baked at export unless
the signature takes them:

=============================== ======================================================= ============
signature                       inputs                                                  outputs
=============================== ======================================================= ============
``serving_default``             ``images`` uint8 ``[B, H, W, 3]`` (any H, W)             detections
``with_thresholds``             ``images`` + ``score_threshold``, ``iou_threshold``      detections
                                float32 scalars
``image_bytes``                 ``image_bytes`` string ``[B]`` (encoded JPEG/PNG/BMP/GIF) detections
``image_bytes_with_thresholds`` ``image_bytes`` + the two thresholds                     detections
``raw``                         ``images`` uint8 ``[B, H, W, 3]``                        head outputs
=============================== ======================================================= ============

Detections (padded to ``K = max_detections``; rows past ``num_detections`` are zero):
``detection_boxes [B, K, 4]`` float32 pixel ``xyxy`` in the input image,
``detection_scores [B, K]`` float32 face probability (descending),
``detection_landmarks [B, K, 5, 2]`` float32 pixel (x, y) (left eye, right eye, nose, left and
right mouth corner), ``num_detections [B]`` int32. Head outputs (``raw``): ``bbox [B, N, 4]``
box deltas, ``classes [B, N, 2]`` logits (background, face), ``landmarks [B, N, 10]`` landmark
deltas, for anchors ordered level → row → column → size.

``images`` are in the channel order chosen at export (RGB by default); ``image_bytes`` are
decoded to RGB in the graph and each image is processed at its own size.

TFLite (:func:`export_tflite`): batch 1, fixed ``[1, H, W, 3]`` uint8 input, same output names
(or the head outputs with ``raw=True``); float32, float16 weights, dynamic-range int8 weights,
or an int8 network (int8 weights and activations, calibrated on real images through the model's
own preprocessing) whose pre- / post-processing and first backbone stage stay float32 (see
:func:`convert_tflite`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf
import yaml

from retinaface_tf.config import PostprocessConfig
from retinaface_tf.constants import BGR_MEAN, LANDMARK_NAMES
from retinaface_tf.errors import ExportError
from retinaface_tf.fileio import atomic_directory, write_bytes_atomic, write_text_atomic
from retinaface_tf.ops.image import preprocess
from retinaface_tf.ops.image import decode_image
from retinaface_tf.ops.nms import detect_from_heads

DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_landmarks", "num_detections")
RAW_KEYS = ("bbox", "classes", "landmarks")
SIGNATURES = ("serving_default", "with_thresholds", "image_bytes", "image_bytes_with_thresholds", "raw")
QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8")
# Pre- and post-processing ops are built under these name scopes so the int8 quantizer can be
# told to leave them in float32 (their TFLite tensor names contain them).
PREPROCESS_SCOPE = "preprocess"
POSTPROCESS_SCOPE = "postprocess"
# Network layers kept in float32 in int8 exports (substrings of their tensor names): the first
# stage of MobileNetV1-0.25 (six layers of only 8-64 channels at strides 2-8). Quantizing one
# layer group at a time on the WIDER val images showed this stage alone carries the int8
# accuracy loss (-2.4 / -5.1 / -3.7 easy / medium / hard AP); the rest of the network quantized
# costs < 0.6 AP. It matches nothing in the ResNet-50 backbone, which is quantized entirely.
INT8_FLOAT_LAYERS = ("stage1_",)


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
        if self.max_detections < 1 or self.pre_nms_top_k < 1:
            raise ExportError(f"max detections and pre-NMS top-k must be >= 1, got "
                              f"{self.max_detections} and {self.pre_nms_top_k}")

    @classmethod
    def from_config(cls, config, *, channel_order: str = "rgb", score_threshold: float = 0.5,
                    iou_threshold: float | None = None, pre_nms_top_k: int | None = None,
                    max_detections: int | None = None) -> "ExportSettings":
        """Settings with the config's NMS values wherever an argument is ``None``."""
        post = config.postprocess
        return cls(channel_order=channel_order, score_threshold=float(score_threshold),
                   iou_threshold=float(post.iou_threshold if iou_threshold is None else iou_threshold),
                   pre_nms_top_k=int(pre_nms_top_k or post.pre_nms_top_k),
                   max_detections=int(max_detections or post.max_detections))


class ExportModule(tf.Module):
    """The exported graph: one ``tf.function`` per signature around a Keras RetinaFace.

    Args:
      model: the Keras network (see :mod:`retinaface_tf.models.retinaface`).
      settings: :class:`ExportSettings`.
      min_sizes, steps, variances, clip: the anchor layout and box coder variances.
      input_size: ``None`` for any image size (SavedModel), or ``(height, width)`` for a fixed
        batch-1 input (TFLite: static shapes, anchors folded into constants, and the batch-1
        NMS branch of :func:`~retinaface_tf.ops.nms.postprocess`).
    """

    def __init__(self, model, settings: ExportSettings, *, min_sizes, steps, variances, clip: bool = False,
                 input_size: tuple[int, int] | None = None):
        super().__init__(name="retinaface_export")
        self.model = model
        # Keras 3 variables are not tf.Variables, so tf.Module does not find them through the
        # model; listing the backing tf.Variables makes the SavedModel save and restore them.
        self._variables = [v.value for v in model.variables]
        self._settings = settings
        self._anchor_args = dict(min_sizes=tuple(tuple(s) for s in min_sizes), steps=tuple(steps), clip=bool(clip))
        self._variances = tuple(variances)
        self._input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))

    # ------------------------------------------------------------------ graph pieces
    def _network(self, images, channel_order):
        with tf.name_scope(PREPROCESS_SCOPE):
            x = preprocess(images, channel_order=channel_order)
        return self.model(x, training=False)

    def _detect(self, images, score_threshold, iou_threshold, *, channel_order: str, single_image: bool = False):
        """uint8 ``[B, H, W, 3]`` → padded detections dict (see the module docstring)."""
        s = self._settings
        out = self._network(images, channel_order)
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

    def signatures(self) -> dict:
        """``{signature name: concrete function}`` (all five for any size; ``serving_default``
        and ``raw`` for a fixed size)."""
        s = self._settings
        order = s.channel_order
        single = self._input_size is not None
        score_spec = tf.TensorSpec([], tf.float32, name="score_threshold")
        iou_spec = tf.TensorSpec([], tf.float32, name="iou_threshold")
        bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

        @tf.function(input_signature=[self._images_spec()])
        def serving_default(images):
            images = self._checked(images, self._images_spec())
            return self._detect(images, s.score_threshold, s.iou_threshold, channel_order=order, single_image=single)

        @tf.function(input_signature=[self._images_spec()])
        def raw(images):
            images = self._checked(images, self._images_spec())
            out = self._network(images, order)
            return {key: out[key] for key in RAW_KEYS}

        sigs = {"serving_default": serving_default.get_concrete_function(), "raw": raw.get_concrete_function()}
        if single:
            return sigs

        @tf.function(input_signature=[self._images_spec(), score_spec, iou_spec])
        def with_thresholds(images, score_threshold, iou_threshold):
            images = self._checked(images, self._images_spec())
            return self._detect(images, score_threshold, iou_threshold, channel_order=order)

        @tf.function(input_signature=[bytes_spec])
        def image_bytes(image_bytes):
            image_bytes = self._checked(image_bytes, bytes_spec)
            return self._detect_encoded(image_bytes, s.score_threshold, s.iou_threshold)

        @tf.function(input_signature=[bytes_spec, score_spec, iou_spec])
        def image_bytes_with_thresholds(image_bytes, score_threshold, iou_threshold):
            image_bytes = self._checked(image_bytes, bytes_spec)
            return self._detect_encoded(image_bytes, score_threshold, iou_threshold)

        sigs.update(with_thresholds=with_thresholds.get_concrete_function(),
                    image_bytes=image_bytes.get_concrete_function(),
                    image_bytes_with_thresholds=image_bytes_with_thresholds.get_concrete_function())
        return {name: sigs[name] for name in SIGNATURES}


def build_export_module(model, config, settings: ExportSettings, *, input_size=None) -> ExportModule:
    a = config.anchors
    return ExportModule(model, settings, min_sizes=a.min_sizes, steps=a.steps, variances=a.variances, clip=a.clip,
                        input_size=input_size)


def _export_info(fmt: str, settings: ExportSettings, **extra) -> dict:
    from retinaface_tf import __version__

    info = {"format": fmt, "retinaface_tf_version": __version__, **dataclasses.asdict(settings), **extra,
            "box_format": "xyxy (pixels, input image)", "landmark_order": list(LANDMARK_NAMES)}
    return info


def _resolved_config(config, settings: ExportSettings):
    return config.override({"postprocess.iou_threshold": settings.iou_threshold,
                            "postprocess.score_threshold": settings.score_threshold,
                            "postprocess.pre_nms_top_k": settings.pre_nms_top_k,
                            "postprocess.max_detections": settings.max_detections}, source="export settings")


# ---------------------------------------------------------------------- SavedModel
SAVED_MODEL_ENTRIES = ("saved_model.pb", "variables", "assets", "assets.extra", "fingerprint.pb")

def next_version(model_dir: str | os.PathLike) -> int:
    """1 + the highest numeric version folder under ``model_dir`` (1 when there is none)."""
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise ExportError(f"{model_dir}: exists and is not a folder")
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def export_saved_model(model, config, output: str | os.PathLike, settings: ExportSettings, *,
                       version: int | None = None) -> Path:
    """Write a TF Serving model ``output/<version>/`` (SavedModel with the signatures of the
    module docstring) and return the version folder.

    ``version`` ``None`` takes the next free number (1 for a new model), so TF Serving picks
    the new export up; an explicit existing version is replaced. The folder appears in one
    rename once complete (a failed export leaves what was there). ``assets.extra/config.yaml``
    holds the resolved config, ``assets.extra/export.yaml`` the export settings and signatures.
    """
    output = Path(output)
    version = next_version(output) if version is None else int(version)
    if version < 1:
        raise ExportError(f"--version must be >= 1, got {version}")
    module = build_export_module(model, config, settings)
    signatures = module.signatures()
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output}: exists and is not a folder")
    target = output / str(version)
    # an existing version folder is replaced only when it is a SavedModel this command wrote
    ours = (target / "saved_model.pb").is_file() and (target / "assets.extra" / "export.yaml").is_file()
    with atomic_directory(target, owned=SAVED_MODEL_ENTRIES if ours else None, companions=()) as tmp:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        _resolved_config(config, settings).to_yaml(extra / "config.yaml")
        info = _export_info("saved_model", settings, version=version, signatures={
            name: {"inputs": sorted(spec.name for spec in tf.nest.flatten(fn.structured_input_signature)),
                   "outputs": sorted(fn.structured_outputs)}
            for name, fn in signatures.items()})
        (extra / "export.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    return target


# ---------------------------------------------------------------------- TFLite
def letterbox(image_bgr: np.ndarray, input_size: tuple[int, int], *, channel_order: str = "rgb",
              pad_value=BGR_MEAN) -> tuple[np.ndarray, float]:
    """Fit a BGR uint8 ``[h, w, 3]`` image into a fixed ``(height, width)`` TFLite input.

    The image is scaled by ``scale = min(H / h, W / w)`` (aspect kept, ``cv2.INTER_LINEAR``),
    placed at the top-left and padded right / bottom with the BGR mean (which the model's
    preprocessing turns into zeros, as the reference pads its training images). Returns the
    ``[1, H, W, 3]`` uint8 batch in ``channel_order`` and ``scale``: divide output pixel
    coordinates by it to get original-image pixels.
    """
    import cv2

    height, width = input_size
    h, w = image_bgr.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[...] = np.asarray(pad_value, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if channel_order == "rgb":
        canvas = canvas[..., ::-1]
    return np.ascontiguousarray(canvas[None]), scale


def calibration_dataset(images: Sequence, input_size: tuple[int, int], *, channel_order: str = "rgb",
                        count: int | None = None) -> Callable[[], Iterable[dict]]:
    """Representative dataset for int8 calibration: real images (paths or BGR arrays) through
    :func:`letterbox`, i.e. exactly what the exported model is fed. The model's own
    preprocessing (mean subtraction, no /255 scaling) runs inside the graph, so the calibrated
    ranges are those of the real network input. Yields ``{"images": uint8 [1, H, W, 3]}``."""
    from retinaface_tf.fileio import read_image

    images = list(images)[:count] if count else list(images)
    if not images:
        raise ExportError("int8 quantization needs calibration images (--calibration-images)")

    def generate():
        for image in images:
            bgr = read_image(image) if isinstance(image, (str, os.PathLike)) else image
            yield {"images": letterbox(bgr, input_size, channel_order=channel_order)[0]}

    return generate


def _float_nodes(calibrated_model: bytes, keep_float: Sequence[str] = INT8_FLOAT_LAYERS) -> tuple[list[str], list[str]]:
    """What the int8 quantizer must leave in float32: the names of the tensors built under
    :data:`PREPROCESS_SCOPE` / :data:`POSTPROCESS_SCOPE`, the model outputs and the layers
    matching ``keep_float``; and the op types found only in post-processing."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=calibrated_model)
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    outputs = {d["name"] for d in interp.get_output_details()}
    nodes, post_ops, net_ops = set(), set(), set()
    # _get_ops_details is what tf.lite's own QuantizationDebugger uses to map tensors to ops.
    for op in interp._get_ops_details():  # noqa: SLF001
        out_names = [names[i] for i in op["outputs"] if i >= 0]
        if any(f"{POSTPROCESS_SCOPE}/" in n or n in outputs for n in out_names):
            nodes.update(out_names)
            post_ops.add(op["op_name"])
        else:
            net_ops.add(op["op_name"])
            if any(f"{PREPROCESS_SCOPE}/" in n or any(k in n for k in keep_float) for n in out_names):
                nodes.update(out_names)
    return sorted(nodes | outputs), sorted(post_ops - net_ops)


def convert_tflite(saved_model_dir: str | os.PathLike, *, quantize: str = "none",
                   representative_dataset: Callable | None = None,
                   keep_float: Sequence[str] = INT8_FLOAT_LAYERS) -> bytes:
    """Convert an exported fixed-size SavedModel (``serving_default``) to a TFLite flatbuffer.

    ``quantize``: ``none`` (float32), ``fp16`` (float16 weights), ``dynamic`` (int8 weights,
    float activations), ``int8`` (full-integer network: int8 weights and activations, calibrated
    with ``representative_dataset``). In ``int8`` the preprocessing (cast, channel flip, mean
    subtraction: per-channel constants that int8 cannot hold exactly), the layers matching
    ``keep_float`` (:data:`INT8_FLOAT_LAYERS`) and the post-processing (softmax, decode, NMS,
    outputs) stay float32: quantized to 8 bits, pixel boxes would be ~2.5 px coarse at 640 and
    scores would tie at 1/256 steps.
    """
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if representative_dataset is None:
            raise ExportError("int8 quantization needs calibration images (--calibration-images)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the debugger builds a (deprecated) tf.lite.Interpreter
            # The public selective-quantization path: calibrate once, then quantize everything
            # except the post-processing.
            debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative_dataset)
            nodes, ops = _float_nodes(debugger.calibrated_model, keep_float)
            debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes, denylisted_ops=ops)
            return debugger.get_nondebug_quantized_model()
    return converter.convert()


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _check_tflite_outputs(output: Path) -> None:
    """``NAME.tflite`` and ``NAME.yaml`` may replace only a TFLite model and an export description."""
    if output.exists() and (not output.is_file() or _head(output, 8)[4:8] != b"TFL3"):
        raise ExportError(f"{output}: exists and is not a TFLite model; choose another --output (nothing was changed)")
    desc = output.with_suffix(".yaml")
    if desc.exists():
        try:
            ok = desc.is_file() and (yaml.safe_load(desc.read_text()) or {}).get("format") == "tflite"
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            ok = False
        if not ok:
            raise ExportError(f"{desc}: exists and is not a TFLite export description; choose another --output "
                              "(nothing was changed)")


def export_tflite(model, config, output: str | os.PathLike, settings: ExportSettings, *,
                  input_size: tuple[int, int] = (640, 640), quantize: str = "none", raw: bool = False,
                  calibration_images: Sequence | None = None, calibration_count: int = 100) -> Path:
    """Write a TFLite model for a fixed ``input_size`` ``(height, width)`` and batch 1.

    Input ``images`` uint8 ``[1, H, W, 3]`` in ``settings.channel_order`` (see
    :func:`letterbox`). Outputs: the detections of the module docstring with ``B = 1`` in
    input-image pixels, or with ``raw`` the three head outputs. ``calibration_images`` (paths
    or BGR arrays; the first ``calibration_count``) are required for ``int8``.

    ``output`` gets a ``.tflite`` suffix if it has none; ``NAME.yaml`` beside it holds the
    export settings, the resolved config and the model's sha256. An existing ``.tflite`` / ``.yaml``
    is replaced only if it is a TFLite model / export description (else an error before any work);
    the old description is removed first, then the model and its new description are renamed into
    place, so a model and a description that disagree never stand side by side.
    """
    output = Path(output)
    if output.suffix != ".tflite":
        output = output.with_name(output.name + ".tflite")
    if output.is_dir():
        raise ExportError(f"{output}: is a folder; give a .tflite file name")
    _check_tflite_outputs(output)
    height, width = int(input_size[0]), int(input_size[1])
    if min(height, width) < 32:
        raise ExportError(f"input size must be at least 32x32, got {width}x{height}")
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    rep = None
    if quantize == "int8":
        rep = calibration_dataset(calibration_images or [], (height, width), channel_order=settings.channel_order,
                                  count=calibration_count)
    module = build_export_module(model, config, settings, input_size=(height, width))
    sigs = module.signatures()
    with tempfile.TemporaryDirectory(prefix=".retinaface-tflite-") as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": sigs["raw" if raw else "serving_default"]})
        flatbuffer = convert_tflite(tmp, quantize=quantize, representative_dataset=rep)
    info = _export_info("tflite", settings, quantize=quantize, raw=bool(raw), input_size=[height, width],
                        input={"name": "images", "dtype": "uint8", "shape": [1, height, width, 3]},
                        outputs=list(RAW_KEYS if raw else DETECTION_KEYS),
                        calibration_images=(min(len(calibration_images), calibration_count) if rep else 0),
                        model_file=output.name, model_sha256=hashlib.sha256(flatbuffer).hexdigest(),
                        model_bytes=len(flatbuffer), config=_resolved_config(config, settings).to_dict())
    _check_tflite_outputs(output)  # again: nothing foreign appeared while converting
    # The pair is never mismatched: the old description goes first, then the model, then its new
    # description (which names the model's sha256). A kill in between leaves a model without a yaml.
    output.with_suffix(".yaml").unlink(missing_ok=True)
    write_bytes_atomic(output, flatbuffer)
    write_text_atomic(output.with_suffix(".yaml"), yaml.safe_dump(info, sort_keys=False))
    return output


def tflite_runner(path: str | os.PathLike, *, num_threads: int = 2):
    """A LiteRT signature runner for an exported ``.tflite``: ``runner(images=batch)`` → dict
    of numpy outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    return interpreter.get_signature_runner("serving_default")
