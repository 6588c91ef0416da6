"""Where the Detector's CPU time goes: a per-op profile of the end-to-end graph, and A/B timings.

    python benchmarks/profile_inference.py [--size 640x640] [--batch 1 8] [--steps 20]
                                           [--model keras fused] [--top 20] [--json]
    python benchmarks/profile_inference.py --ab 30 [--batch 1 8]      # same-process A/B

Profile: ``tf.profiler`` traces ``--steps`` calls of the Detector's graph (uint8 image →
detections at ``--threshold``, i.e. preprocess + network + decode + NMS, what
``Detector.detect_batch`` runs) on the bundled photo resized to ``--size``. The trace's host
events ``name:OpType`` are the kernels TensorFlow actually ran *after* grappler (fused kernels
show up as ``_MklNativeFusedConv2D`` ...). Each op's time is its **minimum over the steps** (the
least disturbed instance: robust on a loaded machine), the shares below are of the sum of those
minima; the ops of one step partly overlap (two inter-op threads), so the sum exceeds the step's
wall time. Categories: convolution, batch norm (the Mul / AddV2 / Sub / Rsqrt Keras 3's
``BatchNormalization`` is made of), activation, pad, concat / reshape / split, FPN upsample +
add, preprocess (top-level ops on the ``[B, H, W, 3]`` image), NMS, other post-processing
(anchors, top-k, decode), variable reads. "python + copies": the call's wall time (numpy in →
numpy out) minus the graph's run, i.e. dispatch, input conversion and output fetch.

``--model fused`` profiles the Detector's default (fused) path, ``--model keras`` ``Detector(fused=False)``.

A/B (``--ab ROUNDS``): the variants (Keras network, fused network with grouped / native
depthwise, LiteRT XNNPACK network; Detector(fused=False) vs the default Detector end to end) are called in turn,
round after round, in this one process; each keeps its best wall time and its best process CPU
time (all threads). On a loaded machine the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retinaface_tf.fileio import bundled_image  # noqa: E402

CATEGORIES = ("convolution", "batch norm", "activation", "pad", "concat/reshape/split", "fpn upsample+add",
              "preprocess", "nms", "postprocess other", "variable reads", "network other")


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` → ``(height, width)``."""
    w, h = text.lower().split("x")
    return int(h), int(w)


def make_images(size: tuple[int, int], batch: int) -> np.ndarray:
    h, w = size
    photo = cv2.imread(str(bundled_image()))
    return np.stack([cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR)] * batch)


def make_detector(kind: str, model=None, config=None, threshold: float = 0.5):
    from retinaface_tf.inference import Detector
    from retinaface_tf.models.weights import load_model

    if model is None:
        model, config = load_model()
    return Detector(model=model, config=config, score_threshold=threshold, fused=kind == "fused")


def e2e_call(det, images, threshold: float):
    scale = np.ones((len(images), 2), np.float32)

    def call():
        out = det._infer(images, scale, np.float32(threshold), np.float32(det.iou_threshold))  # noqa: SLF001
        return [t.numpy() for t in out.values()]

    return call


# ---------------------------------------------------------------------- trace parsing
def _load_xspace(logdir: str):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    return space


