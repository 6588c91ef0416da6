"""Throughput of ``detect-dataset`` (Ray Data) against in-process ``detect --no-draw`` on the
same photos, whole commands timed (start-up included), side by side in one run.

    python benchmarks/dataset_throughput.py [--limit N] [--workers W] [--threads-per-worker T] [--json]

Photos: every WIDER FACE val image under ``../shared/widerface/val/images`` (or
``$RETINAFACE_SHARED``), sorted, the first ``--limit`` (default all). Issue 32 asks for >= 900
photos and >= 2,000 for the second claim; the shared folder holds 310 val images, so a default
run takes those 310 and says so. Each command runs ``--repeats`` times alternately (detect first)
and the best time of each is reported, with the images/s ratio; ``detect-dataset`` also reports
the peak memory (RSS) of its detector actors, sampled every 0.2 s. The local Ray gets its own
``RAY_TMPDIR`` and is stopped by the command itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import describe  # noqa: E402

SHARED = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared"))
ISSUE_PHOTOS = 900


class _ActorMemory:
    """Peak RSS of the Ray worker processes running the detector (``ray::MapWorker...`` title)
    of the Ray whose ``RAY_TMPDIR`` is ``ray_tmp``."""

    def __init__(self, ray_tmp: str):
        self.marker = f"RAY_TMPDIR={ray_tmp}".encode()
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.2):
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        if self.marker not in f.read().split(b"\0"):
                            continue
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if b"MapWorker" not in f.read():
                            continue
                    with open(f"/proc/{entry}/statm") as f:
                        rss = int(f.read().split()[1]) * page
                except (OSError, ValueError, IndexError):
                    continue
                self.peak[int(entry)] = max(self.peak.get(int(entry), 0), rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _timed(args, env) -> float:
    start = time.perf_counter()
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args[:4])} ... failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N photos only (default: all found)")
    parser.add_argument("--workers", type=int, default=None, help="detect-dataset --workers (default: its own)")
    parser.add_argument("--threads-per-worker", type=int, default=None, help="detect-dataset --threads-per-worker")
    parser.add_argument("--copies", type=int, default=1,
                        help="each photo linked this many times under another name (3: the 310 shared photos "
                             "make 930, past the issue's 900)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command; the best is kept (default 1)")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)

    images = sorted((SHARED / "widerface" / "val" / "images").rglob("*.jpg"))
    if not images:
        raise SystemExit(f"no WIDER FACE val images under {SHARED}/widerface/val/images (set RETINAFACE_SHARED)")
    found = len(images)
    images = images[:args.limit] if args.limit else images
    work = Path(tempfile.mkdtemp(prefix="rtbench", dir="/tmp"))
    if args.copies > 1:  # distinct files (links) of the same photos: both commands read each one
        linked = []
        for k in range(args.copies):
            (work / "photos" / f"copy{k}").mkdir(parents=True)
            for p in images:
                link = work / "photos" / f"copy{k}" / f"{p.parent.name}__{p.name}"
                link.symlink_to(p)
                linked.append(link)
        images = linked
    note = (f"{len(images)} photos (the issue asks for >= {ISSUE_PHOTOS}; {found} WIDER val photos are in the "
            "shared folder)") if len(images) < ISSUE_PHOTOS else f"{len(images)} photos"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_TMPDIR": str(work / "ray")}
    env.pop("RAY_ADDRESS", None)
    listing = work / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    detect = [sys.executable, "-m", "retinaface_tf", "detect", *([str(work / "photos")] if args.copies > 1 else
                                                                 map(str, images)), "--no-draw"]
    dataset = [sys.executable, "-m", "retinaface_tf", "detect-dataset", str(listing), "-q"]
    if args.workers:
        dataset += ["--workers", str(args.workers)]
    if args.threads_per_worker:
        dataset += ["--threads-per-worker", str(args.threads_per_worker)]
    times = {"detect": [], "detect-dataset": []}
    memory: list[int] = []
    try:
        for r in range(args.repeats):
            times["detect"].append(_timed(detect + ["--output", str(work / f"detect{r}")], env))
            with _ActorMemory(str(work / "ray")) as sampler:
                times["detect-dataset"].append(_timed(dataset + ["--output", str(work / f"dataset{r}")], env))
            memory.extend(sampler.peak.values())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    rate = {k: len(images) / v for k, v in best.items()}
    result = {"machine": describe(), "photos": len(images), "photos_found": found,
              "detect_s": round(best["detect"], 2), "detect_images_per_s": round(rate["detect"], 2),
              "dataset_s": round(best["detect-dataset"], 2), "dataset_images_per_s": round(rate["detect-dataset"], 2),
              "ratio": round(rate["detect-dataset"] / rate["detect"], 3),
              "actor_peak_rss_mib": [round(m / 2**20) for m in memory]}
    print(f"{describe()}; {note}; whole commands, start-up included, best of {args.repeats}")
    print(f"  detect --no-draw   {best['detect']:7.1f} s  {rate['detect']:6.2f} images/s")
    print(f"  detect-dataset     {best['detect-dataset']:7.1f} s  {rate['detect-dataset']:6.2f} images/s  "
          f"({100 * result['ratio']:.0f} % of detect)")
    print(f"  detector actors: peak RSS {', '.join(f'{m} MiB' for m in result['actor_peak_rss_mib']) or 'not seen'}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
