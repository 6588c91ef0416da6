"""Inference: image(s) → faces, through the same decode + NMS graph every export uses.

>>> from retinaface_tf import Detector
>>> det = Detector()                       # bundled official mobilenet0.25 weights
>>> faces = det.detect(cv2.imread("photo.jpg"))
>>> faces.boxes, faces.scores, faces.landmarks   # pixel xyxy [K,4], [K], pixel [K,5,2]
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import importlib.util
import math
import os
from typing import Iterable, Sequence

import cv2
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from retinaface_tf.alignment import AlignedFaces, align_faces
from retinaface_tf.config import Config
from retinaface_tf.constants import BGR_MEAN
from retinaface_tf.errors import DetectorError, ImageError, RetinaFaceError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, bundled_image, check_max_pixels, read_image, to_bgr_uint8
from retinaface_tf.models.fused import WINOGRAD_CHANNELS, default_depthwise, fuse_for_inference, merged_heads
from retinaface_tf.models.weights import load_model
from retinaface_tf.runtimes import cache as runtime_cache
from retinaface_tf.runtimes import onnx as onnx_runtime
from retinaface_tf.runtimes.litert import LiteRTNetwork
from retinaface_tf.ops.anchors import anchor_grid, anchors_inside, generate_anchors, reindex_anchors
from retinaface_tf.ops.image import fast_preprocess
from retinaface_tf.ops.nms import detect_from_heads, face_probability, postprocess

# Memory per batch: a batch holds at most this many (canvas) pixels, cut before TensorFlow
# allocates anything (eight 1920x1080 frames fit; four 12-megapixel photos run two by two). One
# image larger than this runs alone (its own size is bounded by max_pixels).
BATCH_PIXELS = 24_000_000


def check_fraction(name: str, value, *, error=DetectorError) -> float:
    """``value`` as a float in ``[0, 1]``; NaN, infinities and non-numbers raise ``error`` naming
    ``name`` (used for every threshold the API and the command line take)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise error(f"{name} must be a number in [0, 1], got {value!r}")
    return number


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DetectorError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


