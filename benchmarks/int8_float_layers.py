"""Which layers an int8 export of a backbone should keep in float32, measured against float32.

    python benchmarks/int8_float_layers.py --network resnet50 [--calibration 50] [--images 20]

For each candidate set of float-kept layers (substrings of the TFLite tensor names, as
``export_tflite(keep_float=...)`` takes them), the raw int8 export (calibrated on WIDER val
images) and the raw float32 export of the same network run on ``--images`` WIDER val photos
letterboxed to 640x640 (and the fixture photo). Reported per candidate: the largest change of a
face probability, of a decoded box of a float32 detection above 0.5 (pixels), and the share of
float32 detections above 0.5 that int8 keeps at IoU >= 0.9. No trained ResNet-50 exists here:
the fixture (``resnet50_random.pth``) is what is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"

# Substrings of the TFLite tensor names (``<model>/<layer>_1/...``: the traced graph adds ``_1`` to
# each layer's scope, so the stem is ``/conv1_``, which no ``layerN_i_conv1_1`` matches).
_RESNET = {"none": (), "stem": ("/conv1_",), "stem+layer1": ("/conv1_", "/maxpool", "/layer1_"),
           "heads": ("/ClassHead_", "/BboxHead_", "/LandmarkHead_"),
           "fpn+ssh+heads": ("/fpn_", "/ssh", "/ClassHead_", "/BboxHead_", "/LandmarkHead_")}
CANDIDATES = {
    "resnet50": _RESNET,
    "mobilenetv2": {"none": (), "stem": ("/features_0_",), "stem+block1": ("/features_0_", "/features_1_")},
    "resnet18": _RESNET,
}
FIXTURES = {"resnet50": "resnet50_random.pth", "mobilenetv2": "yakhyo/yakhyo_mobilenetv2_random.pth",
            "resnet18": "yakhyo/yakhyo_resnet18_random.pth"}


def _iou(a, b):
    import numpy as np
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def main(argv=None) -> int:
    import cv2
    import numpy as np
    import tensorflow as tf

    from retinaface_tf.models.weights import load_model
    from retinaface_tf.ops.anchors import generate_anchors
    from retinaface_tf.ops.box_coder import decode_boxes
    from retinaface_tf.serving import ExportSettings, export_tflite, letterbox, tflite_runner

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", choices=sorted(CANDIDATES), default="resnet50")
    p.add_argument("--calibration", type=int, default=50)
    p.add_argument("--images", type=int, default=20)
    a = p.parse_args(argv)
    model, config = load_model(SHARED / "reference" / FIXTURES[a.network])
    val = sorted((SHARED / "widerface" / "val" / "images").rglob("*.jpg"))
    calibration = [str(v) for v in val[-a.calibration:]]  # not the measured images
    photos = [cv2.imread(str(SHARED / "reference" / "biubug6_test.jpg"))] + [cv2.imread(str(v)) for v in val[:a.images]]
    inputs = [letterbox(photo, (640, 640), channel_order="rgb")[0] for photo in photos]
    settings = ExportSettings.from_config(config, score_threshold=0.5)
    anchors = np.asarray(generate_anchors(640, 640))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = tflite_runner(export_tflite(model, config, Path(tmp) / "fp32.tflite", settings, raw=True))
        reference = [fp32(images=x) for x in inputs]
        for label, keep in CANDIDATES[a.network].items():
            path = export_tflite(model, config, Path(tmp) / f"int8_{label}.tflite", settings, raw=True,
                                 quantize="int8", calibration_images=calibration, keep_float=keep)
            run = tflite_runner(path)
            prob, box, kept, total = 0.0, 0.0, 0, 0
            for x, ref in zip(inputs, reference):
                got = run(images=x)
                p_ref = tf.nn.softmax(ref["classes"][0]).numpy()[:, 1]
                p_got = tf.nn.softmax(got["classes"][0]).numpy()[:, 1]
                prob = max(prob, float(np.abs(p_ref - p_got).max()))
                faces = np.flatnonzero(p_ref > 0.5)
                if len(faces) == 0:
                    continue
                b_ref = decode_boxes(ref["bbox"][0][faces], anchors[faces], config.anchors.variances).numpy() * 640
                b_got = decode_boxes(got["bbox"][0][faces], anchors[faces], config.anchors.variances).numpy() * 640
                box = max(box, float(np.abs(b_ref - b_got).max()))
                found = np.flatnonzero(p_got > 0.5)
                total += len(faces)
                if len(found):
                    b_found = decode_boxes(got["bbox"][0][found], anchors[found], config.anchors.variances).numpy() * 640
                    kept += int((_iou(b_ref, b_found).max(1) >= 0.9).sum())
            results[label] = {"keep_float": list(keep), "max_prob_change": round(prob, 4),
                              "max_box_change_px": round(box, 2), "fp32_faces_over_0.5": total,
                              "kept_at_iou_0.9": round(kept / max(total, 1), 3), "bytes": path.stat().st_size}
            print(label, json.dumps(results[label]), file=sys.stderr, flush=True)
    print(json.dumps({"network": a.network, "images": len(inputs), "calibration": len(calibration), "results": results},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
