"""TFLite models for a fixed input size, batch 1: letterboxing, int8 calibration on real
images, conversion (float32, fp16, dynamic, int8 with selective float layers), and a LiteRT
runner. LiteRT (``ai-edge-litert``, the ``tflite`` extra) is imported only where it is used."""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import tensorflow as tf
import yaml

from retinaface_tf import filtered_fd
from retinaface_tf.constants import BGR_MEAN
from retinaface_tf.errors import ExportError
from retinaface_tf.fileio import read_image, write_bytes_atomic, write_text_atomic
from retinaface_tf.models.fused import MEAN_BORDER, fuse_for_tflite
from retinaface_tf.serving.module import (DETECTION_KEYS, POSTPROCESS_SCOPE, PREPROCESS_SCOPE, RAW_KEYS,
                                          ExportSettings, build_export_module, export_info, network_order,
                                          resolved_config)

QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8")
# Network layers kept in float32 in int8 exports (substrings of their tensor names): the first
# stage of MobileNetV1-0.25 (six layers of only 8-64 channels at strides 2-8). Quantizing one
# layer group at a time on the WIDER val images showed this stage alone carries the int8
# accuracy loss (-2.4 / -5.1 / -3.7 easy / medium / hard AP); the rest of the network quantized
# costs < 0.6 AP. It matches nothing in the ResNet-50 backbone, which is quantized entirely.
INT8_FLOAT_LAYERS = ("stage1_",)


def letterbox(image_bgr: np.ndarray, input_size: tuple[int, int], *, channel_order: str = "rgb",
              pad_value=BGR_MEAN) -> tuple[np.ndarray, float]:
    """Fit a BGR uint8 ``[h, w, 3]`` image into a fixed TFLite input of ``input_size``
    ``(width, height)`` (the order ``--input-size WxH`` gives it in).

    The image is scaled by ``scale = min(H / h, W / w)`` (aspect kept, ``cv2.INTER_LINEAR``),
    placed at the top-left and padded right / bottom with the BGR mean (which the model's
    preprocessing turns into zeros, as the reference pads its training images). Returns the
    ``[1, H, W, 3]`` uint8 batch in ``channel_order`` and ``scale``: divide output pixel
    coordinates by it to get original-image pixels.
    """
    width, height = int(input_size[0]), int(input_size[1])
    h, w = image_bgr.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[...] = np.asarray(pad_value, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if channel_order == "rgb":
        canvas = canvas[..., ::-1]
    return np.ascontiguousarray(canvas[None]), scale


# A fixed TFLite input: the converter and the interpreter allocate every activation for it, so
# sizes from outside are bounded (8192 a side, 4096x4096 pixels: 4K video fits with room).
MAX_INPUT_SIDE = 8192
MAX_INPUT_PIXELS = 4096 * 4096


def check_input_size(input_size) -> tuple[int, int]:
    """``(width, height)`` of a TFLite input, each side 32..:data:`MAX_INPUT_SIDE` and at most
    :data:`MAX_INPUT_PIXELS` pixels; else a one-line :class:`ExportError`."""
    width, height = int(input_size[0]), int(input_size[1])
    if min(height, width) < 32:
        raise ExportError(f"input size must be at least 32x32, got {width}x{height}")
    if max(height, width) > MAX_INPUT_SIDE or height * width > MAX_INPUT_PIXELS:
        raise ExportError(f"input size {width}x{height} is too large: at most {MAX_INPUT_SIDE} pixels a side and "
                          f"{MAX_INPUT_PIXELS // 1024 // 1024}M pixels ({int(MAX_INPUT_PIXELS ** 0.5)}x"
                          f"{int(MAX_INPUT_PIXELS ** 0.5)})")
    return width, height


CALIBRATION_HINT = "give smaller calibration images"


def calibration_dataset(images: Sequence, input_size: tuple[int, int], *, channel_order: str = "rgb",
                        count: int | None = None) -> Callable[[], Iterable[dict]]:
    """Representative dataset for int8 calibration: real images (paths or BGR arrays) through
    :func:`letterbox` into ``input_size`` ``(width, height)``, i.e. exactly what the exported model is fed. The model's own
    preprocessing (mean subtraction, no /255 scaling) runs inside the graph, so the calibrated
    ranges are those of the real network input. Yields ``{"images": uint8 [1, H, W, 3]}``."""
    images = list(images)[:count] if count else list(images)
    if not images:
        raise ExportError("int8 quantization needs calibration images (--calibration-images)")

    def generate():
        for image in images:
            bgr = read_image(image, hint=CALIBRATION_HINT) if isinstance(image, (str, os.PathLike)) else image
            yield {"images": letterbox(bgr, input_size, channel_order=channel_order)[0]}

    return generate


def _float_nodes(calibrated_model: bytes, keep_float: Sequence[str] = INT8_FLOAT_LAYERS) -> tuple[list[str], list[str]]:
    """What the int8 quantizer must leave in float32: the names of the tensors built under
    :data:`PREPROCESS_SCOPE` / :data:`POSTPROCESS_SCOPE` or by the network's own preprocessing
    (:class:`~retinaface_tf.models.fused.MeanBorder`), the model outputs and the layers matching
    ``keep_float``; and the op types found only in post-processing."""
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
            if any(f"{PREPROCESS_SCOPE}/" in n or MEAN_BORDER in n or any(k in n for k in keep_float) for n in out_names):
                nodes.update(out_names)
    return sorted(nodes | outputs), sorted(post_ops - net_ops)


def _is_quantizer_noise(line: str) -> bool:
    return line.startswith("fully_quantize: ") and "inference_type: " in line


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
            # The quantizer's C++ prints "fully_quantize: 0, inference_type: 6, ..." on stderr
            # once per pass: noise for a user, dropped (every other line is kept).
            with filtered_fd(2, _is_quantizer_noise):
                debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                                     debug_dataset=representative_dataset)
                nodes, ops = _float_nodes(debugger.calibrated_model, keep_float)
                debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes,
                                                                                 denylisted_ops=ops)
                return debugger.get_nondebug_quantized_model()
    return converter.convert()


