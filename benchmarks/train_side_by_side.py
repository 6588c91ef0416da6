"""The training step side by side with the reference's, in alternating rounds (issue 30 §4).

    python benchmarks/train_side_by_side.py [--rounds 2] [--steps 6] [--old-tree DIR] [--json]

Sides, each a fresh process per round, best images/s per side over the rounds:

- ``reference``: ``../shared/peer/bench_reference.py --what train`` (mobilenet0.25, batch 16,
  640x640, random batch, SGD step; PyTorch 2 threads) in the reference venv (``--peer-python``);
- ``ours``: ``bench_train.py`` as ``retinaface-tf train`` runs (oneDNN, BFC allocator), fixed
  batch (the "memory" row: network + MultiBoxLoss + TorchSGD);
- ``ours, TensorFlow defaults``: the same with TensorFlow's own settings;
- with ``--old-tree DIR`` (a checkout of an earlier commit, e.g. ``git worktree add DIR <commit>``):
  that tree's ``bench_train.py`` with TensorFlow's defaults and with the training settings, to
  tell a change of ours from a change of the machine.
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
PEER = REPO.parent / "shared" / "peer"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from machine import cpu_name  # noqa: E402
from retinaface_tf.environment import TRAINING  # noqa: E402

CLEAN = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC")


def _env(extra: dict | None = None, pythonpath: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(extra or {})
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _last_json(text: str) -> dict:
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.find("{"):])


def run_ours(bench: Path, steps: int, env: dict, extra_args=()) -> float:
    out = subprocess.run([sys.executable, str(bench), "--steps", str(steps), "--warmup", "2", "--label-file",
                          "/nonexistent", "--json", *extra_args], env=env, capture_output=True, text=True,
                         check=True, cwd=bench.parent.parent)
    return float(_last_json(out.stdout)["rows"][0]["images_per_second"])


def run_reference(python: str) -> float:
    env = _env(pythonpath=str(PEER / "torchvision_shim"))
    out = subprocess.run([python, str(PEER / "bench_reference.py"), str(PEER / "Pytorch_Retinaface"), "--what",
                          "train"], env=env, capture_output=True, text=True, check=True)
    return float(_last_json(out.stdout)["train_img_per_s_b16_640"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--peer-python", default="/tmp/refenv/bin/python")
    p.add_argument("--old-tree", type=Path, help="a checkout of an earlier commit, timed in the same rounds")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    bench = HERE / "bench_train.py"
    sides = {
        "reference (PyTorch)": lambda: run_reference(args.peer_python),
        "ours": lambda: run_ours(bench, args.steps, _env()),
        "ours, TensorFlow defaults": lambda: run_ours(bench, args.steps, _env(), ["--tensorflow-defaults"]),
    }
    if args.old_tree:
        old = args.old_tree.resolve()
        old_bench = old / "benchmarks" / "bench_train.py"
        sides[f"{old.name}, TensorFlow defaults"] = lambda: run_ours(old_bench, args.steps, _env(pythonpath=str(old)))
        sides[f"{old.name}, training settings"] = lambda: run_ours(old_bench, args.steps,
                                                                   _env(TRAINING, pythonpath=str(old)))
    results: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            results[name].append(round(sides[name](), 3))
            print(f"round {r + 1}: {name}: {results[name][-1]} img/s", file=sys.stderr, flush=True)
    ref = max(results["reference (PyTorch)"])
    summary = {"cpu": cpu_name(), "cores": os.cpu_count(), "rounds": args.rounds,
               "sides": {k: {"runs": v, "best": max(v), "x_reference": round(max(v) / ref, 2)} for k, v in results.items()}}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"# {summary['cpu']}, {summary['cores']} cores, {args.rounds} rounds; images/s, best per side")
        for k, v in summary["sides"].items():
            print(f"{k:<40}{v['best']:>8.2f}{v['x_reference']:>7.2f}x   {v['runs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
