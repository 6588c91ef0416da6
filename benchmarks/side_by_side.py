"""Our CPU inference against the PyTorch reference network, measured side by side.

    python benchmarks/side_by_side.py [--rounds 3] [--repeats 10] [--no-tflite] [--tflite-dir DIR] [--litert]
                                      [--onnx] [--json]

Absolute times on a shared 2-core machine move by 20-40 % from run to run; ratios measured in
the same run do not (``../shared/peer/README.md``). Each round runs, one after the other and
each in its own process (never two at once), the reference's own timing script

    PYTHONPATH=../shared/peer/torchvision_shim /tmp/refenv/bin/python \\
        ../shared/peer/bench_reference.py ../shared/peer/Pytorch_Retinaface --what infer

(its network on random weights, 2 threads, median of 10 after 3 warm-up calls, ms per image) and
this script as a worker (``--worker``) timing ours the same way (``bench_inference._time``:
median of ``--repeats`` after 2 warm-up calls) on the same four cases: 640x640, 640x480 (H x W
480 x 640), 1920x1080 (1080 x 1920) at batch 1, and 640x640 at batch 8 (per image). The order
alternates (reference first in odd rounds, ours first in even ones); each side keeps its best
figure per case over the rounds, and the table gives ``reference ms / ours ms``.

Ours, per case (the bundled photo resized to the case, ms per image):
- ``keras network``: the Keras model on a preprocessed float batch (what the reference's figure is);
- ``Detector e2e``: what ``Detector()`` gives by default (``runtime="auto"``: the runtime it
  chose on this machine, from the on-disk cache or timed at start, is printed), uint8 pixels →
  detections at threshold 0.5; ``Detector e2e tf``: ``runtime="tf"``, the TensorFlow graph (fused);
  ``Detector e2e onnx`` (``--onnx``): ``runtime="onnx"``, ONNX Runtime on 2 threads;
- ``fused network``: the network of ``retinaface_tf.models.fused.fuse_for_inference``;
  ``unfused Detector e2e``: ``Detector(fused=False)``, the trained Keras network in the same graph;
- ``litert network`` (``--litert``): the network as a fixed-size float32 LiteRT model (XNNPACK);
  ``Detector e2e litert`` (``--litert``): ``Detector(runtime="litert", litert_threads=2)``, uint8
  pixels → detections at 0.5 with the network run by LiteRT (converted once for every size),
  timed last in each case;
- at 640x640 batch 1 only, unless ``--no-tflite``: the exported TFLite models end to end (uint8 →
  detections inside the model, threshold 0.5, XNNPACK, 2 threads), float32 and int8, as
  ``export --format tflite`` writes them (``export_tflite``: the network of
  ``serving.tflite_network``, fused, the RGB flip folded into the first convolution); and the same
  two exported from the trained model as it is (``tflite ... unfused e2e``, ``export_tflite(...,
  fuse=False)``, the graph of earlier versions). They are exported once before the rounds into
  ``--tflite-dir`` (default: a temporary folder; existing files there are reused);
- ``saved_model e2e`` (unless ``--no-tflite``): the TF Serving export as ``export --format
  saved_model`` writes it (``serving.saved_model_network``), loaded with ``tf.saved_model.load``,
  its ``serving_default`` signature on uint8 RGB images → detections at 0.5, every case; exported
  once into ``--tflite-dir``/``saved_model/1`` beside the TFLite files.

``--onnx`` adds ONNX Runtime, the engine a CPU deployer would most likely pick instead, on both sides:

- a third side in the same alternating rounds, ``../shared/peer/bench_onnx_reference.py`` (the
  reference network with ``--ref-weights``, the official mobilenet0.25 by default, exported to ONNX
  once into ``--tflite-dir`` as ``reference_mobilenet0.25.onnx`` and reused; ONNX Runtime with 2
  threads and all graph optimisations; its own process, in the reference's venv, which needs
  ``pip install onnx onnxruntime``). Its network-only ms per case is the table's ``ORT ms`` column
  and ``vs ORT`` = ``ORT ms / ours ms``; the PyTorch times it prints in the same process are kept in
  the JSON (``onnx_reference``);
- on our side ``onnx network`` (``retinaface_tf.runtimes.onnx.OnnxNetwork``: the fused network
  converted by tf2onnx, uint8 BGR pixels → head outputs, 2 threads) and ``onnx e2e`` (the model
  ``export --format onnx`` writes, uint8 RGB → detections at 0.5 inside the model, every case),
  exported once into ``--tflite-dir`` beside the TFLite files. Needs the ``onnx`` extra.

Sides run in rotating order (round r starts with side r mod the number of sides).

``--inter-op N`` runs our side with ``TF_NUM_INTEROP_THREADS=N`` (TensorFlow's default is the
core count; 1 may suit the mostly sequential batch-1 graph: measure it on the quiet machine).

Each side's log line and the JSON ``history`` give the CPU that *other* processes used while it
ran (``/proc/stat``'s busy time minus the side's own, in cores) and the time the hypervisor
stole; the table is flagged when either passed 0.1 core during any side. The machine's CPU and
vector extensions head the table: the ratios differ between CPUs (RESULTS.md, runs L and M).

Targets (the issue): Detector e2e >= 3x the reference network in every case; TFLite float32 e2e
>= 3.5x and int8 >= 4.5x at 640x640. Against ONNX Runtime (issue 30): the default Detector >= 1.0x
its network-only time in every case, TFLite int8 >= 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from machine import describe  # noqa: E402

CASES = [((640, 640), 1), ((480, 640), 1), ((1080, 1920), 1), ((640, 640), 8)]  # (H, W), batch: bench_inference's
OTHERS_LIMIT = 0.1  # cores used by other processes (or stolen) during one side before the result is flagged
TARGETS = {"Detector e2e": 3.0, "unfused Detector e2e": 3.0, "Detector e2e litert": 3.0,
           "tflite fp32 e2e": 3.5, "tflite int8 e2e": 4.5,
           "tflite fp32 unfused e2e": 3.5, "tflite int8 unfused e2e": 4.5}
# (label, quantize, fuse): fuse=True is what `export` writes (serving.tflite_network: ReLU fused into the SSH
# branches, nearest 2x as concatenations, heads apart, RGB flip in the first convolution); False = the trained model
ONNX_TARGETS = {"Detector e2e": 1.0, "tflite int8 e2e": 2.0}  # ONNX Runtime ms / ours ms
ONNX_EXPORT = "retinaface_onnx_e2e.onnx"  # export --format onnx, threshold 0.5, RGB
REFERENCE_ONNX = "reference_mobilenet0.25.onnx"  # bench_onnx_reference.py's export of the reference
TFLITE_VARIANTS = (("fp32", "none", True), ("int8", "int8", True),
                   ("fp32 unfused", "none", False), ("int8 unfused", "int8", False))


def case_key(size, batch) -> str:
    """The reference script's key for a case."""
    return f"infer_ms_{size[0]}x{size[1]}_b{batch}"


