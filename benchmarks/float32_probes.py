"""Exact float32 ideas for the LiteRT path, measured and not used (PROFILE.md section 10).

    python benchmarks/float32_probes.py winograd [--size 80] [--cout 64] [--rounds 8]
    python benchmarks/float32_probes.py winograd-network [--sizes 640x640,480x640,1080x1920] [--layers fpn_merge1]
    python benchmarks/float32_probes.py dequantize [--sizes 640x640,1080x1920] [--rounds 8]
    python benchmarks/float32_probes.py compiled-model [--sizes 640x640,480x640,1080x1920] [--rounds 10]
    python benchmarks/float32_probes.py fixed-shape [--sizes 640x640,480x640,1080x1920] [--rounds 12]

``winograd``: a 3x3 stride-1 convolution (``--size`` square map, 64 input channels, ``--cout``
output channels; 80 / 64 is ``fpn_merge1`` at 640x640, 24 % of the network's arithmetic) as
XNNPACK runs it directly, against Winograd F(2x2, 3x3) spelled in TFLite ops (the input
transform as slices and adds, 16 1x1 convolutions, the output transform as adds and a
``DEPTH_TO_SPACE``): 2.25x fewer multiply-accumulates in the convolutions, but every transform
is a pass of its own over memory. Prints both times and the largest difference.

``winograd-network``: the LiteRT network of ``Detector(runtime="litert")``, converted at a fixed
size, against the same network with ``--layers`` (default ``fpn_merge1``) in that form.

``dequantize``: the image's uint8 -> float32 ``CAST`` (LiteRT's built-in kernel; XNNPACK does not
take it) against a ``DEQUANTIZE`` with scale 1 and zero point 0 (XNNPACK's), same values.

``compiled-model``: the LiteRT network of ``Detector(runtime="litert")``, converted at a fixed
size, run by the ``Interpreter`` (what the runtime and the exports use) against LiteRT's
``CompiledModel`` API on its CPU accelerator: with its default XNNPACK flags, with XNNPACK's
Slinky flag (``0x100``, tiles consecutive operators) added to the default ``0x3``, and with
YNNPACK, whose failure to build is reported when the wheel does not have it.

``fixed-shape``: the ``heads`` model of ``Detector(runtime="litert")`` (one conversion for every
size, resized to ``--sizes``) against the same network converted at that fixed size, the
conversion a per-size cache would need.

All: LiteRT, 2 threads, fixed shapes (but the any-size network of ``fixed-shape``), the
variants alternating, best of ``--rounds`` x 10 ``invoke()`` calls each (setting the input and
reading the output are not timed).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_litert import best_invoke, interpreter_run, race  # noqa: E402


def _convert(module, name) -> bytes:
    """``module``'s tf.function ``name`` as a float32 LiteRT flatbuffer (its signature: ``run``)."""
    from retinaface_tf.runtimes.litert import _litert_flatbuffer

    return _litert_flatbuffer(module, {"run": getattr(module, name).get_concrete_function()})


G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])  # F(2x2, 3x3)'s kernel transform


def winograd_conv(x, g, bias):
    """``conv2d(x, g, stride 1, SAME) + bias`` as Winograd F(2x2, 3x3) in TFLite ops, for a
    static ``[1, H, W, C]`` ``x`` (an odd H or W is padded by one more row / column and the
    output cropped). Plain ``SLICE``s and ``RESHAPE``s only: strided or shrinking slices would
    not be delegated to XNNPACK."""
    import tensorflow as tf

    _, h, w, cin = (int(d) for d in x.shape)
    cout = g.shape[-1]
    U = np.einsum("ak,klio,bl->abio", G, g.astype(np.float64), G).astype(np.float32)  # [4, 4, cin, cout]
    n, m = (h + 1) // 2, (w + 1) // 2
    x = tf.pad(x, [[0, 0], [1, 1 + h % 2], [1, 1 + w % 2], [0, 0]])  # [1, 2n + 2, 2m + 2, cin]

    def transform(t, axis):
        """B^T along ``axis`` (1: rows, 2: columns): 4 maps of n (m) tiles."""
        if axis == 1:
            width = 2 * m + 2
            r = tf.reshape(t, [1, n + 1, 2 * width * cin])  # per row pair: the even row, then the odd
            part = lambda start, parity: tf.reshape(  # noqa: E731
                tf.slice(r, [0, start, parity * width * cin], [1, n, width * cin]), [1, n, width, cin])
        else:
            r = tf.reshape(t, [1, n, m + 1, 2 * cin])
            part = lambda start, parity: tf.slice(r, [0, 0, start, parity * cin], [1, n, m, cin])  # noqa: E731
        d0, d1, d2, d3 = part(0, 0), part(0, 1), part(1, 0), part(1, 1)
        return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]

    v = [transform(t, 2) for t in transform(x, 1)]
    p = [[tf.nn.conv2d(v[a][c], U[a, c][None, None], 1, "VALID") for c in range(4)] for a in range(4)]
    p[1][1] = tf.nn.bias_add(p[1][1], bias)  # A^T's middle entries are 1 for all four outputs
    rows = ([p[0][c] + p[1][c] + p[2][c] for c in range(4)], [p[1][c] - p[2][c] - p[3][c] for c in range(4)])
    y = [out for r in rows for out in (r[0] + r[1] + r[2], r[1] - r[2] - r[3])]
    y = tf.nn.depth_to_space(tf.concat(y, -1), 2)
    if h % 2 or w % 2:
        y = tf.slice(y, [0, 0, 0, 0], [1, h, w, cout])
    return y


