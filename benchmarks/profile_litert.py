"""Where the LiteRT float32 network's time goes, section by section, and its arithmetic rate.

    python benchmarks/profile_litert.py [--sizes 640x640,1080x1920] [--rounds 6] [--repeats 5] [--json]

The network ``Detector(runtime="litert")`` runs (``fuse_for_tflite(model, uint8_input=True)``,
XNNPACK, 2 threads) is cut after each section: the image's mean border, its cast and the first
convolution (``stage1_0``); the rest of MobileNet stage 1 (8-64 channels at strides 2-8); stage
2; stage 3; the FPN; the SSH modules; the heads. Every prefix (image -> that section's output)
is converted at a fixed size and timed, all prefixes alternating, best of ``--rounds`` x
``--repeats`` ``invoke()`` calls each; a section's time is its prefix's minus the previous one's
(a difference of two minima: a section of ~0.2 ms or less can come out near zero or negative).
Each section's multiply-accumulates are counted from its fused layers
(``arithmetic_rate.network_macs``), so its float32 rate is printed beside the rate of a
2048^3 ``tf.matmul`` in the same process (the 2 cores' practical peak).

Printed per size: ms, GMAC and GFLOP/s per section, and what the whole network would take if
stage 1 ran at the rate of the rest (the upper bound on what any float32 kernel work on the
small-channel layers could buy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# section name -> the layer (or layers) whose output ends it
SECTIONS = (
    ("border + cast + stage1_0", ("stage1_0",)),
    ("stage 1 (rest)", ("stage1_5_pw",)),
    ("stage 2", ("stage2_5_pw",)),
    ("stage 3", ("stage3_1_pw",)),
    ("FPN", ("fpn_merge1", "fpn_merge2", "fpn_output3")),
    ("SSH", ("ssh1_concat", "ssh2_concat", "ssh3_concat")),
    ("heads", None),  # the whole network
)


def interpreter_run(flatbuffer: bytes, image):
    """A float32 LiteRT flatbuffer (one signature, one input) ready on ``image``, 2 threads (an
    any-size input is resized to ``image``'s shape): its ``invoke`` and its outputs (output name
    -> array) from a first call."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer, num_threads=2)
    (name,) = interpreter.get_signature_list()
    runner = interpreter.get_signature_runner(name)  # only for its tensors' names and indices
    (arg,) = runner.get_input_details().values()
    returned = {out: d["index"] for out, d in runner.get_output_details().items()}
    del runner  # it holds views into the interpreter, which invoke() refuses
    interpreter.resize_tensor_input(arg["index"], list(image.shape))  # a no-op at a fixed size
    interpreter.allocate_tensors()
    interpreter.set_tensor(arg["index"], image)  # every invoke() below reuses it
    interpreter.invoke()
    return interpreter.invoke, {out: interpreter.get_tensor(index) for out, index in returned.items()}