# ---------------------------------------------------------------------- worker: our side
def _export_api():
    """``(ExportSettings, export_tflite, letterbox, tflite_runner)``."""
    from retinaface_tf.serving import ExportSettings, export_tflite, letterbox, tflite_runner

    return ExportSettings, export_tflite, letterbox, tflite_runner


def tflite_paths(folder: Path) -> dict:
    return {label: folder / f"retinaface_{label.replace(' ', '_')}_640x640.tflite" for label, _, _ in TFLITE_VARIANTS}


def build_tflite(folder: Path) -> dict:
    """Export the end-to-end TFLite models (threshold 0.5) at 640x640 into ``folder`` unless
    they are there; int8 calibrated as ``bench_tflite.py`` calibrates it."""
    from bench_tflite import _calibration_images

    from retinaface_tf.inference import load_model

    ExportSettings, export_tflite, _, _ = _export_api()
    folder.mkdir(parents=True, exist_ok=True)
    paths = tflite_paths(folder)
    model = config = None
    for label, quantize, fuse in TFLITE_VARIANTS:
        if paths[label].exists():
            continue
        if model is None:
            model, config = load_model()
        settings = ExportSettings.from_config(config, score_threshold=0.5)
        export_tflite(model, config, paths[label], settings, input_size=(640, 640), quantize=quantize,
                      calibration_images=_calibration_images(), fuse=fuse)
    if not (folder / "saved_model" / "1" / "saved_model.pb").exists():
        from retinaface_tf.serving import export_saved_model

        if model is None:
            model, config = load_model()
        export_saved_model(model, config, folder / "saved_model", ExportSettings.from_config(config, score_threshold=0.5),
                           version=1)
    return {k: str(v) for k, v in paths.items()}


