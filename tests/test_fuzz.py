"""Fuzzing the readers of untrusted files: checkpoints (``load_torch_checkpoint``), images
(``fileio.read_image``), videos (``video.detect_video``), TFRecord shards
(``data.tfrecord.check_tfrecords`` and then the pipeline's parsing and decoding) and YAML configs
(``Config.load``).

A few hundred seeded random mutations of the real reference checkpoints (legacy ``.pth`` and
``.tar``, and a zip re-packing of the ``.pth`` built here), of real WIDER FACE JPEGs plus a PNG, of
MJPG ``.avi`` and ``mp4v`` ``.mp4`` videos, TFRecord shards and config YAML built here. Each is read
in a subprocess limited to 2 GiB of address space and a timeout, many per process; a process that
dies is re-run input by input to name the culprit. Every input must either load or be refused with
one line naming the file: no signal, no hang, no traceback (a video that fails also leaves no file
behind; a shard the check passes must then parse and decode). Videos run through a stand-in
detector that finds no face (the reader is fuzzed, not the network), with ``max_pixels`` 10 M.
Slow: run with ``pytest -m slow tests/test_fuzz.py -s`` to see the counts.
"""

from __future__ import annotations

import collections
import random
import re
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SEED = 20240611
RLIMIT_AS = 2 << 30
# TensorFlow's thread pools (tf.data, one per core) reserve address space for their stacks: the
# TFRecord reader gets more address space (not more memory in use) than the others
RLIMIT_AS_TF = 6 << 30
BATCH = 40
BATCH_TIMEOUT = 300
ONE_TIMEOUT = 60
MAX_SECONDS_PER_INPUT = 20.0

_DRIVER = r"""
import os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from retinaface_tf.errors import RetinaFaceError
kind = sys.argv[2]
if kind == "checkpoint":
    from retinaface_tf.convert.torch_weights import load_torch_checkpoint as load
elif kind == "image":
    from retinaface_tf.fileio import read_image as load
elif kind == "video":
    import numpy as np
    from retinaface_tf.video import detect_video

    class NoFaces:
        boxes, scores, landmarks = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        def __len__(self):
            return 0
        def to_list(self):
            return []

    class StandIn:  # the reader is fuzzed, not the network
        batch_size, max_pixels, batch_pixels = 4, 10_000_000, 24_000_000
        def detect_batch(self, frames):
            return [NoFaces() for _ in frames]

    def load(path):
        out = path + ".out"
        os.makedirs(out, exist_ok=True)
        try:
            return detect_video(StandIn(), path, annotated=os.path.join(out, "v.avi"), jsonl=os.path.join(out, "v.jsonl"))
        except RetinaFaceError:
            if os.listdir(out):
                raise AssertionError("files left behind by a failed video: " + ", ".join(os.listdir(out)))
            raise
elif kind == "tfrecord":
    import tensorflow as tf
    from retinaface_tf.data.tfrecord import check_tfrecords, read_tfrecords

    def load(path):
        count = check_tfrecords(path)
        for encoded, faces in read_tfrecords(path, shuffle_files=False):  # what the check passed must be usable
            tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return count
else:
    from retinaface_tf.config import Config
    load = Config.load
for path in sys.argv[3:]:
    t = time.perf_counter()
    try:
        out = load(path)
        if kind == "image":
            ok = out.dtype.name == "uint8" and out.ndim == 3 and out.shape[2] == 3 and out.size > 0
        elif kind == "checkpoint":
            ok = isinstance(out, dict) and all(hasattr(v, "dtype") for v in out.values())
        elif kind == "video":
            ok = out.frames_read >= 1 and (out.error is None or out.error.startswith(path + ": "))
        elif kind == "tfrecord":
            ok = out >= 1
        else:
            ok = out.name is not None
        result = "OK" if ok else "BADRESULT " + type(out).__name__
    except RetinaFaceError as exc:
        msg = str(exc)
        if "\n" in msg or not msg.startswith(path + ": ") or len(msg) > 600:
            result = "BADMESSAGE " + " ".join(msg.split())[:300]
        else:
            result = "ERR " + msg[len(path) + 2:]
    except BaseException as exc:  # a traceback for the user: what the fuzzing looks for
        result = "EXC " + type(exc).__name__ + ": " + " ".join(str(exc).split())[:300]
    print(f"{time.perf_counter() - t:.3f}\t{result}", flush=True)
"""