def race(runs: dict, rounds: int, repeats: int) -> dict:
    """Each zero-argument callable's best seconds over ``rounds`` x ``repeats`` calls, all of them
    alternating by round."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for key, run in runs.items():
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                best[key] = min(best[key], time.perf_counter() - start)
    return best


def best_invoke(flatbuffers: dict, image, rounds: int, repeats: int) -> tuple[dict, dict]:
    """Each float32 LiteRT flatbuffer (one signature, one input) on ``image``, 2 threads: its best
    seconds of ``invoke()`` over ``rounds`` x ``repeats`` calls, all flatbuffers alternating by
    round (setting the input and reading the outputs are not timed), and its outputs (output
    name -> array)."""
    runs, outputs = {}, {}
    for key, flatbuffer in flatbuffers.items():
        runs[key], outputs[key] = interpreter_run(flatbuffer, image)
    return race(runs, rounds, repeats), outputs


def _prefixes(network, size):
    """Per section, the network from its uint8 image input up to that section's output as a
    float32 LiteRT flatbuffer for a fixed ``[1, H, W, 3]`` input, and its multiply-accumulates."""
    import keras
    import tensorflow as tf

    from arithmetic_rate import network_macs
    from retinaface_tf.runtimes.litert import _litert_flatbuffer, _NetworkModule

    h, w = size
    out = {}
    for name, ends in SECTIONS:
        outputs = network.outputs if ends is None else [network.get_layer(end).output for end in ends]
        prefix = keras.Model(network.inputs, outputs)
        module = _NetworkModule(prefix)
        module.serve = tf.function(_call(prefix), input_signature=[tf.TensorSpec([1, h, w, 3], tf.uint8)])
        flatbuffer = _litert_flatbuffer(module, {"serving_default": module.serve.get_concrete_function()})
        out[name] = (flatbuffer, network_macs(prefix, size))
    return out


def _call(model):
    return lambda image: model([image], training=False)


def profile(sizes, rounds: int, repeats: int) -> dict:
    import numpy as np

    from arithmetic_rate import matmul_ms
    from retinaface_tf.models.fused import fuse_for_tflite
    from retinaface_tf.models.weights import load_model

    model, _ = load_model()
    network = fuse_for_tflite(model, uint8_input=True)
    result = {"sizes": {}}
    for size in sizes:
        prefixes = _prefixes(network, size)
        image = np.random.RandomState(0).randint(0, 256, (1, *size, 3)).astype(np.uint8)
        best, _ = best_invoke({name: fb for name, (fb, _) in prefixes.items()}, image, rounds, repeats)
        rows, prev_ms, prev_mac = [], 0.0, 0
        for name, (_, macs) in prefixes.items():
            ms, gmac = best[name] * 1e3 - prev_ms, (macs - prev_mac) / 1e9
            rows.append({"section": name, "ms": ms, "gmac": gmac, "gflops": 2 * gmac / ms * 1e3 if ms > 0 else None})
            prev_ms, prev_mac = best[name] * 1e3, macs
        stage1 = rows[:2]
        rest = rows[2:]
        rest_rate = 2 * sum(r["gmac"] for r in rest) / sum(r["ms"] for r in rest) * 1e3
        stage1_at_rest_rate = 2 * sum(r["gmac"] for r in stage1) / rest_rate * 1e3
        result["sizes"][f"{size[0]}x{size[1]}"] = {
            "sections": rows, "total_ms": prev_ms, "total_gmac": prev_mac / 1e9, "rest_gflops": rest_rate,
            "total_if_stage1_at_rest_rate_ms": stage1_at_rest_rate + sum(r["ms"] for r in rest)}
    result["matmul_gflops"] = 2 * 2048 ** 3 / matmul_ms() / 1e6
    return result


def _report(result) -> str:
    lines = [f"2048^3 float32 matmul, same process: {result['matmul_gflops']:.1f} GFLOP/s", ""]
    for size, row in result["sizes"].items():
        lines += [f"## {size} (H x W), LiteRT float32, 2 threads, best prefix times",
                  "| section | ms | GMAC | GFLOP/s |", "| --- | --- | --- | --- |"]
        for r in row["sections"]:
            rate = "" if r["gflops"] is None else f"{r['gflops']:.0f}"
            lines.append(f"| {r['section']} | {r['ms']:.2f} | {r['gmac']:.4f} | {rate} |")
        lines += [f"| whole network | {row['total_ms']:.2f} | {row['total_gmac']:.4f} | "
                  f"{2 * row['total_gmac'] / row['total_ms'] * 1e3:.0f} |", "",
                  f"stages 2-3, FPN, SSH, heads: {row['rest_gflops']:.0f} GFLOP/s; the whole network with stage 1 at "
                  f"that rate: {row['total_if_stage1_at_rest_rate_ms']:.2f} ms", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x640,1080x1920", help="H x W, comma-separated")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    result = profile(sizes, args.rounds, args.repeats)
    print(_report(result))
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