def trace(fn, steps: int, logdir: str):
    """Run ``fn`` ``steps`` times under the profiler. Returns ``(ops, runs, walls)``: per step a
    list of ``(name, type, dur_us)``, the graph run's µs and the call's wall µs."""
    walls = []
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(steps):
            t = time.perf_counter()
            fn()
            walls.append((time.perf_counter() - t) * 1e6)
    finally:
        tf.profiler.experimental.stop()
    space = _load_xspace(logdir)
    plane = next(p for p in space.planes if p.name == "/host:CPU")
    runs, ops = [], []
    for line in plane.lines:
        base = line.timestamp_ns * 1000
        for e in line.events:
            name = plane.event_metadata[e.metadata_id].name
            start = base + e.offset_ps
            if name == "KernelAndDeviceFunc::Run":
                runs.append((start, start + e.duration_ps))
            elif ":" in name and not name.startswith(("Eager", "ExecutorState", "ThreadpoolListener")):
                op, typ = name.rsplit(":", 1)
                if typ not in ("_Arg", "_Retval", "NoOp", "Identity", "Const"):
                    ops.append((start, op, typ, e.duration_ps / 1e6))
    runs.sort()
    per_step = [[] for _ in runs]
    for start, op, typ, dur in ops:
        for i, (r0, r1) in enumerate(runs):
            if r0 <= start <= r1:
                per_step[i].append((op, typ, dur))
                break
    # the inputs' conversions (_EagerConst) are function runs too: keep the runs that ran the graph
    keep = [i for i, step in enumerate(per_step) if len(step) > 10]
    if len(keep) != len(walls):
        raise RuntimeError(f"found {len(keep)} graph runs in the trace for {len(walls)} calls")
    return [per_step[i] for i in keep], [(runs[i][1] - runs[i][0]) / 1e6 for i in keep], walls


def preprocess_ops(graph, network_scope: str) -> set[str]:
    """Names of the graph's ops outside the network that the network's ops depend on (the
    preprocessing of the image)."""
    stack = [t.op for op in graph.get_operations() if op.name.startswith(network_scope)
             for t in op.inputs if not t.op.name.startswith(network_scope)]
    seen: set[str] = set()
    while stack:
        op = stack.pop()
        if op.name not in seen:
            seen.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return seen


def categorize(op: str, typ: str, preprocess: set, network_scope: str) -> str:
    in_net = op.startswith(network_scope)
    if "Conv2D" in typ or "Depthwise" in typ:
        return "convolution"
    if typ == "ReadVariableOp":
        return "variable reads"
    if typ in ("LeakyRelu", "Relu", "Relu6", "Elu"):
        return "activation"
    if typ in ("Pad", "PadV2", "MirrorPad"):
        return "pad"
    if in_net and ("batchnorm" in op or "_bn" in op):
        return "batch norm"
    if in_net and typ in ("ConcatV2", "Reshape", "Split", "SplitV", "StridedSlice", "Slice"):
        return "concat/reshape/split"
    if in_net and ("fpn_up" in op or "fpn_add" in op or typ == "ResizeNearestNeighbor"):
        return "fpn upsample+add"
    if in_net:
        return "network other"
    if op in preprocess:
        return "preprocess"
    if "NonMaxSuppression" in typ or op.startswith("map/"):
        return "nms"
    return "postprocess other"


