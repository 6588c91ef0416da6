"""The LiteRT runtime: the fused network converted to a float32 LiteRT model and run by the
XNNPACK delegate.

- :class:`LiteRTNetwork`: converted once for uint8 images of any batch and size, with the same
  decode and NMS every export runs (``Detector(runtime="litert")``);
- :func:`litert_network`: the same network for one fixed float input (measured by
  ``benchmarks/side_by_side.py --litert``).

``ai-edge-litert`` is an optional extra (``tflite``), imported lazily.
"""

from __future__ import annotations

import tempfile
import threading

import numpy as np
import tensorflow as tf

from retinaface_tf.models.fused import fuse_for_tflite
from retinaface_tf.ops.nms import detect_from_heads
from retinaface_tf.runtimes import available_cores

class _NetworkModule(tf.Module):
    """A ``tf.Module`` holding a Keras network for saving: Keras 3 variables are not
    ``tf.Module``-tracked, so their backing ``tf.Variable``s are listed, or the SavedModel the
    converter reads would hold no weights."""

    def __init__(self, network):
        super().__init__()
        self.network = network
        self._variables = [v.value for v in network.variables]


def _litert_flatbuffer(module: tf.Module, signatures: dict) -> bytes:
    """``module`` saved with ``signatures`` (name → concrete function) and converted to a float32
    LiteRT flatbuffer holding those signatures."""
    with tempfile.TemporaryDirectory(prefix=".retinaface-litert-") as tmp:
        tf.saved_model.save(module, tmp, signatures=signatures)
        return tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(signatures)).convert()


def litert_network(model, input_size: tuple[int, int], *, batch: int = 1, num_threads: int = 2):
    """``model`` converted to a float32 LiteRT model for a fixed ``[batch, H, W, 3]`` network
    input (BGR minus mean, as the Keras model takes) and run by the LiteRT interpreter with its
    default XNNPACK delegate on ``num_threads`` threads. Returns ``run(x) -> {"bbox", "classes",
    "landmarks"}`` (numpy); the converter folds batch norm itself."""
    from ai_edge_litert.interpreter import Interpreter  # optional extra (tflite), deliberately lazy

    h, w = int(input_size[0]), int(input_size[1])

    class _Net(_NetworkModule):
        @tf.function(input_signature=[tf.TensorSpec([batch, h, w, 3], tf.float32, name="image")])
        def serve(self, image):
            out = self.network(image, training=False)
            return {key: out[key] for key in ("bbox", "classes", "landmarks")}

    module = _Net(model)
    flatbuffer = _litert_flatbuffer(module, {"serving_default": module.serve.get_concrete_function()})
    interpreter = Interpreter(model_content=flatbuffer, num_threads=num_threads)
    runner = interpreter.get_signature_runner("serving_default")

    def run(x):
        return runner(image=np.asarray(x, np.float32))

    run.flatbuffer = flatbuffer
    return run


LITERT_MISSING = "the LiteRT runtime needs the ai-edge-litert package: pip install 'retinaface-tf[tflite]'"
HEAD_KEYS = ("bbox", "classes", "landmarks")