# ------------------------------------------------------------------ mutations
INTERESTING_INTS = [0, 1, -1, 255, 256, 65535, 2**31 - 1, -2**31, 2**32 - 1, 2**40, 2**62, -2**63, 2**63 - 1]


def mutate(data: bytes, rng: random.Random, region: tuple[int, int] | None = None) -> tuple[bytes, str]:
    """One random mutation of ``data`` inside ``region`` (default: everywhere)."""
    lo, hi = region or (0, len(data))
    hi = max(hi, lo + 1)
    b = bytearray(data)
    kind = rng.choice(["flip", "flip", "byte", "int", "truncate", "insert", "duplicate", "delete"])
    if kind == "flip":
        spots = [rng.randrange(lo, hi) for _ in range(rng.randint(1, 8))]
        for p in spots:
            b[p] ^= 1 << rng.randrange(8)
        return bytes(b), f"flip bits at {spots}"
    if kind == "byte":
        spots = [rng.randrange(lo, hi) for _ in range(rng.randint(1, 4))]
        for p in spots:
            b[p] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        return bytes(b), f"set bytes at {spots}"
    if kind == "int":
        p, v, fmt = rng.randrange(lo, hi), rng.choice(INTERESTING_INTS), rng.choice(["<q", "<i", "<H", ">I"])
        raw = struct.pack(fmt.replace("q", "Q").replace("i", "I"), v % (1 << (8 * struct.calcsize(fmt))))
        b[p:p + len(raw)] = raw
        return bytes(b), f"write {v} as {fmt} at {p}"
    if kind == "truncate":
        cut = rng.randrange(lo, hi)
        return bytes(b[:cut]), f"truncate at {cut}"
    if kind == "insert":
        p, chunk = rng.randrange(lo, hi), bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        b[p:p] = chunk
        return bytes(b), f"insert {len(chunk)} random bytes at {p}"
    start, length = rng.randrange(lo, hi), rng.randint(1, 4096)
    if kind == "duplicate":
        p = rng.randrange(lo, hi)
        b[p:p] = b[start:start + length]
        return bytes(b), f"copy {length} bytes from {start} to {p}"
    del b[start:start + length]
    return bytes(b), f"delete {length} bytes at {start}"


# ------------------------------------------------------------------ the real checkpoints, dissected
def legacy_layout(data: bytes) -> dict:
    """Byte positions of a legacy checkpoint: the five pickles, each storage's header and bytes."""
    from retinaface_tf.convert import torch_weights as tw

    storages: dict = {}
    pm = tw._PickleMachine(data, "x", storages, legacy=True)
    ends, pos, keys = [], 0, None
    for _ in range(5):
        keys, pos = pm.load(pos)
        ends.append(pos)
    spans = {}
    for key in keys:
        spans[key] = (pos, pos + 8, pos + 8 + storages[key].nbytes)  # header, bytes, end
        pos += 8 + storages[key].nbytes
    return {"pickle_ends": ends, "spans": spans}


def zip_from_legacy(data: bytes, layout: dict) -> tuple[bytes, dict[str, bytes]]:
    """The same checkpoint as torch's zip format writes it: data.pkl + data/<key> (stored)."""
    ends = layout["pickle_ends"]
    pkl = data[ends[2]:ends[3]]
    members = {key: data[s[1]:s[2]] for key, s in layout["spans"].items()}
    return pkl, members