def tflite_network(model, config, channel_order: str = "rgb") -> tuple:
    """What :func:`export_tflite` converts: ``(network, network_order)``.

    :func:`~retinaface_tf.models.fused.fuse_for_tflite` of ``model`` (batch norm folded, the SSH
    ReLU fused into its branches, nearest 2x upsampling as concatenations: no op that XNNPACK
    leaves to TFLite's built-in kernels, so the delegated graph is one piece; see
    ``benchmarks/PROFILE.md``). For RGB input the channel flip is folded into the first
    convolution as well (``network_order="rgb"``), and the network takes the uint8
    image (``uint8_input``: the mean subtraction folded into the first convolution, one cast of
    the image instead of a cast and a subtraction, 2x faster preprocessing). Same outputs as
    ``model`` to float rounding."""
    order = network_order(config, channel_order)
    return fuse_for_tflite(model, input_order=order, uint8_input=True), order


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
                  calibration_images: Sequence | None = None, calibration_count: int = 100,
                  fuse: bool = True, keep_float: Sequence[str] = INT8_FLOAT_LAYERS) -> Path:
    """Write a TFLite model for a fixed ``input_size`` ``(width, height)`` and batch 1.

    The network converted is :func:`tflite_network` of ``model`` (``fuse=False``: ``model`` as it
    is, the slower graph of earlier versions, kept for comparison). ``keep_float``: the layers an
    int8 export leaves in float32 (:data:`INT8_FLOAT_LAYERS`).

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
    width, height = check_input_size(input_size)
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    rep = None
    if quantize == "int8":
        rep = calibration_dataset(calibration_images or [], (width, height), channel_order=settings.channel_order,
                                  count=calibration_count)
    network, order = tflite_network(model, config, settings.channel_order) if fuse else (model, "bgr")
    module = build_export_module(network, config, settings, input_size=(height, width), network_order=order)
    sigs = module.signatures()
    with tempfile.TemporaryDirectory(prefix=".retinaface-tflite-") as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": sigs["raw" if raw else "serving_default"]})
        flatbuffer = convert_tflite(tmp, quantize=quantize, representative_dataset=rep, keep_float=keep_float)
    info = export_info("tflite", settings, quantize=quantize, raw=bool(raw), input_size=[height, width],
                        network=network.name,
                        input={"name": "images", "dtype": "uint8", "shape": [1, height, width, 3]},
                        outputs=list(RAW_KEYS if raw else DETECTION_KEYS),
                        calibration_images=(min(len(calibration_images), calibration_count) if rep else 0),
                        model_file=output.name, model_sha256=hashlib.sha256(flatbuffer).hexdigest(),
                        model_bytes=len(flatbuffer), config=resolved_config(config, settings).to_dict())
    _check_tflite_outputs(output)  # again: nothing foreign appeared while converting
    return write_model_and_description(output, flatbuffer, info)


def tflite_runner(path: str | os.PathLike, *, num_threads: int = 2):
    """A LiteRT signature runner for an exported ``.tflite``: ``runner(images=batch)`` → dict
    of numpy outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    return interpreter.get_signature_runner("serving_default")


def write_model_and_description(output: Path, model: bytes, info: dict) -> Path:
    """Write an exported model file and its ``.yaml`` description so the pair is never
    mismatched: the old description goes first, then the model, then its new description (which
    names the model's sha256). A kill in between leaves a model without a yaml."""
    output.with_suffix(".yaml").unlink(missing_ok=True)
    write_bytes_atomic(output, model)
    write_text_atomic(output.with_suffix(".yaml"), yaml.safe_dump(info, sort_keys=False))
    return output
