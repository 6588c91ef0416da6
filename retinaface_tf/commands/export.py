"""``retinaface-tf export``: a TF Serving SavedModel, a TFLite model or an ONNX model, post-processing inside."""

from __future__ import annotations

import re
from pathlib import Path

from retinaface_tf.commands import add_model_args, add_threshold_args
from retinaface_tf.errors import ExportError, UsageError
from retinaface_tf.fileio import expand_image_paths, output_lock, probe_image
from retinaface_tf.models.weights import load_model
from retinaface_tf.serving import ExportSettings, export_onnx, export_saved_model, export_tflite, require_onnx_export
from retinaface_tf.serving.module import MAX_DETECTIONS_LIMIT
from retinaface_tf.serving.tflite import CALIBRATION_HINT, check_input_size


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (WxH) or ``"640"`` → ``(width, height)``."""

    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m:
        raise UsageError(f"--input-size must be WxH (e.g. 640x480) or one number, got {text!r}")
    width = int(m.group(1))
    height = int(m.group(2) or m.group(1))
    return width, height


def default_output(fmt: str, quantize: str = "none", size: tuple[int, int] = (640, 640), raw: bool = False,
                   threshold_inputs: bool = False) -> Path:
    """Where ``export`` writes without ``--output``: ``exported/retinaface`` (SavedModel folder),
    ``exported/retinaface_<fp32|fp16|dynamic|int8>_<W>x<H>[_raw].tflite`` or
    ``exported/retinaface[_raw|_thresholds].onnx``, relative to the working folder (``size``:
    ``(width, height)``)."""

    if fmt == "saved_model":
        return Path("exported") / "retinaface"
    if fmt == "onnx":
        return Path("exported") / f"retinaface{'_raw' if raw else ''}{'_thresholds' if threshold_inputs else ''}.onnx"
    kind = "fp32" if quantize == "none" else quantize
    return Path("exported") / f"retinaface_{kind}_{size[0]}x{size[1]}{'_raw' if raw else ''}.tflite"


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + ". On its defaults it writes the bundled "
                       "model as a TF Serving SavedModel into ./exported/retinaface/1/.")
    p.add_argument("--format", default="saved_model", choices=("saved_model", "tflite", "onnx"),
                   metavar="{saved_model,tflite,onnx}",
                   help="saved_model (default): TF Serving model folder OUTPUT/<version>/; tflite: one .tflite file; "
                        "onnx: one .onnx file for any batch and size (needs the onnx extra)")
    p.add_argument("--output", "-o", default=None, metavar="PATH",
                   help="saved_model: model folder (default exported/retinaface); tflite: file (.tflite added if "
                        "missing; default exported/retinaface_<fp32|fp16|dynamic|int8>_<W>x<H>[_raw].tflite); onnx: "
                        "file (.onnx added if missing; default exported/retinaface[_raw|_thresholds].onnx)")
    add_model_args(p)
    g = p.add_argument_group("detection settings baked into the export")
    g.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb", metavar="{rgb,bgr}",
                   help="channel order of the uint8 'images' input (default rgb; image_bytes are always decoded to RGB)")
    add_threshold_args(g, score_default=0.5,
                       score_help="minimum face score of signatures without threshold inputs (default 0.5)")
    g.add_argument("--max-detections", type=int, default=None, metavar="K",
                   help="K, the padded number of detections per image (default: the config's, 750)")
    g.add_argument("--pre-nms-top-k", type=int, default=None, metavar="N",
                   help="candidates per image before NMS (default: the config's, 5000)")
    s = p.add_argument_group("saved_model")
    s.add_argument("--version", type=int, default=None, metavar="N",
                   help="version folder number (default: next free one, 1 for a new model; an existing one is replaced)")
    t = p.add_argument_group("tflite")
    t.add_argument("--input-size", default=None, metavar="WxH", help="fixed input size (default 640x640)")
    t.add_argument("--quantize", choices=("none", "fp16", "dynamic", "int8"), default="none",
                   metavar="{none,fp16,dynamic,int8}",
                   help="none: float32; fp16: float16 weights; dynamic: int8 weights; int8: full-integer network "
                        "(needs --calibration-images)")
    t.add_argument("--raw", action="store_true",
                   help="tflite, onnx: output the three head outputs instead of detections")
    t.add_argument("--calibration-images", nargs="+", metavar="PATH", default=None,
                   help="int8: real images (files or folders) to calibrate on, fed exactly as the model is (letterboxed)")
    t.add_argument("--calibration-count", type=int, default=100, metavar="N", help="int8: use at most this many images (default 100)")
    o = p.add_argument_group("onnx")
    o.add_argument("--threshold-inputs", action="store_true",
                   help="the model takes score_threshold and iou_threshold (float32 scalars) as inputs")
    return p


def run(args) -> int:

    if args.format == "saved_model":
        tflite_only = [flag for flag, used in (("--raw", args.raw), ("--quantize", args.quantize != "none"),
                                               ("--calibration-images", args.calibration_images)) if used]
        if tflite_only:
            raise UsageError(f"{', '.join(tflite_only)}: only for --format tflite")
    elif args.version is not None:
        raise UsageError("--version: only for --format saved_model")
    if args.format == "onnx":
        tflite_only = [flag for flag, used in (("--input-size", args.input_size is not None),
                                               ("--quantize", args.quantize != "none"),
                                               ("--calibration-images", args.calibration_images)) if used]
        if tflite_only:
            raise UsageError(f"{', '.join(tflite_only)}: only for --format tflite (an ONNX model takes any size)")
        if args.threshold_inputs and args.raw:
            raise UsageError("--threshold-inputs: a --raw export has no thresholds")
        require_onnx_export()  # before the model is loaded
    elif args.threshold_inputs:
        raise UsageError("--threshold-inputs: only for --format onnx (the SavedModel has a with_thresholds signature)")
    size = parse_size(args.input_size or "640x640")
    if args.format == "tflite":
        try:
            check_input_size(size)
        except ExportError as exc:
            raise UsageError(f"--input-size {args.input_size}: {exc}") from None
    for flag, value in (("--max-detections", args.max_detections), ("--pre-nms-top-k", args.pre_nms_top_k)):
        if value is not None and not 1 <= value <= MAX_DETECTIONS_LIMIT:  # 0 never means "the default"
            raise UsageError(f"{flag} must be in [1, {MAX_DETECTIONS_LIMIT}], got {value} (leave it out for the "
                             "config's value)")
    calibration = None
    if args.format == "tflite" and args.quantize == "int8":
        if not args.calibration_images:
            raise UsageError("--quantize int8 needs --calibration-images (real photos, e.g. a few hundred WIDER images)")
        if args.calibration_count < 1:
            raise UsageError(f"--calibration-count must be >= 1, got {args.calibration_count}")
        calibration = expand_image_paths(args.calibration_images)
        if not calibration:
            raise UsageError(f"no images found in {', '.join(args.calibration_images)}")
        for path in calibration[:args.calibration_count]:  # every header before the model is loaded
            probe_image(path, hint=CALIBRATION_HINT)

    output = (args.output if args.output is not None
              else default_output(args.format, args.quantize, size, args.raw, args.threshold_inputs))
    suffix = {"tflite": ".tflite", "onnx": ".onnx"}.get(args.format)
    if suffix and not str(output).endswith(suffix):
        output = f"{output}{suffix}"  # what the export writes: the lock guards that name
    with output_lock(output):  # a second export into the same model folder / file is refused at once
        return _export(args, output, size, calibration)


def _export(args, output, size, calibration) -> int:
    model, config = load_model(args.weights, args.config)
    settings = ExportSettings.from_config(config, channel_order=args.channel_order, score_threshold=args.score_threshold,
                                          iou_threshold=args.iou_threshold, pre_nms_top_k=args.pre_nms_top_k,
                                          max_detections=args.max_detections)
    if args.format == "saved_model":
        path = export_saved_model(model, config, output, settings, version=args.version)
        print(f"wrote {path} (signatures serving_default, with_thresholds, image_bytes, "
              f"image_bytes_with_thresholds, raw; K = {settings.max_detections})")
    elif args.format == "onnx":
        path = export_onnx(model, config, output, settings, raw=args.raw, threshold_inputs=args.threshold_inputs)
        what = ("head outputs" if args.raw else f"detections, K = {settings.max_detections}"
                + (", thresholds as inputs" if args.threshold_inputs else ""))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, input uint8 [batch, height, width, 3] "
              f"{settings.channel_order.upper()}, {what}) and {path.with_suffix('.yaml')}")
    else:
        path = export_tflite(model, config, output, settings, input_size=size, quantize=args.quantize,
                             raw=args.raw, calibration_images=calibration, calibration_count=args.calibration_count)
        what = "head outputs" if args.raw else f"detections, K = {settings.max_detections}"
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.quantize}, input uint8 "
              f"[1, {size[1]}, {size[0]}, 3] {settings.channel_order.upper()}, {what}) and {path.with_suffix('.yaml')}")
    return 0
