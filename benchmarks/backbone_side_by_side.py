"""Another backbone than mobilenet0.25, side by side with its source's network in PyTorch and
in ONNX Runtime, in one run.

    python benchmarks/backbone_side_by_side.py --network resnet50 [--rounds 3] [--repeats 10] [--json]

``--network``: ``resnet50`` (biubug6's cfg_re50, the fixture ``resnet50_random.pth``),
``mobilenetv2``, ``resnet18`` (yakhyo/retinaface-pytorch, its fixtures). Random-weight fixtures
time exactly as the trained networks (same shapes, same arithmetic).

Each round runs, one after the other and each in its own process, the peer script

    PYTHONPATH=../shared/peer/torchvision_shim /tmp/refenv/bin/python \\
        ../shared/peer/bench_onnx_reference.py PEER_CODE WEIGHTS ONNX_OUT --network NAME

(the source's network exported to ONNX, dynamic H/W, opset 17; ONNX Runtime with every graph
optimisation and that network in PyTorch, both 2 threads, median of 10, ms per image) and this
script as a worker timing ours on the same four cases (640x640, 640x480, 1920x1080 at batch 1,
640x640 at batch 8 per image), median of ``--repeats`` after 2 warm-up calls:

- ``Detector e2e``: ``Detector()``'s default (``runtime="auto"``: the runtime it chose on this
  machine, printed, from the on-disk cache or timed at start), uint8 pixels → detections at
  threshold 0.5 (the peers' figures are the network alone);
- ``Detector e2e tf`` / ``litert`` / ``onnx``: ``Detector(runtime=...)`` (LiteRT and ONNX Runtime
  on 2 threads);
- at 640x640 batch 1, with ``--tflite-dir``: TFLite fp32 and int8 exports end to end.

The order alternates (peer first in odd rounds); each side keeps its best figure per case. The
table gives ours in ms and the ratios ``ONNX Runtime ms / ours ms`` and ``PyTorch ms / ours ms``
(above 1: we are faster). Also the peak resident memory of ``detect`` on a 4000x3000 photo
(``--memory``), measured in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(HERE))

from machine import describe  # noqa: E402
from side_by_side import CASES, alternate, case_key  # noqa: E402

NETWORKS = {  # our config -> (peer code folder, peer network name, fixture)
    "resnet50": ("Pytorch_Retinaface", "resnet50", "resnet50_random.pth"),
    "mobilenetv2": ("yakhyo_retinaface", "mobilenetv2", "yakhyo/yakhyo_mobilenetv2_random.pth"),
    "resnet18": ("yakhyo_retinaface", "resnet18", "yakhyo/yakhyo_resnet18_random.pth"),
}


def fixture(network: str) -> Path:
    return SHARED / "reference" / NETWORKS[network][2]


def tflite_exports(network: str, folder: Path) -> dict:
    """fp32 / int8 end-to-end exports at 640x640 (threshold 0.5), made once into ``folder``."""
    from retinaface_tf.cli import main

    paths = {kind: folder / f"{network}_{kind}_640x640.tflite" for kind in ("fp32", "int8")}
    for kind, path in paths.items():
        if not path.exists():
            args = ["export", "--weights", str(fixture(network)), "--format", "tflite", "--input-size", "640x640",
                    "--output", str(path)]
            if kind == "int8":
                images = sorted((SHARED / "widerface" / "val" / "images").rglob("*.jpg"))[:32]
                args += ["--quantize", "int8", "--calibration-images", *map(str, images)]
            if main(args) != 0:
                raise SystemExit(f"export failed: {args}")
    return paths


def worker(network: str, repeats: int, tflite_dir: str | None) -> dict:
    import cv2
    import numpy as np
    from bench_inference import _time

    from retinaface_tf.fileio import bundled_image
    from retinaface_tf.inference import Detector
    from retinaface_tf.models.weights import load_model

    model, config = load_model(fixture(network))
    default = Detector(model=model, config=config, score_threshold=0.5)  # runtime="auto": chosen here, cached
    print(f"Detector() chose runtime={default.runtime!r} (timings at 640x640: {default.runtime_timings})",
          file=sys.stderr)
    detectors = {"Detector e2e": default,
                 "Detector e2e tf": Detector(model=model, config=config, score_threshold=0.5, runtime="tf"),
                 "Detector e2e litert": Detector(model=model, config=config, score_threshold=0.5, runtime="litert",
                                                 threads=2),
                 "Detector e2e onnx": Detector(model=model, config=config, score_threshold=0.5, runtime="onnx",
                                               threads=2)}
    photo = cv2.imread(str(bundled_image()))
    out = {}
    for (h, w), batch in CASES:
        images = np.stack([cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR)] * batch)
        scale = np.ones((batch, 2), np.float32)
        row = {}
        for name, d in detectors.items():
            row[name] = _time(lambda d=d: [np.asarray(t) for t in d._infer(  # noqa: SLF001
                images, scale, np.float32(0.5), np.float32(d.iou_threshold)).values()], repeats) / batch
        out[case_key((h, w), batch)] = row
    if tflite_dir:
        from retinaface_tf.serving import letterbox, tflite_runner
        batch1, _ = letterbox(photo, (640, 640))
        for kind, path in tflite_exports(network, Path(tflite_dir)).items():
            runner = tflite_runner(path, num_threads=2)
            out[case_key((640, 640), 1)][f"tflite {kind} e2e"] = _time(lambda: runner(images=batch1), repeats)
    return out


def run_peer(network: str, python: str, onnx_dir: Path) -> dict:
    code, name, _ = NETWORKS[network]
    peer = SHARED / "peer"
    env = dict(os.environ, PYTHONPATH=str(peer / "torchvision_shim"))
    cmd = [python, str(peer / "bench_onnx_reference.py"), str(peer / code), str(fixture(network)),
           str(onnx_dir / f"peer_{network}.onnx"), "--network", name]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"peer benchmark failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
    raw = json.loads(res.stdout.strip().splitlines()[-1])
    out = {}
    for (h, w), batch in CASES:
        key = case_key((h, w), batch)
        out[key] = {"onnxruntime": raw[key.replace("infer_ms", "ort_ms")],
                    "pytorch": raw[key.replace("infer_ms", "torch_ms")]}
    return out


def run_ours(network: str, repeats: int, tflite_dir: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--network", network, "--repeats", str(repeats)]
    if tflite_dir:
        cmd += ["--tflite-dir", tflite_dir]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"our benchmark failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def peak_memory(network: str) -> float:
    """Peak resident MB of ``retinaface-tf detect`` on a 4000x3000 photo (the bundled photo
    upscaled), in a process of its own."""
    import tempfile
    code = ("import cv2, resource, sys; from retinaface_tf.cli import main; "
            "rc = main(['detect', sys.argv[1], '--weights', sys.argv[2], '--output', sys.argv[3], '--quiet']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    with tempfile.TemporaryDirectory() as tmp:
        import cv2
        from retinaface_tf.fileio import bundled_image
        big = Path(tmp) / "photo_4000x3000.jpg"
        cv2.imwrite(str(big), cv2.resize(cv2.imread(str(bundled_image())), (4000, 3000)))
        res = subprocess.run([sys.executable, "-c", code, str(big), str(fixture(network)), str(Path(tmp) / "out")],
                             capture_output=True, text=True, cwd=REPO)
        if res.returncode != 0:
            raise SystemExit(f"detect failed:\n{res.stderr[-2000:]}")
        return float(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", choices=sorted(NETWORKS), default="resnet50")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--ref-python", default="/tmp/refenv/bin/python")
    p.add_argument("--onnx-dir", default="/tmp", help="where the peer's ONNX export is kept")
    p.add_argument("--tflite-dir", default=None, help="add TFLite fp32 / int8 rows (exports kept here)")
    p.add_argument("--memory", action="store_true", help="add detect's peak memory on a 4000x3000 photo")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.network, a.repeats, a.tflite_dir)))
        return 0
    if a.tflite_dir:  # exported before the rounds: not timed
        tflite_exports(a.network, Path(a.tflite_dir))
    peer_best, ours_best, history = alternate(
        a.rounds, lambda: run_peer(a.network, a.ref_python, Path(a.onnx_dir)),
        lambda: run_ours(a.network, a.repeats, a.tflite_dir), log=lambda m: print(m, file=sys.stderr))
    table = []
    for (h, w), batch in CASES:
        key = case_key((h, w), batch)
        peer = peer_best[key]
        for variant, ms in ours_best[key].items():
            table.append({"case": f"{w}x{h} b{batch}", "variant": variant, "ours_ms": round(ms, 2),
                          "onnxruntime_ms": round(peer["onnxruntime"], 2), "pytorch_ms": round(peer["pytorch"], 2),
                          "vs_onnxruntime": round(peer["onnxruntime"] / ms, 2),
                          "vs_pytorch": round(peer["pytorch"] / ms, 2)})
    result = {"network": a.network, "machine": describe(), "rounds": a.rounds, "table": table, "history": history}
    if a.memory:
        result["detect_peak_mb_4000x3000"] = round(peak_memory(a.network), 1)
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{a.network} on {result['machine']}, best of {a.rounds} rounds (ms per image; ratio = peer / ours)")
    print("| case | ours | ms | ONNX Runtime ms | ratio | PyTorch ms | ratio |\n| --- | --- | --- | --- | --- | --- | --- |")
    for row in table:
        print(f"| {row['case']} | {row['variant']} | {row['ours_ms']} | {row['onnxruntime_ms']} | "
              f"{row['vs_onnxruntime']} | {row['pytorch_ms']} | {row['vs_pytorch']} |")
    if a.memory:
        print(f"detect peak memory, 4000x3000 photo: {result['detect_peak_mb_4000x3000']} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