def profile(kind: str, size, batch: int, steps: int, threshold: float, model=None, config=None) -> dict:
    det = make_detector(kind, model, config, threshold)
    images = make_images(size, batch)
    call = e2e_call(det, images, threshold)
    for _ in range(3):
        call()
    with tempfile.TemporaryDirectory(prefix="retinaface-profile-") as logdir:
        per_step, runs, walls = trace(call, steps, logdir)
    scope = det.network.name  # Keras names the call scope "<name>_1/..."
    graph = det.graph(batch == 1)
    pre = preprocess_ops(graph, scope)
    mins: dict[tuple, float] = {}
    counts = collections.Counter()
    for step in per_step:
        seen = collections.Counter()
        for op, typ, dur in step:
            op = op.removeprefix("PartitionedCall/")  # the Detector calls its frozen graph through a wrapper
            seen[(op, typ)] += 1
            key = (op, typ, seen[(op, typ)])  # while-loop bodies repeat a name
            mins[key] = min(mins.get(key, float("inf")), dur)
            counts[key] += 1
    full = [k for k in mins if counts[k] == len(per_step)] or list(mins)
    total = sum(mins[k] for k in full)
    by_cat = collections.Counter()
    by_type = collections.Counter()
    n_type = collections.Counter()
    cat_of = {}
    for k in full:
        op, typ, _ = k
        cat_of[k] = categorize(op, typ, pre, scope)
        by_cat[cat_of[k]] += mins[k]
        by_type[typ] += mins[k]
        n_type[typ] += 1
    overhead = [w - r for w, r in zip(walls, runs)]
    top_ops = sorted(full, key=lambda k: -mins[k])
    h, w = size
    return {
        "model": kind, "height": h, "width": w, "batch": batch, "steps": len(per_step),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "wall_ms_per_call": {"min": round(min(walls) / 1e3, 2), "median": round(statistics.median(walls) / 1e3, 2)},
        "graph_run_ms": {"min": round(min(runs) / 1e3, 2), "median": round(statistics.median(runs) / 1e3, 2)},
        "python_and_copies_ms": {"min": round(min(overhead) / 1e3, 3),
                                 "median": round(statistics.median(overhead) / 1e3, 3)},
        "sum_of_op_minima_ms": round(total / 1e3, 2),
        "ops_per_step": len(full),
        "categories_pct": {c: round(100 * by_cat[c] / total, 1) for c in CATEGORIES if by_cat[c]},
        "categories_ms": {c: round(by_cat[c] / 1e3, 3) for c in CATEGORIES if by_cat[c]},
        "op_types": [{"type": t, "ms": round(v / 1e3, 3), "pct": round(100 * v / total, 1), "count": n_type[t]}
                     for t, v in by_type.most_common()],
        "top_ops": [{"op": k[0], "type": k[1], "category": cat_of[k], "ms": round(mins[k] / 1e3, 3),
                     "pct": round(100 * mins[k] / total, 1)} for k in top_ops[:40]],
        "top_outside_network": [{"op": k[0], "type": k[1], "category": cat_of[k], "ms": round(mins[k] / 1e3, 3),
                                 "pct": round(100 * mins[k] / total, 1)}
                                for k in top_ops if not k[0].startswith(scope)][:15],
    }


def print_profile(r: dict, top: int) -> None:
    print(f"\n## {r['model']} Detector, {r['width']}x{r['height']} batch {r['batch']}, {r['steps']} traced steps, "
          f"load average {r['load_average']}")
    print(f"call wall min {r['wall_ms_per_call']['min']} ms (median {r['wall_ms_per_call']['median']}), graph run "
          f"min {r['graph_run_ms']['min']} ms, python + copies min {r['python_and_copies_ms']['min']} ms; "
          f"sum of per-op minima {r['sum_of_op_minima_ms']} ms over {r['ops_per_step']} ops")
    print(f"{'category':<24}{'ms':>9}{'share':>8}")
    for c, pct in sorted(r["categories_pct"].items(), key=lambda kv: -kv[1]):
        print(f"{c:<24}{r['categories_ms'][c]:>9.3f}{pct:>7.1f}%")
    print(f"{'op type':<36}{'ms':>9}{'share':>8}{'count':>7}")
    for t in r["op_types"][:top]:
        print(f"{t['type']:<36}{t['ms']:>9.3f}{t['pct']:>7.1f}%{t['count']:>7}")
    print("top ops:")
    for o in r["top_ops"][:top]:
        print(f"  {o['ms']:>8.3f} ms {o['pct']:>5.1f}%  {o['type']:<32} {o['op']}")
    print("top ops outside the network (pre- / post-processing):")
    for o in r["top_outside_network"][:top]:
        print(f"  {o['ms']:>8.3f} ms {o['pct']:>5.1f}%  {o['type']:<24} {o['category']:<18} {o['op']}")


