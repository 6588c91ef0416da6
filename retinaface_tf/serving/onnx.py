"""The ONNX export: the SavedModel's detection graph (uint8 images in, preprocessing, anchors,
decode, NMS, padded detections out) converted by tf2onnx (:mod:`retinaface_tf.runtimes.onnx`),
for any batch, height and width; and a runner for it in ONNX Runtime.

Inputs and outputs are those of the SavedModel signatures (:mod:`retinaface_tf.serving`):

- default: ``images`` uint8 ``[batch, height, width, 3]`` in the channel order chosen at export
  → ``detection_boxes [batch, K, 4]``, ``detection_scores [batch, K]``, ``detection_landmarks
  [batch, K, 5, 2]``, ``num_detections [batch]`` (int32), thresholds baked in;
- ``threshold_inputs=True``: also ``score_threshold`` and ``iou_threshold``, float32 scalars;
- ``raw=True``: ``images`` → ``bbox``, ``classes``, ``landmarks`` (the head outputs).

NMS is ONNX ``NonMaxSuppression`` inside a ``Loop`` over the images (one step per image: exact
for any batch, no padding between images). ``onnx``, ``onnxruntime`` and ``tf2onnx`` (the
``onnx`` extra) are imported only when an export or a runner is made.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from retinaface_tf.errors import ExportError
from retinaface_tf.models.fused import fuse_for_inference
from retinaface_tf.runtimes.onnx import OPSET, OnnxSession, require_onnx, to_onnx, versions
from retinaface_tf.serving.module import (DETECTION_KEYS, RAW_KEYS, ExportSettings, build_export_module, export_info,
                                          network_order, resolved_config)
from retinaface_tf.serving.tflite import write_model_and_description

SUFFIX = ".onnx"
# The first bytes of a serialized ModelProto: field 1 (ir_version, varint) then the tag of one of
# the fields 2-8 (producer name / version, domain, model version, doc string, graph, opset import)
_NEXT_FIELD_TAGS = (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42)


def require_onnx_export() -> None:
    """:class:`ExportError` (one line naming the ``onnx`` extra) unless onnx, onnxruntime and
    tf2onnx can be imported."""
    try:
        require_onnx()
    except ImportError as exc:
        raise ExportError(str(exc)) from None


def onnx_network(model, config, channel_order: str = "rgb") -> tuple:
    """What :func:`export_onnx` converts: ``(network, network_order)``.

    :func:`~retinaface_tf.models.fused.fuse_for_inference` of ``model`` with native depthwise
    convolutions and merged heads, on the uint8 image itself (the mean folded into the first
    convolution) and, for RGB input, the channel flip folded into the first convolution as well
    (as the TFLite export's; any backbone). Same outputs as ``model`` to float rounding."""
    order = network_order(config, channel_order)
    return fuse_for_inference(model, depthwise="native", input_order=order, uint8_input=True,
                              winograd_channels=None), order


def _is_onnx_model(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(3)
    except OSError:
        return False
    return len(head) == 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in _NEXT_FIELD_TAGS


def _check_onnx_outputs(output: Path) -> None:
    """``NAME.onnx`` and ``NAME.yaml`` may replace only an ONNX model and an ONNX export description."""
    if output.exists() and (not output.is_file() or not _is_onnx_model(output)):
        raise ExportError(f"{output}: exists and is not an ONNX model; choose another --output (nothing was changed)")
    desc = output.with_suffix(".yaml")
    if desc.exists():
        try:
            ok = desc.is_file() and (yaml.safe_load(desc.read_text()) or {}).get("format") == "onnx"
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
            ok = False
        if not ok:
            raise ExportError(f"{desc}: exists and is not an ONNX export description; choose another --output "
                              "(nothing was changed)")


def _values(values) -> list[dict]:
    from onnx.helper import tensor_dtype_to_np_dtype  # the onnx extra: present once require_onnx() passed

    out = []
    for value in values:
        t = value.type.tensor_type
        out.append({"name": value.name, "dtype": tensor_dtype_to_np_dtype(t.elem_type).name,
                    "shape": [d.dim_param or int(d.dim_value) for d in t.shape.dim]})
    return out


def export_onnx(model, config, output: str | os.PathLike, settings: ExportSettings, *, raw: bool = False,
                threshold_inputs: bool = False, opset: int = OPSET) -> Path:
    """Write an ONNX model of the whole detection (or, ``raw``, of the network's head outputs)
    for uint8 images of any batch and size (module docstring), converted from the SavedModel's
    graph by tf2onnx; ``threshold_inputs``: the thresholds are inputs instead of
    ``settings``' values.

    ``output`` gets a ``.onnx`` suffix if it has none; ``NAME.yaml`` beside it holds the export
    settings, the inputs and outputs, the converter's versions, the resolved config and the model's
    sha256. An existing ``.onnx`` / ``.yaml`` is replaced only if it is an ONNX model / ONNX
    export description (else an error before any work); the old description is removed first,
    then the model and its new description are renamed into place, so a model and a description
    that disagree never stand side by side. Needs the ``onnx`` extra (:class:`ExportError`
    naming it, before any work)."""
    require_onnx_export()
    if raw and threshold_inputs:
        raise ExportError("--threshold-inputs: a --raw export has no thresholds")
    output = Path(output)
    if output.suffix != SUFFIX:
        output = output.with_name(output.name + SUFFIX)
    if output.is_dir():
        raise ExportError(f"{output}: is a folder; give a {SUFFIX} file name")
    _check_onnx_outputs(output)
    network, order = onnx_network(model, config, settings.channel_order)
    module = build_export_module(network, config, settings, network_order=order)
    signature = "raw" if raw else ("with_thresholds" if threshold_inputs else "serving_default")
    concrete = module.signatures([signature])[signature]
    keys = RAW_KEYS if raw else DETECTION_KEYS
    what = "head outputs" if raw else (f"padded detections (K = {settings.max_detections}, thresholds "
                                       + ("as inputs)" if threshold_inputs else
                                          f"{settings.score_threshold} / {settings.iou_threshold})"))
    dims = {("images", 0): "batch", ("images", 1): "height", ("images", 2): "width",
            **{(key, 0): "batch" for key in keys}}
    try:
        proto = to_onnx(concrete, opset=opset, dimension_names=dims,
                        doc=f"RetinaFace ({network.name}): uint8 {settings.channel_order.upper()} images -> {what}")
    except ValueError as exc:
        raise ExportError(f"{output}: {exc}") from None
    data = proto.SerializeToString()
    info = export_info("onnx", settings, raw=bool(raw), threshold_inputs=bool(threshold_inputs), opset=int(opset),
                       network=network.name, inputs=_values(proto.graph.input), outputs=_values(proto.graph.output),
                       converter=versions(), model_file=output.name, model_sha256=hashlib.sha256(data).hexdigest(),
                       model_bytes=len(data), config=resolved_config(config, settings).to_dict())
    _check_onnx_outputs(output)  # again: nothing foreign appeared while converting
    return write_model_and_description(output, data, info)


def onnx_runner(path: str | os.PathLike, *, num_threads: int | None = 2) -> OnnxSession:
    """An ONNX Runtime session on an exported ``.onnx`` (CPU, all graph optimisations):
    ``runner(images=batch)`` (plus ``score_threshold=``, ``iou_threshold=`` for a
    ``threshold_inputs`` export) → dict of numpy outputs."""
    require_onnx_export()
    return OnnxSession(path, num_threads=num_threads)
