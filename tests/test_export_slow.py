"""Slow export checks: int8 vs float32 TFLite AP on the real WIDER val subset, the SavedModel's AP
against the Detector's, and the fp16 / dynamic-range variants against float32 (run with
``pytest -m slow``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from retinaface_tf.serving import ExportSettings, export_tflite, letterbox, tflite_runner
from retinaface_tf.ops.boxes import iou_matrix_np

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _eval_script(name: str = "eval_tflite"):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_model_ap_equals_detector(widerface_dir):
    """The SavedModel as ``export`` writes it (fused network), fed each val image's JPEG bytes
    through ``image_bytes_with_thresholds``, scores the Detector's WIDER AP on the same images."""
    results = _eval_script("eval_saved_model").evaluate_saved_model(widerface_dir, detector=True)
    print({k: {s: round(100 * v[s], 2) for s in ("easy", "medium", "hard")} for k, v in results.items()})
    served, detector = results["saved_model"], results["detector"]
    assert served["images"] == detector["images"] == 310
    assert served["easy"] > 0.9 and served["medium"] > 0.9 and served["hard"] > 0.78
    for setting in ("easy", "medium", "hard"):
        assert abs(served[setting] - detector[setting]) <= 1e-4, (setting, served[setting], detector[setting])


def test_int8_ap_within_1_5_points_of_fp32(widerface_dir):
    results = _eval_script().evaluate_variants(widerface_dir, modes=("none", "int8"), input_size=(640, 640),
                                               calibration_count=144)
    fp32, int8 = results["tflite_none"], results["tflite_int8"]
    print({k: {s: round(100 * v[s], 2) for s in ("easy", "medium", "hard")} for k, v in results.items()})
    assert fp32["images"] == int8["images"] == 310
    assert fp32["easy"] > 0.85 and fp32["medium"] > 0.8 and fp32["hard"] > 0.5  # 640x640 letterboxed
    for setting in ("easy", "medium", "hard"):
        assert abs(fp32[setting] - int8[setting]) <= 0.015, (setting, fp32[setting], int8[setting])


def test_fp16_and_dynamic_agree_with_fp32(bundled_model, reference_dir, tmp_path):
    model, config = bundled_model
    settings = ExportSettings(score_threshold=0.3)
    batch, _ = letterbox(cv2.imread(str(reference_dir / "biubug6_test.jpg")), (640, 640))
    outs = {}
    for mode in ("none", "fp16", "dynamic"):
        path = export_tflite(model, config, tmp_path / mode, settings, input_size=(640, 640), quantize=mode)
        outs[mode] = tflite_runner(path)(images=batch)
    ref = outs["none"]
    n = int(ref["num_detections"][0])
    assert n > 20
    for mode, tol in (("fp16", 1.0), ("dynamic", 3.0)):
        out = outs[mode]
        m = int(out["num_detections"][0])
        assert abs(m - n) <= 0.1 * n, mode
        iou = iou_matrix_np(ref["detection_boxes"][0, :n], out["detection_boxes"][0, :m], plus_one=True)
        best = iou.argmax(axis=1)
        matched = iou.max(axis=1) > 0.5
        assert matched.mean() >= 0.9, mode
        diff = np.abs(ref["detection_boxes"][0, :n][matched] - out["detection_boxes"][0, :m][best[matched]])
        assert np.median(diff) < tol, (mode, np.median(diff))