def write_zip_bytes(pkl: bytes, members: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in members.items():
            zf.writestr(f"archive/data/{key}", raw)
    return buf.getvalue()


def checkpoint_mutations(reference_dir: Path, rng: random.Random):
    """Yields (name, bytes, description): ~400 mutations over the legacy .pth/.tar and a zip."""
    pth = (reference_dir / "mobilenet0.25_Final.pth").read_bytes()
    tar = (reference_dir / "mobilenetV1X0.25_pretrain.tar").read_bytes()
    for label, data, n_raw, n_pickle, n_headers in (("pth", pth, 50, 80, 20), ("tar", tar, 40, 60, 15)):
        layout = legacy_layout(data)
        pickle_end = layout["pickle_ends"][-1]
        headers = [s[0] for s in layout["spans"].values()]
        for i in range(n_raw):
            yield (f"{label}-raw-{i}", *mutate(data, rng))
        for i in range(n_pickle):
            yield (f"{label}-pickle-{i}", *mutate(data, rng, (0, pickle_end)))
        for i in range(n_headers):  # a storage's element count
            h = rng.choice(headers)
            v = rng.choice(INTERESTING_INTS)
            b = bytearray(data)
            b[h:h + 8] = struct.pack("<q", v if -2**63 <= v < 2**63 else -1)
            yield f"{label}-header-{i}", bytes(b), f"storage header at {h} := {v}"
    layout = legacy_layout(pth)
    pkl, members = zip_from_legacy(pth, layout)
    zipped = write_zip_bytes(pkl, members)
    yield "zip-clean", zipped, "the .pth re-packed as a zip (must load)"
    for i in range(40):
        yield (f"zip-raw-{i}", *mutate(zipped, rng))
    for i in range(80):  # mutate data.pkl, then zip it (valid CRCs: the pickle machine sees it)
        new_pkl, desc = mutate(pkl, rng)
        yield f"zip-datapkl-{i}", write_zip_bytes(new_pkl, members), "data.pkl: " + desc
    for i in range(20):  # a storage member of another length
        key = rng.choice(list(members))
        raw = members[key]
        cut = rng.choice([0, 1, len(raw) - 1, len(raw) + 1, len(raw) * 2, rng.randrange(len(raw) + 1)])
        new = dict(members, **{key: (raw * 3)[:cut]})
        yield f"zip-storage-{i}", write_zip_bytes(pkl, new), f"member data/{key}: {len(raw)} -> {cut} bytes"


def image_mutations(widerface_dir: Path, rng: random.Random):
    import cv2

    folders = sorted(p for p in (widerface_dir / "val" / "images").iterdir() if p.is_dir())
    jpegs = [sorted(f.glob("*.jpg"))[0] for f in folders[:3]]
    if len(jpegs) < 3:
        pytest.skip(f"fewer than 3 JPEG folders under {widerface_dir / 'val' / 'images'}")
    yy, xx = np.mgrid[0:150, 0:200]
    png_image = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    ok, png = cv2.imencode(".png", png_image)
    assert ok
    sources = [(p.name, p.read_bytes()) for p in jpegs] + [("made.png", png.tobytes())]
    for name, data in sources:
        suffix = Path(name).suffix
        yield f"{Path(name).stem}-clean{suffix}", data, "unchanged (must load)"
        for i in range(50):
            yield (f"{Path(name).stem}-raw-{i}{suffix}", *mutate(data, rng))
        for i in range(25):  # headers: JPEG SOF/markers and PNG IHDR live in the first bytes
            yield (f"{Path(name).stem}-head-{i}{suffix}", *mutate(data, rng, (0, min(len(data), 700))))
    # the dimensions themselves: huge / zero sizes in the JPEG SOF and PNG IHDR
    for name, data in sources:
        suffix = Path(name).suffix
        for j, (w, h) in enumerate([(65535, 65535), (0, 10), (10, 0), (65535, 1), (40000, 40000)]):
            b = bytearray(data)
            if suffix == ".png":
                b[16:24] = struct.pack(">II", w, h)
                desc = f"IHDR {w}x{h} (bad CRC)"
            else:
                sof = next((i for i in range(2, len(b) - 9) if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC1, 0xC2)), None)
                if sof is None:
                    continue
                b[sof + 5:sof + 9] = struct.pack(">HH", h, w)
                desc = f"SOF at {sof}: {w}x{h}"
            yield f"{Path(name).stem}-dims-{j}{suffix}", bytes(b), desc


