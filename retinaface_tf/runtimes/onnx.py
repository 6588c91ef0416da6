"""The ONNX runtime: TensorFlow graphs converted to ONNX by tf2onnx and run by ONNX Runtime.

- :func:`to_onnx`: one traced ``tf.function`` (a concrete function: the fused network, or the
  whole detection of an export) → a checked ``onnx.ModelProto``, inputs named by its signature,
  outputs by its dict keys, the dynamic dimensions named;
- :class:`OnnxSession`: an ONNX Runtime session on the CPU with explicit threads, called with
  named inputs, returning a dict of numpy outputs;
- :class:`OnnxNetwork`: the fused network converted once for uint8 images of any batch and size,
  with the same decode and NMS every export runs (the counterpart of
  :class:`~retinaface_tf.runtimes.litert.LiteRTNetwork`).

Why tf2onnx and not an emitter of our own: tf2onnx 1.17.0 converts the graphs of TensorFlow 2.21 /
Keras 3 that this package traces, the network and the post-processing alike
(``NonMaxSuppressionV4`` → ``NonMaxSuppression``, ``tf.map_fn`` → ``Loop``, ``TopK`` with a
computed ``k``), and every new layer of the network is converted from the TensorFlow ops it
emits, with no mapping to write (``docs/onnx.md``).

``onnx``, ``onnxruntime`` and ``tf2onnx`` are an optional extra (``onnx``), imported lazily:
:class:`ImportError` naming the extra otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import tensorflow as tf

from retinaface_tf.models.fused import fuse_for_inference, merged_heads
from retinaface_tf.ops.nms import detect_from_heads
from retinaface_tf.runtimes import available_cores

ONNX_MISSING = ("the ONNX export and runtime need the onnx, onnxruntime and tf2onnx packages: "
                "pip install 'retinaface-tf[onnx]'")
OPSET = 17  # what the reference's own ONNX export (and bench_onnx_reference.py) uses
HEAD_KEYS = ("bbox", "classes", "landmarks")
DETECT_KEYS = ("boxes", "scores", "landmarks", "num_detections", "anchor_indices")


def require_onnx():
    """``(onnx, onnxruntime, tf2onnx)``, imported now; :class:`ImportError` naming the extra if
    one is missing."""
    try:  # optional extra (onnx), deliberately lazy
        import onnx
        import onnxruntime
        import tf2onnx
    except ImportError:
        raise ImportError(ONNX_MISSING) from None
    return onnx, onnxruntime, tf2onnx


def versions() -> dict:
    """The converter's and runtime's versions (written into every export's description)."""
    onnx, ort, tf2onnx = require_onnx()
    return {"tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "tensorflow": tf.__version__}


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs every conversion step at INFO (and some at WARNING) on the root handler."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Traced:
    """What ``tf2onnx.convert.from_function`` takes (it calls ``get_concrete_function``) around
    an already traced concrete function."""

    def __init__(self, concrete):
        self._concrete = concrete

    def get_concrete_function(self, *_):
        return self._concrete


def _input_specs(concrete) -> list:
    args, kwargs = concrete.structured_input_signature
    return list(args) + [kwargs[key] for key in sorted(kwargs)]


def _name_dimensions(proto, names) -> None:
    """Rename the symbolic dimensions tf2onnx leaves (``unk__123``) everywhere in the graph:
    ``names`` maps ``(input or output name, axis)`` to the new name (``batch``, ``height``, ...);
    the other unknown dimensions of the outputs become ``OUTPUT_axisN``."""
    rename = {}
    values = {value.name: value for value in list(proto.graph.input) + list(proto.graph.output)}
    for (name, axis), new in names.items():
        if name in values:
            dim = values[name].type.tensor_type.shape.dim[axis]
            if dim.dim_param:
                rename[dim.dim_param] = new
    for value in proto.graph.output:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and dim.dim_param not in rename:
                rename[dim.dim_param] = f"{value.name}_axis{axis}"
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


def _order_outputs(proto, concrete) -> None:
    """The graph's outputs in the order of the function's output dict (tf2onnx sorts them)."""
    order = {name: i for i, name in enumerate(concrete.structured_outputs)}
    outputs = sorted(proto.graph.output, key=lambda value: order.get(value.name, len(order)))
    copies = [type(value)() for value in outputs]
    for copy, value in zip(copies, outputs):
        copy.CopyFrom(value)
    del proto.graph.output[:]
    proto.graph.output.extend(copies)


def to_onnx(concrete, *, opset: int = OPSET, doc: str = "", dimension_names: dict | None = None):
    """``concrete`` (a traced ``tf.function`` whose outputs are a dict) converted by tf2onnx to an
    ``onnx.ModelProto``: inputs named as its signature's specs, outputs by its dict keys,
    ``dimension_names`` ``{(input or output, axis): name}`` given to their dynamic dimensions.
    Raises :class:`ValueError` if tf2onnx left an op it could not convert (``onnx.checker``,
    full check, must pass)."""
    onnx, _, tf2onnx = require_onnx()
    with _quiet_tf2onnx():
        proto, _ = tf2onnx.convert.from_function(_Traced(concrete), input_signature=_input_specs(concrete),
                                                 opset=opset)
    _order_outputs(proto, concrete)
    if dimension_names:
        _name_dimensions(proto, dimension_names)
    proto.doc_string = doc
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"the ONNX conversion is not a valid model: {str(exc).splitlines()[0]}") from None
    return proto


class OnnxSession:
    """An ONNX Runtime session (CPU, all graph optimisations, ``num_threads`` intra-op threads,
    one inter-op thread: the settings ``../shared/peer/bench_onnx_reference.py`` times the
    reference with) on a model file or serialized model bytes. ``session(**inputs)`` → ``{output
    name: numpy array}``. ``num_threads`` ``None``: the cores this process may use."""

    def __init__(self, model: str | os.PathLike | bytes, *, num_threads: int | None = None):
        _, ort, _ = require_onnx()
        options = ort.SessionOptions()
        options.intra_op_num_threads = available_cores() if num_threads is None else int(num_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        source = model if isinstance(model, bytes) else os.fspath(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_names = tuple(value.name for value in self.session.get_inputs())
        self.output_names = tuple(value.name for value in self.session.get_outputs())

    def __call__(self, **inputs) -> dict:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"OnnxSession: missing input {missing[0]!r} (inputs: {', '.join(self.input_names)})")
        feeds = {name: np.asarray(inputs[name]) for name in self.input_names}
        return dict(zip(self.output_names, self.session.run(list(self.output_names), feeds)))


class OnnxNetwork:
    """``model``'s fused network as an ONNX model run by ONNX Runtime, for uint8 BGR images of
    any batch and size, converted once, here (a few seconds). Two graphs:

    - ``heads(images)`` (``__call__``): ``[B, H, W, 3]`` → ``{"bbox", "classes", "landmarks"}``
      (numpy float32), ``model(preprocess(images))`` to float rounding;
    - ``detect(images, output_scale, score_threshold, iou_threshold)`` (with ``postprocess``):
      the padded detections of :func:`retinaface_tf.ops.nms.postprocess` (``boxes``, ``scores``,
      ``landmarks``, ``num_detections``, ``anchor_indices``), anchors, decode, top-k and NMS
      inside the ONNX model (ONNX ``NonMaxSuppression``, one ``Loop`` step per image), the same
      function every export runs. ``postprocess``: ``{"pre_nms_top_k", "max_detections",
      "variances", "min_sizes", "steps", "clip"}``, fixed here.

    The network is :func:`~retinaface_tf.models.fused.fuse_for_inference`'s with native depthwise
    convolutions (ONNX ``Conv`` with ``group = channels`` either way), on the uint8 image itself
    (the mean folded into the first convolution, any backbone). ``model`` is the
    trained RetinaFace; its weights are a snapshot taken here. ``num_threads``: ONNX Runtime's
    intra-op threads (default: the cores this process may use). Needs the ``onnx`` extra:
    :class:`ImportError` naming it otherwise, before any conversion."""

    def __init__(self, model, *, num_threads: int | None = None, postprocess: dict | None = None,
                 opset: int = OPSET, heads: bool = True):
        require_onnx()
        self.num_threads = available_cores() if num_threads is None else int(num_threads)
        network = fuse_for_inference(model, depthwise="native", input_order="bgr", uint8_input=True,
                                     winograd_channels=None)
        merged = merged_heads(network) or network

        images_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
        dims = {("images", 0): "batch", ("images", 1): "height", ("images", 2): "width", ("output_scale", 0): "batch",
                **{(key, 0): "batch" for key in HEAD_KEYS + DETECT_KEYS}}

        @tf.function(input_signature=[images_spec], autograph=False)
        def heads_fn(images):
            out = network(images, training=False)
            return {key: out[key] for key in HEAD_KEYS}

        self.heads_model = self._heads = self.detect_model = self._detect = None
        if heads:
            self.heads_model = to_onnx(heads_fn.get_concrete_function(), opset=opset, dimension_names=dims,
                                       doc=f"{model.name}: uint8 BGR images -> head outputs")
            self._heads = OnnxSession(self.heads_model.SerializeToString(), num_threads=self.num_threads)
        if postprocess is not None:
            post = dict(postprocess)

            @tf.function(input_signature=[images_spec, tf.TensorSpec([None, 2], tf.float32, name="output_scale"),
                                          tf.TensorSpec([], tf.float32, name="score_threshold"),
                                          tf.TensorSpec([], tf.float32, name="iou_threshold")], autograph=False)
            def detect(images, output_scale, score_threshold, iou_threshold):
                shape = tf.shape(images)
                return detect_from_heads(merged(images, training=False), input_size=(shape[1], shape[2]),
                                         output_scale=output_scale, score_threshold=score_threshold,
                                         iou_threshold=iou_threshold, **post)

            self.detect_model = to_onnx(detect.get_concrete_function(), opset=opset, dimension_names=dims,
                                        doc=f"{model.name}: uint8 BGR images -> padded detections")
            self._detect = OnnxSession(self.detect_model.SerializeToString(), num_threads=self.num_threads)

    @classmethod
    def from_detect_model(cls, model_bytes: bytes, *, num_threads: int | None = None) -> "OnnxNetwork":
        """Only the ``detect`` graph, already converted (``detect_model.SerializeToString()``, e.g.
        from the runtime cache), opened without TensorFlow work. :class:`ValueError` if it does not
        take ``images``, ``output_scale``, ``score_threshold`` and ``iou_threshold``."""
        onnx, _, _ = require_onnx()
        self = cls.__new__(cls)
        self.num_threads = available_cores() if num_threads is None else int(num_threads)
        self.heads_model = self._heads = None
        self.detect_model = onnx.load_model_from_string(bytes(model_bytes))
        self._detect = OnnxSession(bytes(model_bytes), num_threads=self.num_threads)
        if set(self._detect.input_names) != {"images", "output_scale", "score_threshold", "iou_threshold"}:
            raise ValueError(f"OnnxNetwork.from_detect_model: not a detect graph (inputs {self._detect.input_names})")
        return self

    def __call__(self, images) -> dict:
        """uint8 ``[B, H, W, 3]`` BGR → raw head outputs."""
        if self._heads is None:
            raise ValueError("OnnxNetwork: built without the heads graph (heads=False)")
        images = np.ascontiguousarray(images, np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
            raise ValueError(f"OnnxNetwork: expected uint8 images [B, H, W, 3], got shape {images.shape}")
        return self._heads(images=images)

    def detect(self, images, output_scale, score_threshold: float, iou_threshold: float) -> dict:
        """uint8 ``[B, H, W, 3]`` BGR images, ``output_scale [B, 2]`` → padded detections (numpy)."""
        if self._detect is None:
            raise ValueError("OnnxNetwork.detect: built without postprocess settings")
        images = np.ascontiguousarray(images, np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
            raise ValueError(f"OnnxNetwork.detect: expected uint8 images [B, H, W, 3], got shape {images.shape}")
        return self._detect(images=images, output_scale=np.asarray(output_scale, np.float32).reshape(-1, 2),
                            score_threshold=np.asarray(score_threshold, np.float32),
                            iou_threshold=np.asarray(iou_threshold, np.float32))


def run_errors() -> tuple:
    """What ONNX Runtime raises when a model cannot run an input (its own exception types, not
    :class:`RuntimeError` subclasses)."""
    _, ort, _ = require_onnx()
    state = ort.capi.onnxruntime_pybind11_state
    return (state.Fail, state.RuntimeException, state.InvalidArgument)