@dataclasses.dataclass
class Detections:
    """Faces found in one image, in that image's pixels.

    ``boxes [K, 4]`` float32 pixel ``xyxy``; ``scores [K]`` float32 face probability, descending;
    ``landmarks [K, 5, 2]`` float32 pixel (x, y): left eye, right eye, nose, left and right
    mouth corner; ``anchor_indices [K]`` int32: the anchor of the network input each face was
    decoded from (``None`` for detections merged from several passes).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    anchor_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def align(self, image, *, size: int | tuple[int, int] = 112, use_landmarks: bool = True) -> AlignedFaces:
        """Aligned crops of these faces from ``image`` (the BGR array they were detected in):
        the five landmarks mapped onto the ArcFace template by a least-squares similarity
        transform (:func:`retinaface_tf.alignment.align_faces`). ``size``: ``112``, ``(96, 112)``
        as ``(width, height)``, or any size scaled from them. Faces whose landmarks are unusable
        (not finite, far outside the box, collapsed: a model trained without landmarks) are
        aligned from the box; ``use_landmarks=False`` does that for all."""
        image = to_bgr_uint8(image)
        return align_faces(image, self.boxes, self.landmarks, size=size, use_landmarks=use_landmarks)

    def to_list(self) -> list[dict]:
        return [
            {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 5),
             "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in lm]}
            for b, s, lm in zip(self.boxes, self.scores, self.landmarks)
        ]


class Detector:
    """RetinaFace detector: decode + NMS run inside one ``tf.function`` (the same
    :func:`retinaface_tf.ops.nms.postprocess` every export uses).

    Args:
      weights: see :func:`retinaface_tf.models.weights.resolve_weights` (``None``: bundled official
        mobilenet0.25).
      config: a :class:`Config`, preset name or YAML path (default: saved with the weights).
      score_threshold: keep faces with probability above this (0.02 reproduces the reference's
        evaluation setting; 0.5 is a sensible default for applications).
      iou_threshold, pre_nms_top_k, max_detections: NMS settings (default: the config's,
        i.e. the reference's 0.4 / 5000 / 750).
      max_size: if set, images whose long side exceeds it are downscaled first (detections are
        still returned in original pixels).
      batch_size: images are run together in batches of up to this many (>= 1). Images of
        different sizes share a batch by padding (``mixed_sizes``).
      mixed_sizes: images of different sizes share a batch, padded into one canvas: each image
        at the top-left, the rest the mean colour (0 after the mean subtraction), canvas sides
        rounded up to a multiple of 32 (the coarsest stride). The network masks every
        activation outside each image's own extent (``fuse_for_inference(masked=True)``) and
        ignores anchors outside it, so each image's detections equal its own run alone (to
        float rounding; anchor indices are the image's own). ``iter_detect`` looks ahead
        ``4 x batch_size`` images and batches them sorted by size, so little is padded.
        Needs the fused network; otherwise (and with ``False``) only equal sizes share a
        batch. A batch of equal sizes is never padded.
      batch_pixels: memory per batch: a batch holds at most this many pixels (its padded canvas
        times its images; default :data:`BATCH_PIXELS`, 24 megapixels), so ``batch_size`` large
        images are split into smaller batches before TensorFlow allocates; one image larger than
        this runs alone.
      max_pixels: image files declaring more pixels than this are refused from their header
        before decoding, and no image is resized past it (default
        :data:`retinaface_tf.fileio.DEFAULT_MAX_PIXELS`, 100 megapixels; ``None``: no limit).
      model: an already built Keras network (skips loading).
      fused: run :func:`retinaface_tf.models.fused.fuse_for_inference`'s network (batch norm
        folded into the convolutions, fusable op patterns, merged heads; same outputs to float
        rounding, about twice as fast on CPU) in a frozen graph: its weights are a **snapshot**
        of ``model`` taken here. ``fused=False`` runs ``model`` itself, reading its variables at
        every call (what validation during training needs).
      runtime: what runs the detection; the same detections to float rounding whichever runs.
        ``"auto"`` (default): the fastest on this machine of the runtimes installed, timed once
        on a 640x640 photo and remembered, with its converted model, in the on-disk cache of
        :mod:`retinaface_tf.runtimes.cache` (keyed by the weights, the settings, the threads,
        the versions and the CPU): the first ``Detector`` of a network on a machine spends
        10-30 s converting and timing, later ones load the cached model in well under a second.
        ``$RETINAFACE_TF_RUNTIME`` (``tf`` / ``litert`` / ``onnx``) overrides the choice;
        ``fused=False`` or an already fused ``model`` is ``"tf"``. ``"tf"``: TensorFlow (oneDNN
        on CPU, or the GPU). ``"litert"``: the fused network with the same decode and NMS
        converted here, once (5-10 s), to a float32 LiteRT model for any input size
        (:class:`~retinaface_tf.runtimes.litert.LiteRTNetwork`), run by XNNPACK, one image per
        call; needs the ``tflite`` extra. ``"onnx"``: the same converted by tf2onnx and run by
        ONNX Runtime (:class:`~retinaface_tf.runtimes.onnx.OnnxNetwork`), batches of equal
        sizes in one call; needs the ``onnx`` extra. Both need ``fused=True``; with them images
        of different sizes are not padded into one batch (``mixed_sizes`` is off).
        :attr:`runtime` says which runs, :attr:`runtime_timings` what the choice measured.
      threads: the LiteRT / ONNX Runtime threads (default: the cores this process may use;
        TensorFlow's are its own settings). ``litert_threads`` is an older name for it.

    The graph also subtracts the mean as one vectorised row ``BiasAdd``
    (:func:`retinaface_tf.ops.image.fast_preprocess`, bit for bit the same), builds the anchors
    once per input size, and runs a single image through the NMS kernel without ``tf.map_fn``.

    Every setting is checked here: a NaN or out-of-range threshold, a zero batch size, ... raise a
    one-line :class:`DetectorError` before any model is loaded.
    """

    def __init__(self, weights=None, config=None, *, score_threshold: float = 0.5,
                 iou_threshold: float | None = None, pre_nms_top_k: int | None = None,
                 max_detections: int | None = None, max_size: int | None = None, batch_size: int = 8,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, model=None, fused: bool = True,
                 mixed_sizes: bool = True, runtime: str = "auto", threads: int | None = None,
                 batch_pixels: int = BATCH_PIXELS, litert_threads: int | None = None):
        score_threshold = check_fraction("score_threshold", score_threshold)
        if iou_threshold is not None:
            iou_threshold = check_fraction("iou_threshold", iou_threshold)
        if pre_nms_top_k is not None:
            pre_nms_top_k = _positive_int("pre_nms_top_k", pre_nms_top_k)
        if max_detections is not None:
            max_detections = _positive_int("max_detections", max_detections)
        if max_size is not None:
            max_size = _positive_int("max_size", max_size)
        batch_size = _positive_int("batch_size", batch_size)
        self.batch_pixels = _positive_int("batch_pixels", batch_pixels)
        if runtime not in RUNTIMES:
            raise DetectorError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime in CONVERTED_RUNTIMES and not fused:
            raise DetectorError(f"runtime={runtime!r} runs the fused network: it cannot be combined with fused=False")
        threads = threads if threads is not None else litert_threads
        if threads is not None:
            threads = _positive_int("threads", threads)
        try:
            self.max_pixels = check_max_pixels(max_pixels)
        except RetinaFaceError as exc:
            raise DetectorError(str(exc)) from None
        if model is None:
            model, config = load_model(weights, config)
        elif not isinstance(config, Config):
            config = Config.load(config or "mobilenet025")
        self.model = model
        self.config = config
        self.fused = bool(fused)
        if runtime in CONVERTED_RUNTIMES and model.name.endswith("_fused"):
            raise DetectorError(f"runtime={runtime!r} converts the trained model: pass it, not an already fused network")
        self.network = fuse_for_inference(model) if self.fused and not model.name.endswith("_fused") else model
        self._forward = merged_heads(self.network) or self.network  # merged heads: split after gathering rows
        post = config.postprocess
        self.score_threshold = score_threshold
        self.iou_threshold = float(post.iou_threshold if iou_threshold is None else iou_threshold)
        self.pre_nms_top_k = int(post.pre_nms_top_k if pre_nms_top_k is None else pre_nms_top_k)
        self.max_detections = int(post.max_detections if max_detections is None else max_detections)
        self.max_size = max_size
        self.batch_size = batch_size
        self._masked_network = None
        self._masked_forward = None
        self._grids: dict[tuple[int, int], dict] = {}
        self._anchors: dict[tuple[int, int], tf.Tensor] = {}
        self._graphs: dict[bool, tuple] = {}
        self._litert = self._onnx = None
        self.threads = threads
        self.runtime_timings: dict[str, float] = {}
        self._run_errors = (tf.errors.OpError, MemoryError)  # a batch that cannot run: per image, then its error
        self.runtime = self._resolve_runtime(runtime)
        self.mixed_sizes = bool(mixed_sizes) and self.fused and self.runtime == "tf"

    # ------------------------------------------------------------------ runtimes
    def _resolve_runtime(self, runtime: str) -> str:
        """The runtime that will run (``"auto"`` resolved), its converted network opened."""
        if runtime == "auto":
            forced = os.environ.get(RUNTIME_ENV, "").strip()
            if forced and forced not in RUNTIMES:
                raise DetectorError(f"${RUNTIME_ENV} must be one of {', '.join(RUNTIMES)}, got {forced!r}")
            runtime = forced or runtime
        if runtime == "auto" and (not self.fused or self.model.name.endswith("_fused")):
            runtime = "tf"
        if runtime == "auto":
            return self._choose_runtime()
        if runtime in CONVERTED_RUNTIMES:
            try:
                network = self._convert(runtime)
            except ImportError as exc:
                raise DetectorError(str(exc)) from None
            self._litert, self._onnx = (network, None) if runtime == "litert" else (None, network)
        self._add_run_errors(runtime)
        return runtime

    def _convert(self, runtime: str):
        """The fused network with the baked post-processing, converted for ``runtime`` (``litert``
        or ``onnx``)."""
        if runtime == "litert":
            return LiteRTNetwork(self.model, num_threads=self.threads, postprocess=self._baked())
        return onnx_runtime.OnnxNetwork(self.model, num_threads=self.threads, heads=False,
                                        postprocess=self._baked(anchors=True))

    def _baked(self, anchors: bool = False) -> dict:
        """The post-processing settings a converted network holds (the ONNX one builds its anchors)."""
        a = self.config.anchors
        out = {"pre_nms_top_k": self.pre_nms_top_k, "max_detections": self.max_detections,
               "variances": tuple(a.variances)}
        if anchors:
            out.update(min_sizes=[list(m) for m in a.min_sizes], steps=list(a.steps), clip=bool(a.clip))
        return out

    def _add_run_errors(self, runtime: str) -> None:
        if runtime == "litert":
            self._run_errors += (RuntimeError,)  # what the LiteRT interpreter raises
        elif runtime == "onnx":
            self._run_errors += onnx_runtime.run_errors()

    def _choose_runtime(self) -> str:
        """``runtime="auto"``: the cached choice for this network, settings and machine, or the
        fastest runtime installed, timed now and cached (see :mod:`retinaface_tf.runtimes.cache`)."""
        available = installed_runtimes()
        machine = runtime_cache.machine_identity()
        key = runtime_cache.entry_key({
            "weights": runtime_cache.weights_digest(self.model), "postprocess": self._baked(anchors=True),
            "threads": self.threads or machine["cores"], "versions": _versions(), "machine": machine,
            # TensorFlow's kernels (oneDNN or not: TF_ENABLE_ONEDNN_OPTS) change its timing and graph
            "tensorflow_depthwise": default_depthwise(), "tensorflow_winograd": WINOGRAD_CHANNELS,
            "runtimes": available})
        entry = runtime_cache.CacheEntry(key)
        record = entry.load(available)
        if record is not None:
            try:
                if record["runtime"] == "litert":
                    self._litert = LiteRTNetwork.from_flatbuffer(record["data"][LITERT_FILE], num_threads=self.threads)
                elif record["runtime"] == "onnx":
                    self._onnx = onnx_runtime.OnnxNetwork.from_detect_model(record["data"][ONNX_FILE],
                                                                            num_threads=self.threads)
            except Exception:  # noqa: BLE001 - a damaged entry the runtime refuses, in its own exception type: rebuilt
                self._litert = self._onnx = None
            else:
                self.runtime_timings = dict(record.get("timings_ms", {}))
                self._add_run_errors(record["runtime"])
                return record["runtime"]
        return self._probe_runtimes(entry, available)

    def _probe_runtimes(self, entry, available: list[str]) -> str:
        """Convert for every installed runtime, time each on the bundled photo at 640x640, keep the
        fastest (and cache it)."""
        networks, failed = {}, {}
        for name in available:
            try:
                if name in CONVERTED_RUNTIMES:
                    networks[name] = self._convert(name)
            except Exception as exc:  # noqa: BLE001 - a converter that fails here leaves the others to choose from
                failed[name] = _one_line(exc)
        image = cv2.resize(read_image(bundled_image()), (PROBE_SIZE, PROBE_SIZE), interpolation=cv2.INTER_AREA)
        images, scale = image[None], np.ones((1, 2), np.float32)
        thr, iou = np.float32(self.score_threshold), np.float32(self.iou_threshold)

        def runner(name):
            def run():
                self.runtime = name
                self._litert, self._onnx = networks.get("litert"), networks.get("onnx")
                self._infer(images, scale, thr, iou)
            return run

        timings = runtime_cache.time_candidates({name: runner(name) for name in available if name not in failed})
        best = min(timings, key=timings.get)
        self._litert = networks["litert"] if best == "litert" else None
        self._onnx = networks["onnx"] if best == "onnx" else None
        self.runtime_timings = {name: round(ms, 3) for name, ms in timings.items()}
        files = {}
        if best == "litert":
            files[LITERT_FILE] = self._litert.flatbuffer
        elif best == "onnx":
            files[ONNX_FILE] = self._onnx.detect_model.SerializeToString()
        entry.store({"runtime": best, "timings_ms": self.runtime_timings, "failed": failed,
                     "probe": f"{PROBE_SIZE}x{PROBE_SIZE}",
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}, files)
        self._add_run_errors(best)
        return best

    # ------------------------------------------------------------------ graph
    def _graph_fn(self, images, output_scale, score_threshold, iou_threshold, anchors, *, single_image: bool):
        a = self.config.anchors
        out = self._forward(fast_preprocess(images, channel_order="bgr"), training=False)
        return detect_from_heads(out, input_size=(tf.shape(images)[1], tf.shape(images)[2]),
                                 output_scale=output_scale, score_threshold=score_threshold,
                                 iou_threshold=iou_threshold, pre_nms_top_k=self.pre_nms_top_k,
                                 max_detections=self.max_detections, min_sizes=a.min_sizes, steps=a.steps,
                                 clip=a.clip, variances=a.variances, single_image=single_image, anchors=anchors)

    def _graph(self, single_image: bool):
        """``(call, concrete function)`` for batches of one image or of any size, built on first use:
        one graph for every image size. Fused: the weights frozen into constants (no variable
        read per weight and call)."""
        if single_image not in self._graphs:
            batch = 1 if single_image else None
            spec = [tf.TensorSpec([batch, None, None, 3], tf.uint8), tf.TensorSpec([batch, 2], tf.float32),
                    tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32), tf.TensorSpec([None, 4], tf.float32)]
            fn = tf.function(functools.partial(self._graph_fn, single_image=single_image), input_signature=spec,
                             autograph=False)
            concrete = fn.get_concrete_function()
            if self.fused:
                self._graphs[single_image] = _frozen(concrete)
            else:
                self._graphs[single_image] = (concrete, concrete)
        return self._graphs[single_image]

    def _padded_graph_fn(self, images, sizes, output_scale, score_threshold, iou_threshold, anchors, inside):
        out = self._masked_forward([fast_preprocess(images, channel_order="bgr"), sizes], training=False)
        scores = tf.where(inside, face_probability(out["classes"]), -1.0)  # anchors outside the image: never kept
        return postprocess(out["bbox"], scores, out["landmarks"], anchors,
                           input_size=(tf.shape(images)[1], tf.shape(images)[2]), output_scale=output_scale,
                           score_threshold=score_threshold, iou_threshold=iou_threshold,
                           pre_nms_top_k=self.pre_nms_top_k, max_detections=self.max_detections,
                           variances=self.config.anchors.variances)

    def _padded_graph(self):
        """The frozen graph for batches of different sizes (built on the first such batch)."""
        if "padded" not in self._graphs:
            self._masked_network = fuse_for_inference(self.model, masked=True)
            self._masked_forward = merged_heads(self._masked_network) or self._masked_network
            spec = [tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([None, 2], tf.int32),
                    tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32),
                    tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, None], tf.bool)]
            concrete = tf.function(self._padded_graph_fn, input_signature=spec, autograph=False).get_concrete_function()
            self._graphs["padded"] = _frozen(concrete)
        return self._graphs["padded"]

    def _grid(self, height: int, width: int) -> dict:
        key = (int(height), int(width))
        if key not in self._grids:
            if len(self._grids) >= 64:
                self._grids.clear()
            a = self.config.anchors
            self._grids[key] = anchor_grid(key[0], key[1], a.min_sizes, a.steps)
        return self._grids[key]

    def graph(self, single_image: bool = False):
        """The TensorFlow graph the Detector runs (for profiling)."""
        return self._graph(single_image)[1].graph

    def anchors(self, height: int, width: int) -> tf.Tensor:
        """``[N, 4]`` anchors of an input size, computed once per size (the same function as in
        the graph)."""
        key = (int(height), int(width))
        if key not in self._anchors:
            if len(self._anchors) >= 64:
                self._anchors.clear()
            a = self.config.anchors
            self._anchors[key] = generate_anchors(tf.constant(key[0]), tf.constant(key[1]), a.min_sizes, a.steps,
                                                  a.clip)
        return self._anchors[key]

    def _infer(self, images, output_scale, score_threshold, iou_threshold) -> dict:
        """uint8 ``[B, H, W, 3]`` BGR → the padded detections of :func:`~retinaface_tf.ops.nms.postprocess`."""
        if self.runtime == "onnx":  # anchors, decode and NMS inside the ONNX model, one call per batch
            return self._onnx.detect(images, output_scale, score_threshold, iou_threshold)
        if self.runtime == "litert":  # decode and NMS inside the LiteRT model, one image per call
            images = np.asarray(images, np.uint8)
            anchors = self.anchors(images.shape[1], images.shape[2]).numpy()
            scales = np.asarray(output_scale, np.float32).reshape(-1, 2)
            outs = [self._litert.detect(images[b:b + 1], anchors, scales[b:b + 1], score_threshold, iou_threshold)
                    for b in range(images.shape[0])]
            return {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}
        images = tf.convert_to_tensor(images, tf.uint8)
        call = self._graph(images.shape[0] == 1)[0]
        return call(images, tf.convert_to_tensor(output_scale, tf.float32),
                    tf.convert_to_tensor(score_threshold, tf.float32), tf.convert_to_tensor(iou_threshold, tf.float32),
                    self.anchors(images.shape[1], images.shape[2]))

    # ------------------------------------------------------------------ API
    def _prepare(self, image, resize: float | None, label: str = "image"):
        """Image (array or path) → ``(network input, (sx, sy) back to the original's pixels)``.
        Every failure is an :class:`ImageError` / :class:`DetectorError` naming ``label`` (or the
        file)."""
        if isinstance(image, (str, bytes, os.PathLike)):
            image = read_image(os.fsdecode(image), max_pixels=self.max_pixels)
        else:
            try:
                image = to_bgr_uint8(image)
            except (ValueError, TypeError) as exc:
                raise ImageError(f"{label}: {exc}") from None
        h, w = image.shape[:2]
        if resize is None and self.max_size and max(h, w) > self.max_size:
            resize = self.max_size / max(h, w)
        if resize is None or resize == 1.0:
            return image, (1.0, 1.0)
        # the reference's cv2.resize(fx=fy=resize), but no side rounds to 0 pixels (a 1 x 20000
        # strip at --max-size 1000): a clamped side maps back with its own factor
        new_w, new_h = int(round(w * resize)), int(round(h * resize))
        if self.max_pixels is not None and max(new_w, 1) * max(new_h, 1) > self.max_pixels:
            raise ImageError(f"{label}: resize={resize:g} makes {max(new_w, 1)}x{max(new_h, 1)} pixels, over the "
                             f"limit of {self.max_pixels / 1e6:g} megapixels (max_pixels)")
        if new_w >= 1 and new_h >= 1:
            image = cv2.resize(image, None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)
            return image, (1.0 / resize, 1.0 / resize)
        new_w, new_h = max(new_w, 1), max(new_h, 1)
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return image, (w / new_w, h / new_h)

    @staticmethod
    def _check_resize(resize):
        if resize is None:
            return None
        try:
            value = float(resize)
        except (TypeError, ValueError):
            raise DetectorError(f"resize must be a finite number > 0, got {resize!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise DetectorError(f"resize must be a finite number > 0, got {resize!r}")
        return value

    def _threshold(self, score_threshold):
        return self.score_threshold if score_threshold is None else check_fraction("score_threshold", score_threshold)

    def detect(self, image, *, score_threshold: float | None = None, resize: float | None = None) -> Detections:
        """Detect faces in one image: a BGR ``[H, W, 3]`` array (uint8, or grayscale / BGRA /
        16-bit, converted) or a file path. ``resize`` scales the image first (the reference's
        ``resize``, a finite factor > 0); detections are always in the original image's pixels.
        A bad image or argument raises a one-line :class:`RetinaFaceError`."""
        return self.detect_batch([image], score_threshold=score_threshold, resize=resize)[0]

    def align(self, image, *, size: int | tuple[int, int] = 112, score_threshold: float | None = None,
              use_landmarks: bool = True) -> tuple[Detections, AlignedFaces]:
        """Detect the faces of one image (array or path) and return them with their aligned crops
        (:meth:`Detections.align`)."""
        if isinstance(image, (str, bytes, os.PathLike)):
            image = read_image(os.fsdecode(image), max_pixels=self.max_pixels)
        faces = self.detect(image, score_threshold=score_threshold)
        return faces, faces.align(image, size=size, use_landmarks=use_landmarks)

    def detect_batch(self, images: Sequence, *, score_threshold: float | None = None,
                     resize: float | None = None) -> list[Detections]:
        """Detect faces in many images, batched (see ``mixed_sizes``). The first bad image raises
        (use :meth:`iter_detect` to go on past bad images)."""
        resize = self._check_resize(resize)
        score_threshold = self._threshold(score_threshold)
        prepared = [(*self._prepare(im, resize, _label(im, i)), _label(im, i)) for i, im in enumerate(images)]
        results: list[Detections | None] = [None] * len(prepared)
        for i, result in self._batched(enumerate(prepared), score_threshold, lookahead=len(prepared)):
            if isinstance(result, RetinaFaceError):
                raise result
            results[i] = result
        return results

    def iter_detect(self, images: Iterable, *, score_threshold: float | None = None):
        """Yield ``(index, Detections | RetinaFaceError)`` for many images (paths, arrays, or
        an already raised :class:`RetinaFaceError` standing for an unreadable one), batched (see
        ``mixed_sizes``; results may come out of input order, each with its index). A bad item (unreadable file, ``None``, a wrong array, a batch TensorFlow
        cannot run) yields its error and the rest go on; only a bad ``score_threshold`` raises,
        before anything runs."""
        score_threshold = self._threshold(score_threshold)

        def prepared():
            for i, image in enumerate(images):
                if isinstance(image, RetinaFaceError):
                    yield i, image
                    continue
                label = _label(image, i)
                try:
                    yield i, (*self._prepare(image, None, label), label)
                except RetinaFaceError as exc:
                    yield i, exc
                except (ValueError, TypeError, MemoryError, cv2.error) as exc:
                    yield i, ImageError(f"{label}: {type(exc).__name__}: {_one_line(exc)}")

        yield from self._batched(prepared(), score_threshold)

    def _batched(self, items, score_threshold, lookahead: int | None = None):
        """``(index, (image, scale, label) | RetinaFaceError)`` → ``(index, Detections |
        RetinaFaceError)``, at most ``batch_size`` images per run; errors pass through as they
        come.

        Equal sizes only (``mixed_sizes=False``): consecutive images of one size run together.
        Mixed sizes: up to ``lookahead`` images (default ``4 x batch_size``, and at most
        :data:`HELD_PIXELS` pixels) are held, sorted by size, and cut into batches whose padded canvas is at most 1.5x their own pixels.
        """
        if not self.mixed_sizes or self.batch_size == 1:
            yield from self._batched_equal(items, score_threshold)
            return
        window = max(self.batch_size, 4 * self.batch_size if lookahead is None else int(lookahead))
        held: list[tuple[int, np.ndarray, tuple, str]] = []
        for i, item in items:
            if isinstance(item, RetinaFaceError):
                yield i, item
                continue
            held.append((i, *item))
            held_pixels = sum(e[1].shape[0] * e[1].shape[1] for e in held)
            if len(held) >= window or held_pixels >= HELD_PIXELS:
                held.sort(key=lambda e: e[1].shape[:2])
                batch, held = self._take_batch(held)
                yield from self._flush(batch, score_threshold)
        held.sort(key=lambda e: e[1].shape[:2])
        while held:
            batch, held = self._take_batch(held)
            yield from self._flush(batch, score_threshold)

    def _take_batch(self, held):
        """The first batch of ``held`` (sorted by size): images are added while the batch holds
        fewer than ``batch_size`` and its canvas stays at most 1.5x the batch's own pixels."""
        batch = held[:1]
        for entry in held[1:self.batch_size]:
            sizes = [e[1].shape[:2] for e in batch] + [entry[1].shape[:2]]
            h, w = pad_canvas_size(sizes) if len(set(sizes)) > 1 else sizes[0]
            if len(set(sizes)) > 1 and len(sizes) * h * w > 1.5 * sum(a * b for a, b in sizes):
                break
            if len(sizes) * h * w > self.batch_pixels:
                break
            batch.append(entry)
        return batch, held[len(batch):]

    def _batched_equal(self, items, score_threshold):
        pending: list[tuple[int, np.ndarray, tuple, str]] = []
        for i, item in items:
            if isinstance(item, RetinaFaceError):
                yield i, item
                continue
            image, scale, label = item
            if pending and (image.shape != pending[0][1].shape or len(pending) >= self.batch_size
                            or (len(pending) + 1) * image.shape[0] * image.shape[1] > self.batch_pixels):
                yield from self._flush(pending, score_threshold)
                pending = []
            pending.append((i, image, scale, label))
        if pending:
            yield from self._flush(pending, score_threshold)

    def _flush(self, pending, score_threshold):
        try:
            dets = self._run([(im, s) for _, im, s, _ in pending], score_threshold)
        except self._run_errors as exc:
            if len(pending) > 1:  # one image may be the cause (memory): run them one by one
                for item in pending:
                    yield from self._flush([item], score_threshold)
                return
            i, _, _, label = pending[0]
            yield i, DetectorError(f"{label}: detection failed: {type(exc).__name__}: {_one_line(exc)}")
            return
        for (i, _, _, _), det in zip(pending, dets):
            yield i, det

    def _run(self, batch, score_threshold) -> list[Detections]:
        sizes = [im.shape[:2] for im, _ in batch]
        scales = np.array([s for _, s in batch], dtype=np.float32).reshape(-1, 2)
        thr = np.float32(self.score_threshold if score_threshold is None else float(score_threshold))
        if len(set(sizes)) == 1:
            out = self._infer(np.stack([im for im, _ in batch]), scales, thr, np.float32(self.iou_threshold))
        else:
            out = self._infer_padded([im for im, _ in batch], scales, thr)
        boxes, scores, lms, anchors, num = (np.asarray(out[key]) for key in ("boxes", "scores", "landmarks",
                                                                             "anchor_indices", "num_detections"))
        if len(set(sizes)) > 1:
            grid = self._grid(*pad_canvas_size(sizes))
            a = self.config.anchors
            anchors = np.stack([reindex_anchors(anchors[b], grid, size, a.min_sizes, a.steps)
                                for b, size in enumerate(sizes)])
        return [Detections(boxes[b, :n], scores[b, :n], lms[b, :n], anchors[b, :n]) for b, n in enumerate(num)]

    def _infer_padded(self, images, scales, score_threshold) -> dict:
        """Images of different sizes as one padded batch (see ``mixed_sizes``)."""
        canvas = pad_to_canvas(images)
        sizes = np.array([im.shape[:2] for im in images], np.int32)
        grid = self._grid(canvas.shape[1], canvas.shape[2])
        inside = np.stack([anchors_inside(grid, size) for size in sizes])
        call = self._padded_graph()[0]
        return call(tf.constant(canvas), tf.constant(sizes), tf.constant(scales), tf.constant(score_threshold),
                    tf.constant(np.float32(self.iou_threshold)), self.anchors(canvas.shape[1], canvas.shape[2]),
                    tf.constant(inside))


RUNTIMES = ("auto", "tf", "litert", "onnx")
CONVERTED_RUNTIMES = ("litert", "onnx")  # the fused network converted to another runtime's model
RUNTIME_ENV = "RETINAFACE_TF_RUNTIME"   # overrides runtime="auto"
PROBE_SIZE = 640                        # runtime="auto" times each runtime on the bundled photo at this size
LITERT_FILE = "network.tflite"
ONNX_FILE = "detect.onnx"
_RUNTIME_MODULES = {"litert": ("ai_edge_litert",), "onnx": ("onnx", "onnxruntime", "tf2onnx")}


def installed_runtimes() -> list[str]:
    """``"tf"`` and the runtimes whose optional extra is installed (``"litert"``, ``"onnx"``)."""
    return ["tf"] + [name for name, modules in _RUNTIME_MODULES.items()
                     if all(importlib.util.find_spec(m) is not None for m in modules)]


def _versions() -> dict:
    out = {}
    for package in ("retinaface-tf", "tensorflow", "keras", "ai-edge-litert", "onnxruntime", "onnx", "tf2onnx"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


STRIDE = 32  # the coarsest feature stride: canvas sides are rounded up to a multiple of it
HELD_PIXELS = 200_000_000  # mixed sizes: the look-ahead also stops at this many held pixels


def pad_canvas_size(sizes) -> tuple[int, int]:
    """``(H, W)`` of the canvas holding images of ``sizes`` ``[(h, w), ...]`` at its top-left:
    the largest height and width, each rounded up to a multiple of :data:`STRIDE`."""
    h = max(int(s[0]) for s in sizes)
    w = max(int(s[1]) for s in sizes)
    return -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE


def pad_to_canvas(images: Sequence[np.ndarray]) -> np.ndarray:
    """BGR uint8 images of different sizes → ``[B, H, W, 3]``: each at the top-left of a canvas of
    :func:`pad_canvas_size`, the rest the mean colour (0 after the network's mean subtraction)."""
    h, w = pad_canvas_size([im.shape[:2] for im in images])
    canvas = np.empty((len(images), h, w, 3), np.uint8)
    canvas[...] = np.asarray(np.round(BGR_MEAN), np.uint8)
    for b, im in enumerate(images):
        canvas[b, :im.shape[0], :im.shape[1]] = im
    return canvas


def _frozen(concrete) -> tuple:
    """``(call returning the structured outputs, frozen function)``: ``concrete`` with its
    variables turned into constants (no variable read per weight and call)."""
    frozen = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs
    # Called directly, the frozen function (a wrap_function) spends ~1.7 ms of Python per call
    # binding its arguments, more than a small image's whole graph run. A concrete tf.function
    # around it, same input signature, calls the same graph as one op for ~0.1 ms (identical
    # outputs; benchmarks/RESULTS.md).
    spec = [tf.TensorSpec(t.shape, t.dtype) for t in frozen.inputs]
    fast = tf.function(lambda *args: frozen(*args), input_signature=spec, autograph=False).get_concrete_function()
    return (lambda *args: tf.nest.pack_sequence_as(structure, fast(*args))), frozen


def _label(image, index: int) -> str:
    """How an image is named in its error: the path, or ``image <index>`` for an array."""
    if isinstance(image, (str, bytes, os.PathLike)):
        return os.fsdecode(image)
    return f"image {index}"


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__