def _synthetic_frames(count: int = 6, size=(96, 64)):
    import cv2

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for k in range(count):
        f = np.stack([(xx + 7 * k) % 256, (yy * 3) % 256, (xx + yy + 20 * k) % 256], axis=-1).astype(np.uint8)
        cv2.circle(f, (20 + 8 * k, 30), 12, (40, 200, 90), -1)
        frames.append(f)
    return frames


def _video_bytes(workdir: Path, name: str, fourcc: str) -> bytes:
    import cv2

    frames = _synthetic_frames()
    path = workdir / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, frames[0].shape[1::-1])
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    data = path.read_bytes()
    path.unlink()
    return data


def video_mutations(workdir: Path, rng: random.Random):
    """MJPG .avi and mp4v .mp4 built here: raw and header mutations, and the declared frame size
    (AVI ``avih`` / ``strf``, the first JPEG's SOF) set huge or zero."""
    sources = [("clip.avi", _video_bytes(workdir, "src.avi", "MJPG")),
               ("clip.mp4", _video_bytes(workdir, "src.mp4", "mp4v"))]
    for name, data in sources:
        stem, suffix = Path(name).stem, Path(name).suffix
        yield f"{stem}-clean{suffix}", data, "unchanged (must load)"
        for i in range(45):
            yield (f"{stem}-raw-{i}{suffix}", *mutate(data, rng))
        for i in range(35):
            yield (f"{stem}-head-{i}{suffix}", *mutate(data, rng, (0, min(len(data), 4096))))
    avi = sources[0][1]
    for j, (w, h) in enumerate([(8000, 8000), (40000, 40000), (0, 0), (65535, 1), (12000, 12000)]):
        b = bytearray(avi)
        at = avi.find(b"avih")
        b[at + 40:at + 48] = struct.pack("<II", w, h)
        at = avi.find(b"strf")
        b[at + 12:at + 20] = struct.pack("<ii", w, h)
        yield f"clip-declared-{j}.avi", bytes(b), f"avih/strf declare {w}x{h}"
        b = bytearray(avi)
        sof = avi.find(b"\xff\xc0")
        b[sof + 5:sof + 9] = struct.pack(">HH", h % 65536, w % 65536)
        yield f"clip-sof-{j}.avi", bytes(b), f"first frame's SOF {w}x{h}"


def tfrecord_mutations(workdir: Path, rng: random.Random):
    """Shards of a synthetic dataset: raw bytes mutated (CRCs break), and records whose
    serialized Example (labels, the JPEG inside) is mutated under valid CRCs."""
    import tensorflow as tf

    from synthetic import make_dataset

    from retinaface_tf.data.tfrecord import write_tfrecords
    from retinaface_tf.data.widerface import read_annotations

    label, images = make_dataset(workdir / "data", images=4, size=(64, 80))
    shard = Path(write_tfrecords(read_annotations(label), images, workdir / "src" / "train", num_shards=1)[0])
    data = shard.read_bytes()
    records = list(tf.data.TFRecordDataset(str(shard)).as_numpy_iterator())

    def rewrap(recs) -> bytes:
        out = workdir / "rewrap.tfrecord"
        with tf.io.TFRecordWriter(str(out)) as w:
            for r in recs:
                w.write(r)
        raw = out.read_bytes()
        out.unlink()
        return raw

    yield "train-clean.tfrecord", data, "unchanged (must load)"
    for i in range(40):
        yield (f"train-raw-{i}.tfrecord", *mutate(data, rng))
    for i in range(15):
        yield (f"train-head-{i}.tfrecord", *mutate(data, rng, (0, 64)))
    for i in range(60):
        k = rng.randrange(len(records))
        rec = records[k]
        jpeg_at = rec.find(b"\xff\xd8")
        region = (jpeg_at, len(rec)) if i % 2 and jpeg_at >= 0 else (0, len(rec))
        new, desc = mutate(rec, rng, region)
        yield f"train-record-{i}.tfrecord", rewrap(records[:k] + [new] + records[k + 1:]), f"record {k}: {desc}"