def _interpreter_class():
    """LiteRT's ``Interpreter``; :class:`ImportError` naming the package if it is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # optional extra (tflite), deliberately lazy
    except ImportError:
        raise ImportError(LITERT_MISSING) from None
    return Interpreter


class LiteRTNetwork:
    """``model``'s network as a float32 LiteRT model run by the XNNPACK delegate, for uint8 BGR
    images of any size, converted once, here (a few seconds; the interpreter re-plans its
    tensors when the input shape changes). Two signatures:

    - ``heads(images)``: ``[B, H, W, 3]`` → ``{"bbox", "classes", "landmarks"}`` (numpy float32),
      ``model(preprocess(images))`` to float rounding;
    - ``detect(image, anchors, output_scale, score_threshold, iou_threshold)`` (with
      ``postprocess``): one image ``[1, H, W, 3]`` → the padded detections of
      :func:`retinaface_tf.ops.nms.postprocess` (decode, top-k and NMS inside the LiteRT model,
      the same function every export runs; ``anchors [N, 4]`` for ``(H, W)`` are fed in).
      ``postprocess``: ``{"pre_nms_top_k", "max_detections", "variances"}``, fixed here.

    The network is :func:`fuse_for_tflite`'s on the uint8 image itself (the mean folded into the
    first convolution, any backbone). ``model`` is the trained RetinaFace (not an already fused network);
    its weights are a snapshot taken here. ``num_threads``: the interpreter's threads (default:
    the cores this process may use). Calls are serialised by a lock (one interpreter). Needs
    ``ai-edge-litert`` (the ``tflite`` extra): :class:`ImportError` naming it otherwise, before
    any conversion."""

    def __init__(self, model, *, num_threads: int | None = None, postprocess: dict | None = None):
        _interpreter_class()  # the missing extra named before any conversion
        self.num_threads = available_cores() if num_threads is None else int(num_threads)
        network = fuse_for_tflite(model, input_order="bgr", uint8_input=True)
        post = dict(postprocess) if postprocess is not None else None

        def forward(images):
            out = network(images, training=False)
            return {key: out[key] for key in HEAD_KEYS}

        def detect(image, anchors, output_scale, score_threshold, iou_threshold):
            return detect_from_heads(forward(image), input_size=(tf.shape(image)[1], tf.shape(image)[2]),
                                     output_scale=output_scale, score_threshold=score_threshold,
                                     iou_threshold=iou_threshold, single_image=True, anchors=anchors, **post)

        class _Serve(_NetworkModule):
            def __init__(self):
                super().__init__(network)
                if post is not None:  # saving traces every tf.function attribute: only when wanted
                    self.detect = tf.function(detect, autograph=False, input_signature=[
                        tf.TensorSpec([1, None, None, 3], tf.uint8, name="image"),
                        tf.TensorSpec([None, 4], tf.float32, name="anchors"),
                        tf.TensorSpec([1, 2], tf.float32, name="output_scale"),
                        tf.TensorSpec([], tf.float32, name="score_threshold"),
                        tf.TensorSpec([], tf.float32, name="iou_threshold")])

            @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
                         autograph=False)
            def heads(self, images):
                return forward(images)

        module = _Serve()
        signatures = {"heads": module.heads.get_concrete_function()}
        if post is not None:
            signatures["detect"] = module.detect.get_concrete_function()
        self._open(_litert_flatbuffer(module, signatures))

    @classmethod
    def from_flatbuffer(cls, flatbuffer: bytes, *, num_threads: int | None = None) -> "LiteRTNetwork":
        """A network already converted (its :attr:`flatbuffer`, e.g. from the runtime cache),
        opened without TensorFlow work. :class:`ValueError` if it does not hold the ``heads``
        signature."""
        self = cls.__new__(cls)
        self.num_threads = available_cores() if num_threads is None else int(num_threads)
        self._open(bytes(flatbuffer))
        if "heads" not in self._runners:
            raise ValueError("LiteRTNetwork.from_flatbuffer: the model has no 'heads' signature")
        return self

    def _open(self, flatbuffer: bytes) -> None:
        self.flatbuffer = flatbuffer
        self._interpreter = _interpreter_class()(model_content=self.flatbuffer, num_threads=self.num_threads)
        self._runners = {key: self._interpreter.get_signature_runner(key)
                         for key in self._interpreter.get_signature_list()}
        self._lock = threading.Lock()

    def __call__(self, images) -> dict:
        """The ``heads`` signature: uint8 ``[B, H, W, 3]`` → raw head outputs."""
        images = np.ascontiguousarray(images, np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"LiteRTNetwork: expected uint8 images [B, H, W, 3], got shape {images.shape}")
        with self._lock:
            out = self._runners["heads"](images=images)
        return {key: out[key] for key in HEAD_KEYS}

    def detect(self, image, anchors, output_scale, score_threshold: float, iou_threshold: float) -> dict:
        """The ``detect`` signature: one uint8 ``[1, H, W, 3]`` image → padded detections (numpy)."""
        if "detect" not in self._runners:
            raise ValueError("LiteRTNetwork.detect: built without postprocess settings")
        image = np.ascontiguousarray(image, np.uint8)
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] != 3:
            raise ValueError(f"LiteRTNetwork.detect: expected one uint8 image [1, H, W, 3], got shape {image.shape}")
        with self._lock:
            return self._runners["detect"](image=image, anchors=np.asarray(anchors, np.float32),
                                           output_scale=np.asarray(output_scale, np.float32).reshape(1, 2),
                                           score_threshold=np.float32(score_threshold),
                                           iou_threshold=np.float32(iou_threshold))
