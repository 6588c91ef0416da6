"""``retinaface-tf export``: a TF Serving SavedModel, a TFLite model or an ONNX model, post-processing inside."""

from __future__ import annotations

import re
from pathlib import Path

from retinaface_tf.commands import add_model_args
from retinaface_tf.errors import UsageError
from retinaface_tf.fileio import expand_image_paths
from retinaface_tf.models.weights import load_model
from retinaface_tf.serving import ExportSettings, export_onnx, export_saved_model, export_tflite, require_onnx_export


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (WIDTHxHEIGHT) or ``"640"`` → ``(height, width)``."""

    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m:
        raise UsageError(f"--input-size must be WIDTHxHEIGHT (e.g. 640x640) or one number, got {text!r}")
    width = int(m.group(1))
    height = int(m.group(2) or m.group(1))
    return height, width


def default_output(fmt: str, quantize: str = "none", size: tuple[int, int] = (640, 640), raw: bool = False,
                   threshold_inputs: bool = False) -> Path:
    """Where ``export`` writes without ``--output``: ``exported/retinaface`` (SavedModel folder),
    ``exported/retinaface_<fp32|fp16|dynamic|int8>_<W>x<H>[_raw].tflite`` or
    ``exported/retinaface[_raw|_thresholds].onnx``, relative to the working folder."""

    if fmt == "saved_model":
        return Path("exported") / "retinaface"
    if fmt == "onnx":
        return Path("exported") / f"retinaface{'_raw' if raw else ''}{'_thresholds' if threshold_inputs else ''}.onnx"
    kind = "fp32" if quantize == "none" else quantize
    return Path("exported") / f"retinaface_{kind}_{size[1]}x{size[0]}{'_raw' if raw else ''}.tflite"


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--format", default="saved_model", choices=("saved_model", "tflite", "onnx"),
                   help="saved_model (default): TF Serving model folder OUTPUT/<version>/; tflite: one .tflite file; "
                        "onnx: one .onnx file for any batch and size (needs the onnx extra)")
    p.add_argument("--output", "-o", default=None,
                   help="saved_model: model folder (default exported/retinaface); tflite: file (.tflite added if "
                        "missing; default exported/retinaface_<fp32|fp16|dynamic|int8>_<W>x<H>[_raw].tflite); onnx: "
                        "file (.onnx added if missing; default exported/retinaface[_raw|_thresholds].onnx)")
    add_model_args(p)
    g = p.add_argument_group("detection settings baked into the export")
    g.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb",
                   help="channel order of the uint8 'images' input (default rgb; image_bytes are always decoded to RGB)")
    g.add_argument("--score-threshold", type=float, default=0.5,
                   help="minimum face score of signatures without threshold inputs (default 0.5)")
    g.add_argument("--iou-threshold", type=float, default=None, help="NMS IoU threshold (default: the config's, 0.4)")
    g.add_argument("--max-detections", type=int, default=None,
                   help="K, the padded number of detections per image (default: the config's, 750)")
    g.add_argument("--pre-nms-top-k", type=int, default=None,
                   help="candidates per image before NMS (default: the config's, 5000)")
    s = p.add_argument_group("saved_model")
    s.add_argument("--version", type=int, default=None,
                   help="version folder number (default: next free one, 1 for a new model; an existing one is replaced)")
    t = p.add_argument_group("tflite")
    t.add_argument("--input-size", default=None, help="fixed input WIDTHxHEIGHT (default 640x640)")
    t.add_argument("--quantize", choices=("none", "fp16", "dynamic", "int8"), default="none",
                   help="none: float32; fp16: float16 weights; dynamic: int8 weights; int8: full-integer network "
                        "(needs --calibration-images)")
    t.add_argument("--raw", action="store_true",
                   help="tflite, onnx: output the three head outputs instead of detections")
    t.add_argument("--calibration-images", nargs="+", metavar="PATH", default=None,
                   help="int8: real images (files or folders) to calibrate on, fed exactly as the model is (letterboxed)")
    t.add_argument("--calibration-count", type=int, default=100, help="int8: use at most this many images (default 100)")
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
    calibration = None
    if args.format == "tflite" and args.quantize == "int8":
        if not args.calibration_images:
            raise UsageError("--quantize int8 needs --calibration-images (real photos, e.g. a few hundred WIDER images)")
        if args.calibration_count < 1:
            raise UsageError(f"--calibration-count must be >= 1, got {args.calibration_count}")
        calibration = expand_image_paths(args.calibration_images)
        if not calibration:
            raise UsageError(f"no images found in {', '.join(args.calibration_images)}")

    output = (args.output if args.output is not None
              else default_output(args.format, args.quantize, size, args.raw, args.threshold_inputs))
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
              f"[1, {size[0]}, {size[1]}, 3] {settings.channel_order.upper()}, {what}) and {path.with_suffix('.yaml')}")
    return 0