# ---------------------------------------------------------------------- A/B
def ab(fns: dict, rounds: int, per: int = 1) -> dict:
    """Call each of ``fns`` in turn, ``rounds`` times; per function its best wall and best
    process-CPU milliseconds (divided by ``per``, e.g. the batch)."""
    for fn in fns.values():
        fn()
        fn()
    best = {k: [float("inf"), float("inf")] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            best[k][0] = min(best[k][0], time.perf_counter() - t)
            best[k][1] = min(best[k][1], time.process_time() - c)
    return {k: {"wall_ms": round(w * 1e3 / per, 2), "cpu_ms": round(c * 1e3 / per, 2)} for k, (w, c) in best.items()}


def ab_variants(size, batch: int, rounds: int, threshold: float, litert: bool = True) -> dict:
    from retinaface_tf.models.weights import load_model
    from retinaface_tf.models import preprocess
    from retinaface_tf.models.fused import fuse_for_inference
    from retinaface_tf.runtimes.litert import litert_network

    model, config = load_model()
    images = make_images(size, batch)
    x = preprocess(images)
    fused = fuse_for_inference(model)
    native = fuse_for_inference(model, depthwise="native")

    def net(m):
        f = tf.function(lambda t: m(t, training=False), reduce_retracing=True)
        return lambda: [v.numpy() for v in f(x).values()]

    fns = {"network keras": net(model), "network fused": net(fused), "network fused (native depthwise)": net(native)}
    if litert:
        run = litert_network(model, size, batch=batch, num_threads=2)
        xn = x.numpy()
        fns["network litert xnnpack"] = lambda: run(xn)
    fns["e2e Detector(fused=False)"] = e2e_call(make_detector("keras", model, config, threshold), images, threshold)
    fns["e2e Detector"] = e2e_call(make_detector("fused", model, config, threshold), images, threshold)
    res = ab(fns, rounds, per=batch)
    h, w = size
    return {"height": h, "width": w, "batch": batch, "rounds": rounds,
            "load_average": [round(v, 2) for v in os.getloadavg()], "ms_per_image": res}


def print_ab(r: dict) -> None:
    print(f"\n## A/B {r['width']}x{r['height']} batch {r['batch']}, best of {r['rounds']} alternating rounds, "
          f"load average {r['load_average']}")
    res = r["ms_per_image"]
    base_net, base_e2e = res["network keras"], res["e2e Detector"]
    print(f"{'variant':<36}{'wall ms/img':>12}{'cpu ms/img':>12}{'wall x':>8}{'cpu x':>8}")
    for k, v in res.items():
        base = base_e2e if k.startswith("e2e") else base_net
        print(f"{k:<36}{v['wall_ms']:>12.2f}{v['cpu_ms']:>12.2f}{base['wall_ms'] / v['wall_ms']:>8.2f}"
              f"{base['cpu_ms'] / v['cpu_ms']:>8.2f}")


# ---------------------------------------------------------------------- TFLite int8 vs float32
# (name, network, quantize, layers kept float in int8: None = the export's INT8_FLOAT_LAYERS).
# network: "original" (the Keras model as trained), "fused" (what export writes: fuse_for_tflite, ReLU fused
# into the SSH branches, nearest 2x upsampling as concatenations, native depthwise, heads apart, RGB flip folded).
TFLITE_VARIANTS = (
    ("fp32", "original", "none", None),
    ("fp32 fused", "fused", "none", None),
    ("int8 (stage1 float)", "original", "int8", None),
    ("int8 all", "original", "int8", ()),
    ("int8 fused (stage1 float)", "fused", "int8", None),
    ("int8 fused (stage1_0-1 float)", "fused", "int8", ("stage1_0", "stage1_1_")),
    ("int8 fused (stage1_0-3 float)", "fused", "int8", ("stage1_0", "stage1_1_", "stage1_2_", "stage1_3_")),
    ("int8 fused all", "fused", "int8", ()),
)


def _export_module():
    from retinaface_tf import serving

    return serving


def export_variant(folder: Path, name: str, network: str, quantize: str, keep_float, *, size=(640, 640),
                   score_threshold: float = 0.5, raw: bool = False, models=None) -> Path:
    """One TFLite export of :data:`TFLITE_VARIANTS` (reused when the file exists). ``fused``: what
    ``export`` writes (``serving.tflite_network``); ``original``: ``export_tflite(..., fuse=False)``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_tflite import _calibration_images

    mod = _export_module()
    h, w = size
    tag = name.replace(" ", "_").replace("(", "").replace(")", "").replace("-", "")
    path = folder / f"{tag}_{w}x{h}_thr{score_threshold:g}{'_raw' if raw else ''}.tflite"
    if path.exists():
        return path
    model, config = models
    settings = mod.ExportSettings.from_config(config, score_threshold=score_threshold)
    extra = {} if keep_float is None else {"keep_float": tuple(keep_float)}
    mod.export_tflite(model, config, path, settings, input_size=(w, h), quantize=quantize, raw=raw,
                      calibration_images=_calibration_images(100), fuse=network == "fused", **extra)
    return path


def tflite_structure(path: Path, threads: int = 2) -> dict:
    """Which ops XNNPACK runs (the nodes each DELEGATE node replaced, found by walking back from
    its outputs to its inputs), the delegated partitions, and the big tensors left to TFLite's
    built-in kernels."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()  # noqa: SLF001  (what tf.lite's QuantizationDebugger uses)
    producer = {o: op["index"] for op in ops if op["op_name"] != "DELEGATE" for o in op["outputs"] if o >= 0}
    delegated = {}
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    for d in partitions:
        inputs = {i for i in d["inputs"] if i >= 0}
        stack, seen = list(d["outputs"]), set()
        while stack:
            t = stack.pop()
            if t in inputs or t not in producer or producer[t] in seen:
                continue
            seen.add(producer[t])
            stack.extend(i for i in ops[producer[t]]["inputs"] if i >= 0)
        delegated.update({n: d["index"] for n in seen})
    counts = collections.Counter()
    builtin_big = []
    for op in ops:
        if op["op_name"] == "DELEGATE":
            continue
        outs = [i for i in op["outputs"] if i >= 0]
        t = tensors[outs[0]] if outs else None
        dtype = t["dtype"].__name__ if t is not None else "?"
        where = "xnnpack" if op["index"] in delegated else "builtin"
        counts[f"{op['op_name']} {dtype} {where}"] += 1
        if where == "builtin" and t is not None and int(np.prod(t["shape"])) >= 10000:
            builtin_big.append(f"{op['op_name']} {dtype} {list(map(int, t['shape']))} {t['name'][:60]}")
    return {"partitions": len(partitions), "ops": dict(sorted(counts.items())), "builtin_big_ops": builtin_big}


def tflite_experiments(rounds: int, folder: Path, size=(640, 640), threads: int = 2, variants=TFLITE_VARIANTS,
                       ap_images: int = 0) -> dict:
    """Export the variants, describe them, time them A/B (uint8 image → detections, threshold 0.5),
    and with ``ap_images`` score WIDER val AP on the first N val images (exports at the
    evaluation settings, as ``scripts/eval_tflite.py``)."""
    from retinaface_tf.models.weights import load_model

    mod = _export_module()
    models = load_model()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: export_variant(folder, name, net, q, keep, size=size, models=models)
             for name, net, q, keep in variants}
    structure = {name: tflite_structure(path, threads) for name, path in paths.items()}
    batch, _ = mod.letterbox(cv2.imread(str(bundled_image())), size[::-1])  # size is (height, width) here
    runners = {name: mod.tflite_runner(path, num_threads=threads) for name, path in paths.items()}
    timings = ab({name: (lambda r=r: r(images=batch)) for name, r in runners.items()}, rounds)
    result = {"size": list(size), "threads": threads, "rounds": rounds,
              "load_average": [round(v, 2) for v in os.getloadavg()], "timings": timings, "structure": structure,
              "files": {k: str(v) for k, v in paths.items()}}
    if ap_images:
        result["ap"] = tflite_ap(folder, ap_images, size, threads, variants, models)
    return result