def build_onnx(folder: Path) -> str:
    """Export the end-to-end ONNX model (threshold 0.5, RGB) into ``folder`` unless it is there."""
    from retinaface_tf.inference import load_model
    from retinaface_tf.serving import ExportSettings, export_onnx

    path = folder / ONNX_EXPORT
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        model, config = load_model()
        export_onnx(model, config, path, ExportSettings.from_config(config, score_threshold=0.5))
    return str(path)


def worker(repeats: int, tflite_dir: str | None, litert: bool, threshold: float = 0.5, onnx: bool = False,
           export_dir: str | None = None) -> dict:
    import cv2
    import numpy as np
    import tensorflow as tf
    from bench_inference import _time

    from retinaface_tf.fileio import bundled_image
    from retinaface_tf.inference import Detector
    from retinaface_tf.models import preprocess
    from retinaface_tf.models.fused import fuse_for_inference
    from retinaface_tf.runtimes.litert import litert_network
    from retinaface_tf.models.weights import load_model

    model, config = load_model()
    fused = fuse_for_inference(model)
    det = Detector(model=model, config=config, score_threshold=threshold)  # the default: runtime="auto"
    print(f"Detector() chose runtime={det.runtime!r} (timings at 640x640: {det.runtime_timings})", file=sys.stderr)
    tf_det = Detector(model=model, config=config, score_threshold=threshold, runtime="tf")
    slow = Detector(model=model, config=config, score_threshold=threshold, fused=False)
    lite = Detector(model=model, config=config, score_threshold=threshold, runtime="litert",
                    litert_threads=2) if litert else None
    nets = {"keras network": tf.function(lambda x: model(x, training=False), reduce_retracing=True),
            "fused network": tf.function(lambda x: fused(x, training=False), reduce_retracing=True)}
    photo = cv2.imread(str(bundled_image()))
    onnx_net = onnx_e2e = onnx_det = None
    if onnx:
        from retinaface_tf.runtimes.onnx import OnnxNetwork
        from retinaface_tf.serving import onnx_runner

        onnx_net = OnnxNetwork(model, num_threads=2)
        onnx_det = Detector(model=model, config=config, score_threshold=threshold, runtime="onnx", threads=2)
        if export_dir and (Path(export_dir) / ONNX_EXPORT).exists():
            onnx_e2e = onnx_runner(Path(export_dir) / ONNX_EXPORT, num_threads=2)
    serving = None
    if tflite_dir and (Path(tflite_dir) / "saved_model" / "1" / "saved_model.pb").exists():
        serving = tf.saved_model.load(str(Path(tflite_dir) / "saved_model" / "1")).signatures["serving_default"]
    out = {}
    for (h, w), batch in CASES:
        images = np.stack([cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR)] * batch)
        x = preprocess(images)
        scale = np.ones((batch, 2), np.float32)
        row = {}
        for name, net in nets.items():
            row[name] = _time(lambda net=net: [t.numpy() for t in net(x).values()], repeats) / batch
        for name, d in (("Detector e2e", det), ("Detector e2e tf", tf_det), ("unfused Detector e2e", slow)) + (
                (("Detector e2e onnx", onnx_det),) if onnx_det is not None else ()):
            row[name] = _time(lambda d=d: [np.asarray(t) for t in d._infer(  # noqa: SLF001
                images, scale, np.float32(threshold), np.float32(d.iou_threshold)).values()], repeats) / batch
        if serving is not None:
            rgb = tf.constant(images[..., ::-1])
            row["saved_model e2e"] = _time(lambda: [v.numpy() for v in serving(images=rgb).values()], repeats) / batch
        if onnx_net is not None:
            row["onnx network"] = _time(lambda: onnx_net(images), repeats) / batch
        if onnx_e2e is not None:
            rgb = np.ascontiguousarray(images[..., ::-1])
            row["onnx e2e"] = _time(lambda: onnx_e2e(images=rgb), repeats) / batch
        if litert:
            run = litert_network(model, (h, w), batch=batch, num_threads=2)
            xn = x.numpy()
            row["litert network"] = _time(lambda: run(xn), repeats) / batch
            row["Detector e2e litert"] = _time(lambda: [np.asarray(t) for t in lite._infer(  # noqa: SLF001
                images, scale, np.float32(threshold), np.float32(lite.iou_threshold)).values()], repeats) / batch
        out[case_key((h, w), batch)] = row
    if tflite_dir:
        _, _, letterbox, tflite_runner = _export_api()
        batch1, _ = letterbox(photo, (640, 640))
        for label, path in tflite_paths(Path(tflite_dir)).items():
            if path.exists():
                runner = tflite_runner(path, num_threads=2)
                out[case_key((640, 640), 1)][f"tflite {label} e2e"] = _time(lambda: runner(images=batch1), repeats)
    return out