def winograd(size: int, cout: int, rounds: int) -> dict:
    import tensorflow as tf

    cin = 64
    rng = np.random.default_rng(0)
    g = (rng.standard_normal((3, 3, cin, cout)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    spec = [tf.TensorSpec([1, size, size, cin], tf.float32, name="x")]

    class Probe(tf.Module):
        @tf.function(input_signature=spec)
        def direct(self, x):
            return tf.nn.bias_add(tf.nn.conv2d(x, g, 1, "SAME"), bias)

        @tf.function(input_signature=spec)
        def wino(self, x):
            return winograd_conv(x, g, bias)

    probe = Probe()
    x = rng.standard_normal((1, size, size, cin)).astype(np.float32)
    best, out = best_invoke({k: _convert(probe, k) for k in ("direct", "wino")}, x, rounds, repeats=10)
    out = {k: next(iter(v.values())) for k, v in out.items()}  # one output each
    macs = size * size * 9 * cin * cout
    return {"size": size, "cin": cin, "cout": cout, "direct_ms": best["direct"] * 1e3, "winograd_ms": best["wino"] * 1e3,
            "direct_gflops": 2 * macs / best["direct"] / 1e9,
            "max_abs_diff": float(np.abs(out["direct"] - out["wino"]).max()),
            "max_abs_output": float(np.abs(out["direct"]).max())}


def winograd_network(size, layers: list[str], rounds: int) -> dict:
    """The LiteRT network (``fuse_for_tflite(model, uint8_input=True)``, fixed ``size``) as
    shipped, against the same network with the 3x3 convolutions ``layers`` in Winograd form."""
    import keras
    import tensorflow as tf

    from retinaface_tf.models.fused import FusedConv, fuse_for_tflite
    from retinaface_tf.models.weights import load_model

    model, _ = load_model()
    network = fuse_for_tflite(model, uint8_input=True)
    weights = {name: network.get_layer(name).get_weights() for name in layers}
    for name in layers:
        layer = network.get_layer(name)
        if layer.kernel_size != 3 or layer.strides != 1 or layer.depthwise:
            raise SystemExit(f"{name}: not a full 3x3 stride-1 convolution")

    class WinogradConv(FusedConv):
        def call(self, x):
            if None in x.shape:  # the symbolic clone (any size): the direct form
                return super().call(x)
            y = winograd_conv(x, *weights[self.name])
            if self.activation == "relu":
                return tf.nn.relu(y)
            if self.activation == "leaky_relu":
                return tf.nn.leaky_relu(y, alpha=self.negative_slope)
            return y

    def clone(layer):
        if layer.name in weights:
            return WinogradConv.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    winograd_net = keras.models.clone_model(network, clone_function=clone)
    winograd_net.set_weights(network.get_weights())
    h, w = size
    flatbuffers = {"direct": _fixed_size(network, size), "winograd": _fixed_size(winograd_net, size)}
    x = np.random.RandomState(0).randint(0, 256, (1, h, w, 3)).astype(np.uint8)
    best, outputs = best_invoke(flatbuffers, x, rounds, repeats=10)
    diff = max(float(np.abs(outputs["direct"][k] - outputs["winograd"][k]).max()) for k in outputs["direct"])
    return {"size": f"{h}x{w}", "layers": layers, "direct_ms": best["direct"] * 1e3,
            "winograd_ms": best["winograd"] * 1e3, "max_abs_diff": diff}


def _fixed_size(network, size) -> bytes:
    """``network`` (uint8 image in, as ``fuse_for_tflite(..., uint8_input=True)`` builds it) as a
    float32 LiteRT flatbuffer for one ``[1, H, W, 3]`` image of ``size = (H, W)``."""
    import tensorflow as tf

    from retinaface_tf.runtimes.litert import _NetworkModule

    module = _NetworkModule(network)
    module.run = tf.function(lambda x: network(x, training=False),
                             input_signature=[tf.TensorSpec([1, *size, 3], tf.uint8, name="x")])
    return _convert(module, "run")


def dequantize(size, rounds: int) -> dict:
    import tensorflow as tf
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    h, w = size

    class Cast(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.uint8, name="x")])
        def run(self, x):
            return tf.cast(x, tf.float32)

    cast = _convert(Cast(), "run")
    model = copy.deepcopy(flatbuffer_utils.convert_bytearray_to_object(bytearray(cast)))
    (op,) = model.subgraphs[0].operators
    code = model.operatorCodes[op.opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
    op.builtinOptionsType, op.builtinOptions = 0, None
    quant = schema.QuantizationParametersT()
    quant.scale, quant.zeroPoint = [1.0], [0]
    model.subgraphs[0].tensors[op.inputs[0]].quantization = quant
    deq = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    x = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    best, out = best_invoke({"cast": cast, "dequantize": deq}, x, rounds, repeats=10)
    out = {k: next(iter(v.values())) for k, v in out.items()}  # one output each
    return {"size": f"{h}x{w}", "cast_ms": best["cast"] * 1e3, "dequantize_ms": best["dequantize"] * 1e3,
            "equal": bool(np.array_equal(out["cast"], out["dequantize"]))}


XNNPACK_DEFAULT_FLAGS = 0x3  # QS8 | QU8 (TfLiteXNNPackDelegateOptionsDefault)
XNNPACK_FLAG_SLINKY = 0x100


def compiled_model(size, rounds: int) -> dict:
    """Interpreter against CompiledModel variants on the fixed-size LiteRT network (best ms, and
    each variant's largest difference from the Interpreter's outputs, or why it did not build)."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.options import Options

    from retinaface_tf.models.fused import fuse_for_tflite
    from retinaface_tf.models.weights import load_model

    model, _ = load_model()
    flatbuffer = _fixed_size(fuse_for_tflite(model, uint8_input=True), size)
    x = np.random.RandomState(0).randint(0, 256, (1, *size, 3)).astype(np.uint8)
    runs, result = {}, {"size": "{}x{}".format(*size), "failed": {}, "max_abs_diff": {}}
    runs["interpreter"], reference = interpreter_run(flatbuffer, x)

    variants = {"default flags": CpuOptions(num_threads=2),
                "slinky flag": CpuOptions(num_threads=2, xnnpack_flags=XNNPACK_DEFAULT_FLAGS | XNNPACK_FLAG_SLINKY),
                "ynnpack": CpuOptions(num_threads=2, enable_ynnpack=True)}
    for key, cpu in variants.items():
        try:
            cm = CompiledModel.from_buffer(flatbuffer, options=Options(cpu_options=cpu))
            inputs, outs = cm.create_input_buffers(0), cm.create_output_buffers(0)
        except RuntimeError as error:
            result["failed"][key] = str(error).splitlines()[0]
            continue
        inputs[0].write(x)
        cm.run_by_index(0, inputs, outs)
        names = cm.get_signature_by_index(0)["outputs"]
        diff = 0.0
        for name, buffer in zip(names, outs):
            want = reference[name]
            got = buffer.read(want.size, want.dtype).reshape(want.shape)
            diff = max(diff, float(np.abs(got - want).max()))
        result["max_abs_diff"][key] = diff
        runs[key] = (lambda cm=cm, i=inputs, o=outs: cm.run_by_index(0, i, o))
    result["best_ms"] = {k: v * 1e3 for k, v in race(runs, rounds, repeats=10).items()}
    return result


def fixed_shape(size, rounds: int) -> dict:
    """The any-size LiteRT network (resized to ``size``) against a fixed-size conversion."""
    from retinaface_tf.models.fused import fuse_for_tflite
    from retinaface_tf.runtimes.litert import LiteRTNetwork
    from retinaface_tf.models.weights import load_model

    model, _ = load_model()
    flatbuffers = {"any size": LiteRTNetwork(model, num_threads=2).flatbuffer,
                   "fixed": _fixed_size(fuse_for_tflite(model, input_order="bgr", uint8_input=True), size)}
    x = np.random.RandomState(0).randint(0, 256, (1, *size, 3)).astype(np.uint8)
    best, outputs = best_invoke(flatbuffers, x, rounds, repeats=10)
    any_size, fixed = outputs["any size"], outputs["fixed"]
    diff = max(float(np.abs(any_size[k] - fixed[k]).max()) for k in any_size)
    return {"size": "{}x{}".format(*size), "any_size_ms": best["any size"] * 1e3, "fixed_ms": best["fixed"] * 1e3,
            "max_abs_diff": diff}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    p = sub.add_parser("winograd")
    p.add_argument("--size", type=int, default=80, help="square map side (even)")
    p.add_argument("--cout", type=int, default=64)
    p.add_argument("--rounds", type=int, default=8)
    p = sub.add_parser("winograd-network")
    p.add_argument("--sizes", default="640x640,480x640,1080x1920", help="H x W, comma-separated")
    p.add_argument("--layers", default="fpn_merge1", help="3x3 convolutions to rewrite, comma-separated")
    p.add_argument("--rounds", type=int, default=10)
    p = sub.add_parser("dequantize")
    p.add_argument("--sizes", default="640x640,1080x1920", help="H x W, comma-separated")
    p.add_argument("--rounds", type=int, default=8)
    p = sub.add_parser("compiled-model")
    p.add_argument("--sizes", default="640x640,480x640,1080x1920", help="H x W, comma-separated")
    p.add_argument("--rounds", type=int, default=10)
    p = sub.add_parser("fixed-shape")
    p.add_argument("--sizes", default="640x640,480x640,1080x1920", help="H x W, comma-separated")
    p.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    if args.probe == "winograd":
        if args.size % 2:
            parser.error("--size must be even (2x2 output tiles)")
        r = winograd(args.size, args.cout, args.rounds)
        print(f"3x3 conv {r['cin']}->{r['cout']} at {r['size']}x{r['size']}: direct {r['direct_ms']:.3f} ms "
              f"({r['direct_gflops']:.0f} GFLOP/s), Winograd F(2x2,3x3) in TFLite ops {r['winograd_ms']:.3f} ms; "
              f"max |diff| {r['max_abs_diff']:.2e} (outputs up to {r['max_abs_output']:.2f})")
    elif args.probe == "winograd-network":
        for s in args.sizes.split(","):
            r = winograd_network(tuple(int(v) for v in s.lower().split("x")), args.layers.split(","), args.rounds)
            print(f"{r['size']}: network {r['direct_ms']:.2f} ms, with {','.join(r['layers'])} in Winograd form "
                  f"{r['winograd_ms']:.2f} ms; max |diff| of the heads {r['max_abs_diff']:.2e}")
    elif args.probe == "compiled-model":
        for s in args.sizes.split(","):
            r = compiled_model(tuple(int(v) for v in s.lower().split("x")), args.rounds)
            times = ", ".join(f"{k} {v:.2f} ms" for k, v in r["best_ms"].items())
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_diff"].items())
            print(f"{r['size']}: {times}; max |diff| from the Interpreter: {diffs}")
            for k, why in r["failed"].items():
                print(f"  {k}: did not build: {why}")
    elif args.probe == "fixed-shape":
        for s in args.sizes.split(","):
            r = fixed_shape(tuple(int(v) for v in s.lower().split("x")), args.rounds)
            print(f"{r['size']}: any-size network {r['any_size_ms']:.2f} ms, converted at this size "
                  f"{r['fixed_ms']:.2f} ms; max |diff| {r['max_abs_diff']:.1e}")
    else:
        for s in args.sizes.split(","):
            r = dequantize(tuple(int(v) for v in s.lower().split("x")), args.rounds)
            print(f"{r['size']}: CAST {r['cast_ms']:.3f} ms, DEQUANTIZE {r['dequantize_ms']:.3f} ms, equal: {r['equal']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
