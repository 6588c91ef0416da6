"""Deployment exports: a TF Serving SavedModel and TFLite models, post-processing inside.

Both run without this package: preprocessing (:func:`retinaface_tf.ops.image.preprocess`) and
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

TFLite (:func:`~retinaface_tf.serving.tflite.export_tflite`): batch 1, fixed ``[1, H, W, 3]`` uint8 input, same output names
(or the head outputs with ``raw=True``); float32, float16 weights, dynamic-range int8 weights,
or an int8 network (int8 weights and activations, calibrated on real images through the model's
own preprocessing) whose pre- / post-processing and first backbone stage stay float32 (see
:func:`~retinaface_tf.serving.tflite.convert_tflite`).

ONNX (:func:`~retinaface_tf.serving.onnx.export_onnx`): the ``serving_default``,
``with_thresholds`` or ``raw`` graph converted by tf2onnx, any batch and size, same names.

Modules: :mod:`~retinaface_tf.serving.module` (the settings and the exported ``tf.Module`` with
its signatures), :mod:`~retinaface_tf.serving.saved_model` (TF Serving folders),
:mod:`~retinaface_tf.serving.tflite` (letterboxing, calibration, conversion, LiteRT runner),
:mod:`~retinaface_tf.serving.onnx` (ONNX export, ONNX Runtime runner).
"""

from retinaface_tf.serving.module import (DETECTION_KEYS, RAW_KEYS, SIGNATURES, ExportModule, ExportSettings,
                                          build_export_module, network_order)
from retinaface_tf.serving.onnx import export_onnx, onnx_network, onnx_runner, require_onnx_export
from retinaface_tf.serving.saved_model import export_saved_model, next_version, saved_model_network
from retinaface_tf.serving.tflite import (INT8_FLOAT_LAYERS, QUANTIZE_MODES, calibration_dataset, convert_tflite,
                                          export_tflite, letterbox, tflite_network, tflite_runner)

__all__ = ["DETECTION_KEYS", "INT8_FLOAT_LAYERS", "QUANTIZE_MODES", "RAW_KEYS", "SIGNATURES", "ExportModule",
           "ExportSettings", "build_export_module", "calibration_dataset", "convert_tflite", "export_onnx",
           "export_saved_model", "export_tflite", "letterbox", "network_order", "next_version", "onnx_network",
           "onnx_runner", "require_onnx_export", "saved_model_network", "tflite_network", "tflite_runner"]