_YAML_VALUES = ["1e39", "-1", ".nan", "[]", "{}", "*a", "&a x", "!!python/object/apply:os.system [ls]", "~",
                "99999999999999999999999999", "[[[[[[[[[[", "'x' * 10", "!!binary aGVsbG8=", "<<: *a", "\"\\x00\""]


def yaml_mutations(rng: random.Random):
    """The packaged mobilenet025_short.yaml: raw byte mutations, values replaced by hostile YAML,
    alias bombs and deep nesting."""
    from retinaface_tf.config import _packaged_configs

    text = Path(_packaged_configs()["mobilenet025_short"]).read_text()
    data = text.encode()
    yield "short-clean.yaml", data, "unchanged (must load)"
    for i in range(60):
        yield (f"short-raw-{i}.yaml", *mutate(data, rng))
    lines = text.splitlines()
    values = [i for i, ln in enumerate(lines) if ":" in ln and not ln.lstrip().startswith("#")]
    for i in range(40):
        k, v = rng.choice(values), rng.choice(_YAML_VALUES)
        new = list(lines)
        new[k] = new[k].split(":", 1)[0] + ": " + v
        yield f"short-value-{i}.yaml", ("\n".join(new) + "\n").encode(), f"line {k + 1} := {v}"
    for levels in (3, 6, 9, 12):
        bomb = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        bomb += [f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, levels)]
        yield f"bomb-{levels}.yaml", ("\n".join(bomb) + f"\nbase: *{chr(96 + levels)}\n").encode(), f"{levels} alias levels"
    for depth in (100, 5000, 100000):
        yield f"deep-{depth}.yaml", ("base: " + "[" * depth + "]" * depth + "\n").encode(), f"nesting {depth}"