def tflite_ap(folder: Path, limit: int, size, threads: int, variants, models) -> dict:
    """WIDER val AP (easy / medium / hard, %) of each variant on the first ``limit`` val images,
    letterboxed to ``size``, at the reference's evaluation settings (score > 0.02)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from eval_tflite import predict_tflite

    from retinaface_tf.evaluation.widerface import evaluate_predictions, list_images, load_ground_truth

    shared = Path(os.environ.get("RETINAFACE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "widerface"
    gt = load_ground_truth(shared / "ground_truth")
    images = dict(list(list_images(shared / "val" / "images", gt).items())[:limit])
    out = {}
    for name, net, q, keep in variants:
        path = export_variant(folder, name, net, q, keep, size=size, score_threshold=0.02, models=models)
        preds, _ = predict_tflite(path, images, size, num_threads=threads)
        r = evaluate_predictions(preds, gt).to_dict()
        out[name] = {k: round(100 * r[k], 2) for k in ("easy", "medium", "hard")} | {"images": r.get("images")}
    return out


def print_tflite(r: dict) -> None:
    print(f"\n## TFLite {r['size'][1]}x{r['size'][0]}, {r['threads']} threads, uint8 → detections (threshold 0.5), "
          f"best of {r['rounds']} alternating rounds, load average {r['load_average']}")
    base = r["timings"][next(iter(r["timings"]))]
    print(f"{'variant':<28}{'wall ms':>9}{'cpu ms':>9}{'wall x':>8}{'cpu x':>8}{'partitions':>12}")
    for name, t in r["timings"].items():
        print(f"{name:<28}{t['wall_ms']:>9.2f}{t['cpu_ms']:>9.2f}{base['wall_ms'] / t['wall_ms']:>8.2f}"
              f"{base['cpu_ms'] / t['cpu_ms']:>8.2f}{r['structure'][name]['partitions']:>12}")
    for name, st in r["structure"].items():
        print(f"\n{name}: {st['partitions']} XNNPACK partitions; ops (type dtype where: count):")
        print("   " + ", ".join(f"{k}: {v}" for k, v in st["ops"].items()))
        print("   left to built-in kernels (>= 10k elements): " + ("; ".join(st["builtin_big_ops"]) or "none"))
    if "ap" in r:
        print(f"\nWIDER val AP (%), first {next(iter(r['ap'].values())).get('images')} images:")
        for name, a in r["ap"].items():
            print(f"  {name:<28} easy {a['easy']:6.2f}  medium {a['medium']:6.2f}  hard {a['hard']:6.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x640", help="WIDTHxHEIGHT (default 640x640)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=20, help="traced calls per profile")
    p.add_argument("--model", nargs="+", default=["keras", "fused"], choices=["keras", "fused"])
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--ab", type=int, default=0, metavar="ROUNDS", help="A/B timings instead of the profile")
    p.add_argument("--no-litert", action="store_true", help="A/B without the LiteRT network")
    p.add_argument("--tflite", type=int, default=0, metavar="ROUNDS",
                   help="TFLite float32 / int8 variants: structure and A/B timings")
    p.add_argument("--tflite-dir", default="/tmp/retinaface-tflite-variants", help="where the variants are kept")
    p.add_argument("--ap", type=int, default=0, metavar="IMAGES", help="with --tflite: WIDER val AP on N images")
    p.add_argument("--variants", default=None,
                   help="with --tflite: comma-separated names of TFLITE_VARIANTS (default: all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    size = parse_size(args.size)
    results = []
    if args.tflite:
        variants = TFLITE_VARIANTS
        if args.variants:
            wanted = [v.strip() for v in args.variants.split(",")]
            variants = tuple(v for v in TFLITE_VARIANTS if v[0] in wanted)
            if len(variants) != len(wanted):
                p.error(f"--variants: known are {', '.join(v[0] for v in TFLITE_VARIANTS)}")
        r = tflite_experiments(args.tflite, Path(args.tflite_dir), size, variants=variants, ap_images=args.ap)
        print(json.dumps(r, indent=1)) if args.json else print_tflite(r)
        return 0
    if args.ab:
        for batch in args.batch:
            r = ab_variants(size, batch, args.ab, args.threshold, litert=not args.no_litert)
            results.append(r)
            if not args.json:
                print_ab(r)
    else:
        from retinaface_tf.models.weights import load_model

        model, config = load_model()
        for kind in args.model:
            for batch in args.batch:
                r = profile(kind, size, batch, args.steps, args.threshold, model, config)
                results.append(r)
                if not args.json:
                    print_profile(r, args.top)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