# ---------------------------------------------------------------------- driver
def cpu_seconds() -> tuple[float, float, float]:
    """(machine busy, machine steal, our finished children) CPU seconds so far.

    Busy is every core's user + nice + system + irq + softirq time from ``/proc/stat``; steal is
    time the hypervisor gave our virtual cores to someone else. Between two readings around one
    side's run, busy minus the children's own CPU time is what *other* processes used: the
    load average cannot tell that apart from the benchmark's own two threads.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan"), float("nan"), float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (user + nice + system + irq + softirq) / hz, steal / hz, ru.ru_utime + ru.ru_stime


def run_reference(python: str, peer: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(peer / "torchvision_shim"))
    cmd = [python, str(peer / "bench_reference.py"), str(peer / "Pytorch_Retinaface"), "--what", "infer"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"reference benchmark failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_onnx_reference(python: str, peer: Path, weights: Path, onnx_path: Path, threads: int = 2) -> dict:
    """``bench_onnx_reference.py``'s figures as ``{case: {"onnx runtime": ms, "pytorch": ms}}`` (the
    reference network in ONNX Runtime and, in the same process, in PyTorch), plus its versions and
    the largest ONNX Runtime / PyTorch difference it saw."""
    env = dict(os.environ, PYTHONPATH=str(peer / "torchvision_shim"))
    cmd = [python, str(peer / "bench_onnx_reference.py"), str(peer / "Pytorch_Retinaface"), str(weights), str(onnx_path),
           "--threads", str(threads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"ONNX Runtime reference benchmark failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
    raw = json.loads(res.stdout.strip().splitlines()[-1])
    return onnx_reference_cases(raw)


def onnx_reference_cases(raw: dict) -> dict:
    """``bench_onnx_reference.py``'s JSON (``ort_ms_HxW_bB``, ``torch_ms_...``, ``maxdiff_...``,
    versions) → ``{case_key: {"onnx runtime": ms, "pytorch": ms}}`` and ``"max_abs_diff"``."""
    out: dict = {}
    for (h, w), batch in CASES:
        tail = f"{h}x{w}_b{batch}"
        if f"ort_ms_{tail}" in raw:
            out[case_key((h, w), batch)] = {"onnx runtime": float(raw[f"ort_ms_{tail}"]),
                                            "pytorch": float(raw[f"torch_ms_{tail}"])}
    diffs = [v for k, v in raw.items() if k.startswith("maxdiff_")]
    if diffs:
        out["max_abs_diff"] = max(diffs)
    return out


def run_ours(repeats: int, tflite_dir: str | None, litert: bool, inter_op: int | None = None, onnx: bool = False,
             export_dir: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--repeats", str(repeats)]
    if tflite_dir:
        cmd += ["--tflite-dir", tflite_dir]
    if litert:
        cmd.append("--litert")
    if onnx:
        cmd.append("--onnx")
    if export_dir:
        cmd += ["--export-dir", export_dir]
    env = dict(os.environ)
    if inter_op:
        env["TF_NUM_INTEROP_THREADS"] = str(inter_op)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if res.returncode != 0:
        raise SystemExit(f"our benchmark failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _best(acc: dict, new: dict) -> None:
    for case, row in new.items():
        if isinstance(row, dict):
            slot = acc.setdefault(case, {})
            for k, v in row.items():
                slot[k] = min(slot.get(k, float("inf")), v)
        else:
            acc[case] = min(acc.get(case, float("inf")), row)


def alternate_sides(rounds: int, sides: dict, log=print) -> tuple[dict, list]:
    """``rounds`` rounds of every side (``{name: fn}``, each ``fn()`` returns ``{case: ms}`` or
    ``{case: {variant: ms}}``), one after the other, never two at once, in rotating order (round
    ``r`` starts with side ``r`` mod the number of sides: reference, ours in odd rounds and ours,
    reference in even ones for two sides). Returns ``{name: best}`` (each side's lowest figure per
    key) and the history: per side and round, the load average, the cores other processes and the
    hypervisor took, and the result."""
    names = list(sides)
    best: dict = {name: {} for name in names}
    history = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for side in order:
            t = time.perf_counter()
            load = os.getloadavg()[0]
            busy0, steal0, own0 = cpu_seconds()
            res = sides[side]()
            busy1, steal1, own1 = cpu_seconds()
            wall = time.perf_counter() - t
            # cores' worth of CPU that other processes (and the hypervisor) took during this side
            others = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
            steal = (steal1 - steal0) / wall
            _best(best[side], res)
            history.append({"round": r + 1, "side": side, "load_average_1m": round(load, 2),
                            "other_cores": round(others, 3), "steal_cores": round(steal, 3), "result": res})
            log(f"round {r + 1}/{rounds}: {side} done in {wall:.0f} s (other processes {others:.2f} cores, "
                f"steal {steal:.2f}; load average {load:.2f})")
    return best, history


def alternate(rounds: int, reference, ours, log=print) -> tuple[dict, dict, list]:
    """:func:`alternate_sides` of the two sides ``reference`` and ``ours``: ``(reference best,
    ours best, history)``."""
    best, history = alternate_sides(rounds, {"reference": reference, "ours": ours}, log)
    return best["reference"], best["ours"], history


def side_by_side(rounds: int, repeats: int, python: str, peer: Path, tflite_dir: str | None, litert: bool,
                 log=print, inter_op: int | None = None, onnx: bool = False, ref_weights: Path | None = None,
                 export_dir: str | None = None) -> dict:
    sides = {"reference": lambda: run_reference(python, peer),
             "ours": lambda: run_ours(repeats, tflite_dir, litert, inter_op, onnx, export_dir)}
    if onnx:
        onnx_path = Path(export_dir or tempfile.gettempdir()) / REFERENCE_ONNX
        sides["onnx reference"] = lambda: run_onnx_reference(python, peer, ref_weights, onnx_path)
    best, history = alternate_sides(rounds, sides, log)
    return {"machine": describe(), "rounds": rounds, "repeats": repeats, "inter_op": inter_op,
            "reference": best["reference"], "ours": best["ours"], "onnx_reference": best.get("onnx reference"),
            "table": make_table(best["reference"], best["ours"], best.get("onnx reference")), "history": history}


def make_table(ref_best: dict, ours_best: dict, onnx_best: dict | None = None) -> list[dict]:
    """One row per case and variant of ours: ms, the reference's (PyTorch) ms and ratio, and with
    ``onnx_best`` ONNX Runtime's network-only ms and ratio (``ORT ms / ours ms``), each against its
    target."""
    table = []
    for (h, w), batch in CASES:
        key = case_key((h, w), batch)
        ref_ms = ref_best.get(key)
        ort_ms = ((onnx_best or {}).get(key) or {}).get("onnx runtime")
        for variant, ms in ours_best.get(key, {}).items():
            ratio = ref_ms / ms if ref_ms else None
            target = TARGETS.get(variant)
            row = {"case": f"{w}x{h} b{batch}", "variant": variant, "ours_ms": round(ms, 2),
                   "reference_ms": round(ref_ms, 2) if ref_ms else None,
                   "ratio": round(ratio, 2) if ratio else None, "target": target,
                   "met": (ratio >= target) if (ratio and target) else None}
            if onnx_best is not None:
                ort_ratio = ort_ms / ms if ort_ms else None
                ort_target = ONNX_TARGETS.get(variant)
                row.update(onnx_runtime_ms=round(ort_ms, 2) if ort_ms else None,
                           ratio_onnx=round(ort_ratio, 2) if ort_ratio else None, target_onnx=ort_target,
                           met_onnx=(ort_ratio >= ort_target) if (ort_ratio and ort_target) else None)
            table.append(row)
    return table


def print_table(result: dict) -> None:
    print(f"\nbest of {result['rounds']} alternating rounds, ms per image (reference: PyTorch network, random "
          f"weights, 2 threads); ratio = reference / ours\nmachine: {result['machine']}")
    others = max(h["other_cores"] for h in result["history"])
    steal = max(h["steal_cores"] for h in result["history"])
    print(f"busiest side: other processes used {others:.2f} cores, the hypervisor stole {steal:.2f}")
    if others > OTHERS_LIMIT or steal > OTHERS_LIMIT:
        print(f"WARNING: more than {OTHERS_LIMIT} of a core went elsewhere during a side: the ratios are not a "
              "clean comparison (PyTorch degrades far more than TensorFlow under load)")
    onnx = result.get("onnx_reference") is not None
    head = f"{'case':<16}{'variant':<22}{'ours ms':>9}{'ref ms':>9}{'ratio':>8}{'target':>8}  met"
    if onnx:
        head += f"{'ORT ms':>9}{'vs ORT':>8}{'target':>8}  met"
        print("ORT = the reference network exported to ONNX, ONNX Runtime (2 threads, all optimisations), "
              "network only; vs ORT = ORT ms / ours ms")
    print(head)

    def cells(ms, ratio, target, met):
        return (f"{ms:>9.2f}" if ms else f"{'-':>9}") + (f"{ratio:>7.2f}x" if ratio else f"{'-':>8}") + \
            (f"{target:>7.1f}x" if target else f"{'':>8}") + "  " + ("" if met is None else ("yes" if met else "NO "))

    for row in result["table"]:
        line = f"{row['case']:<16}{row['variant']:<22}{row['ours_ms']:>9.2f}" + cells(
            row["reference_ms"], row["ratio"], row["target"], row["met"])
        if onnx:
            line = f"{line:<77}" + cells(row["onnx_runtime_ms"], row["ratio_onnx"], row["target_onnx"], row["met_onnx"])
        print(line.rstrip())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per figure (median), ours")
    p.add_argument("--ref-python", default="/tmp/refenv/bin/python", help="the reference venv's python")
    p.add_argument("--peer", default=str(SHARED / "peer"), help="folder holding bench_reference.py")
    p.add_argument("--no-tflite", action="store_true", help="skip the exported TFLite rows")
    p.add_argument("--tflite-dir", default=None, help="where the TFLite exports are kept / reused")
    p.add_argument("--litert", action="store_true", help="add the LiteRT (XNNPACK) network rows")
    p.add_argument("--onnx", action="store_true",
                   help="add ONNX Runtime: bench_onnx_reference.py as a third side, our ONNX network and export rows")
    p.add_argument("--ref-weights", default=str(SHARED / "reference" / "mobilenet0.25_Final.pth"),
                   help="--onnx: the reference weights bench_onnx_reference.py exports")
    p.add_argument("--export-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--inter-op", type=int, default=None, help="TF_NUM_INTEROP_THREADS for our side")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.repeats, args.tflite_dir, args.litert, onnx=args.onnx, export_dir=args.export_dir)))
        return 0
    peer = Path(args.peer)
    if not (peer / "bench_reference.py").exists() or not Path(args.ref_python).exists():
        p.error(f"the reference needs {peer}/bench_reference.py and {args.ref_python} (see {peer}/README.md)")
    if args.onnx:
        if not (peer / "bench_onnx_reference.py").exists() or not Path(args.ref_weights).exists():
            p.error(f"--onnx needs {peer}/bench_onnx_reference.py and the weights {args.ref_weights}")
        probe = subprocess.run([args.ref_python, "-c", "import onnx, onnxruntime"], capture_output=True)
        if probe.returncode != 0:
            p.error(f"--onnx: the reference's venv lacks onnx / onnxruntime: {args.ref_python} -m pip install onnx "
                    "onnxruntime")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="retinaface-sbs-") as tmp:
        tflite_dir = None
        export_dir = args.tflite_dir or tmp
        if args.onnx:
            t = time.perf_counter()
            code = ("import sys; sys.path[:0] = [%r, %r]; import side_by_side as s; from pathlib import Path; "
                    "s.build_onnx(Path(%r))" % (str(REPO), str(BENCH), export_dir))
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
            if res.returncode != 0:
                raise SystemExit(f"ONNX export failed:\n{res.stderr[-3000:]}")
            log(f"ONNX export ready in {export_dir} ({time.perf_counter() - t:.0f} s)")
        if not args.no_tflite:
            tflite_dir = args.tflite_dir or tmp
            t = time.perf_counter()
            code = ("import sys; sys.path[:0] = [%r, %r]; import side_by_side as s; from pathlib import Path; "
                    "s.build_tflite(Path(%r))" % (str(REPO), str(BENCH), tflite_dir))
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
            if res.returncode != 0:
                raise SystemExit(f"TFLite export failed:\n{res.stderr[-3000:]}")
            log(f"TFLite exports ready in {tflite_dir} ({time.perf_counter() - t:.0f} s)")
        result = side_by_side(args.rounds, args.repeats, args.ref_python, peer, tflite_dir, args.litert, log=log,
                              inter_op=args.inter_op, onnx=args.onnx, ref_weights=Path(args.ref_weights),
                              export_dir=export_dir)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result)
        print("\nJSON:")
        print(json.dumps({k: result[k] for k in ("machine", "reference", "ours", "onnx_reference", "table")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