# ------------------------------------------------------------------ running them
def _run(kind: str, paths: list[Path], timeout: float):
    cmd = [sys.executable, "-c", _DRIVER, str(RLIMIT_AS_TF if kind == "tfrecord" else RLIMIT_AS), kind,
           *map(str, paths)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, ""
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def fuzz(kind: str, cases, workdir: Path) -> tuple[collections.Counter, list[str], float]:
    """Runs every case; returns (outcome counts, problems, seconds)."""
    counts, problems = collections.Counter(), []
    t0 = time.perf_counter()
    batch: list[tuple[str, bytes, str]] = []

    def record(name, desc, line):
        seconds, result = line.split("\t", 1)
        outcome = result.split(" ", 1)[0]
        counts[outcome] += 1
        if outcome not in ("OK", "ERR"):
            problems.append(f"{name} ({desc}): {result}")
        elif float(seconds) > MAX_SECONDS_PER_INPUT:
            counts["SLOW"] += 1
            problems.append(f"{name} ({desc}): {seconds} s")
        if outcome == "ERR":
            counts["err:" + _category(result)] += 1
        if Path(name).stem.endswith("-clean") and outcome != "OK":
            problems.append(f"{name}: the unmutated input does not load: {result}")

    def flush():
        paths = []
        for name, data, _ in batch:
            path = workdir / name
            path.write_bytes(data)
            paths.append(path)
        rc, lines, stderr = _run(kind, paths, BATCH_TIMEOUT)
        if rc == 0 and len(lines) == len(batch):
            for (name, _, desc), line in zip(batch, lines):
                record(name, desc, line)
        else:  # a crash or a hang somewhere in the batch: one process per input names it
            for (name, _, desc), path in zip(batch, paths):
                rc1, lines1, stderr1 = _run(kind, [path], ONE_TIMEOUT)
                if rc1 is None:
                    counts["HANG"] += 1
                    problems.append(f"{name} ({desc}): no answer in {ONE_TIMEOUT} s")
                elif rc1 != 0 or len(lines1) != 1:
                    counts["CRASH"] += 1
                    problems.append(f"{name} ({desc}): exit {rc1}, {stderr1.strip()[-300:]!r}")
                else:
                    record(name, desc, lines1[0])
        for path in paths:
            path.unlink()
        batch.clear()

    for case in cases:
        batch.append(case)
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    return counts, problems, time.perf_counter() - t0


def _category(result: str) -> str:
    """A short label of a refusal: numbers and quoted names blanked, details cut."""
    text = re.sub(r"'[^']*'", "'…'", result[4:])
    text = re.sub(r"data/\S+", "data/K", text)
    text = re.sub(r"\d+", "N", text).split(" (")[0]
    return text[:70]


def _report(capsys, title: str, counts: collections.Counter, problems: list[str], seconds: float):
    main = {k: v for k, v in counts.items() if not k.startswith("err:")}
    tried = sum(v for k, v in main.items() if k != "SLOW")
    with capsys.disabled():
        print(f"\n{title}: {tried} mutations in {seconds:.0f} s: loaded OK {main.get('OK', 0)}, refused with a "
              f"one-line error {main.get('ERR', 0)}, crashes {main.get('CRASH', 0)}, hangs {main.get('HANG', 0)}, "
              f"tracebacks {main.get('EXC', 0)}, bad messages {main.get('BADMESSAGE', 0)}, "
              f"slow (> {MAX_SECONDS_PER_INPUT:g} s) {main.get('SLOW', 0)}")
        for k, v in sorted(((k, v) for k, v in counts.items() if k.startswith("err:")), key=lambda kv: -kv[1]):
            print(f"    {v:4d}  {k[4:]}")
        for p in problems[:30]:
            print("  PROBLEM", p)
    return tried


def test_fuzz_checkpoints(reference_dir, tmp_path, capsys):
    for f in ("mobilenet0.25_Final.pth", "mobilenetV1X0.25_pretrain.tar"):
        if not (reference_dir / f).exists():
            pytest.skip(f"{reference_dir / f} not found")
    rng = random.Random(SEED)
    counts, problems, seconds = fuzz("checkpoint", checkpoint_mutations(reference_dir, rng), tmp_path)
    tried = _report(capsys, "checkpoint fuzz", counts, problems, seconds)
    assert tried >= 400
    assert not problems, "\n".join(problems[:30])


def test_fuzz_images(widerface_dir, tmp_path, capsys):
    rng = random.Random(SEED + 1)
    counts, problems, seconds = fuzz("image", image_mutations(widerface_dir, rng), tmp_path)
    tried = _report(capsys, "image fuzz", counts, problems, seconds)
    assert tried >= 300
    assert not problems, "\n".join(problems[:30])


def test_fuzz_videos(tmp_path, capsys):
    rng = random.Random(SEED + 2)
    counts, problems, seconds = fuzz("video", list(video_mutations(tmp_path, rng)), tmp_path)
    tried = _report(capsys, "video fuzz", counts, problems, seconds)
    assert tried >= 150
    assert not problems, "\n".join(problems[:30])


def test_fuzz_tfrecords(tmp_path, capsys):
    rng = random.Random(SEED + 3)
    counts, problems, seconds = fuzz("tfrecord", list(tfrecord_mutations(tmp_path, rng)), tmp_path)
    tried = _report(capsys, "TFRecord fuzz", counts, problems, seconds)
    assert tried >= 100
    assert not problems, "\n".join(problems[:30])


def test_fuzz_yaml(tmp_path, capsys):
    rng = random.Random(SEED + 4)
    counts, problems, seconds = fuzz("yaml", list(yaml_mutations(rng)), tmp_path)
    tried = _report(capsys, "YAML fuzz", counts, problems, seconds)
    assert tried >= 100
    assert not problems, "\n".join(problems[:30])
