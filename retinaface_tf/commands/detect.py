"""``retinaface-tf detect``: faces in files or folders → annotated images + JSON.

One run per output at a time: ``--output`` and ``--crops`` are locked for the run
(:func:`~retinaface_tf.fileio.output_lock`); a second detect into either is refused at once,
naming the first (pid, start time).

Output folder rule (checked before any work, nothing written on error): ``--output``
must be a new folder, an empty one, or the output of an earlier ``detect`` (it holds the
``detections.json`` that detect writes, which lists the annotated files detect wrote there with
their sha256). An annotated file replaces only a file that list names, unchanged since; any
other existing file in its place is an error. Other files in the folder are never touched. No input may lie inside the output
folder (an output folder inside an input folder is skipped when that folder is walked), so an
input is never written to.

``--crops DIR`` writes one aligned face crop per face (PNG, ``NAME.EXT_face<k>.png``: the
input's full relative name, extension included, so ``a.jpg`` and ``a.png`` never share a crop)
into a new or empty folder ``DIR`` (refused otherwise, and when it holds an input), one crop at a
time as it is made, and adds ``crop``, ``crop_from`` (``landmarks`` / ``box``) and
``crop_matrix`` (the 2x3 image → crop transform) to each face in the JSON. Videos take no
``--crops`` (refused before any work).

Before any work, every planned output name (annotated files, JSON Lines, ``detections.json``,
the crop names ``NAME.EXT_face<k>.png`` of every image) is checked: none may be planned twice, land
on an input, or be the name of another planned output (a crops folder that is the output folder
and an input named ``p.jpg_face0.png``): a one-line error, nothing written.

A video file given by name (``clip.mp4``, any container OpenCV reads; folders are walked for
images only) gives ``OUTPUT/clip.mp4`` (annotated, every frame) and ``OUTPUT/clip.jsonl`` (one
line per detected frame: ``frame``, ``time_s``, ``faces``), ``--every N`` detecting every N-th
frame; both are listed in ``annotated_files`` like annotated images. A truncated video keeps the
frames read before the damage and is reported as a one-line error (exit 1); so does a frame over
``--max-pixels`` (a video whose container declares frames over it is refused before decoding).
Ctrl-C during a video keeps its finished frames (JSON Lines and annotated video), recorded in
``detections.json`` with ``"complete": false``.

``detections.json`` is rewritten every few seconds while images are processed and always at the
end, even when the run stops on an error or Ctrl-C: ``"complete": false`` marks a partial one,
and every image finished by then is in it.
"""

from __future__ import annotations

import argparse
import collections
import errno
import hashlib
import itertools
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
from tqdm import tqdm

from retinaface_tf import fileio
from retinaface_tf.alignment import align_faces
from retinaface_tf.commands import add_model_args, add_quiet_arg, add_runtime_arg, add_threshold_args
from retinaface_tf.constants import LANDMARK_NAMES
from retinaface_tf.errors import ImageError, RetinaFaceError, UsageError
from retinaface_tf.inference import Detector
from retinaface_tf.video import VideoInterrupted, annotated_video_name, declared_frames, detect_video, is_video
from retinaface_tf.vis.draw import draw_detections

REPORT_NAME = "detections.json"
TOOL = "retinaface-tf detect"
ANNOTATED_SUFFIXES = (".jpg", ".jpeg", ".png")
REPORT_EVERY_S = 2.0
# a write failing like this fails every later write too: stop (finished results are kept)
_FATAL_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + ". Without a path it runs on the bundled "
                       "demo photo.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="image files, folders (walked recursively for images) or video files (clip.mp4: an "
                        "annotated copy + one JSON line per frame); default: the bundled demo photo")
    p.add_argument("--output", "-o", default="detections", metavar="DIR",
                   help="folder for annotated images and detections.json (default ./detections); it must be "
                        "new, empty, or an earlier detect output, and may not hold any input")
    add_threshold_args(p, score_default=0.5, dest="threshold")
    p.add_argument("--max-size", type=int, default=None, metavar="N",
                   help="downscale images whose long side exceeds N pixels (default: original size)")
    p.add_argument("--max-pixels", type=fileio.max_pixels_arg, default=fileio.DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images larger than this from their header, before decoding (default "
                        f"{fileio.DEFAULT_MAX_PIXELS // 10**6}M = {fileio.DEFAULT_MAX_PIXELS} pixels; K/M/G suffixes allowed)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per inference batch; different sizes are padded into one canvas, detections "
                        "unchanged (default 8)")
    p.add_argument("--crops", metavar="DIR", default=None,
                   help="also write one aligned face crop per face (PNG) into DIR, a new or empty folder")
    p.add_argument("--crop-size", type=crop_size_arg, default=(112, 112), metavar="W[xH]",
                   help="aligned crop size: 112 (ArcFace 112x112), 96x112, or a size scaled from them (default 112)")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="videos: detect every N-th frame (the frames between show the last detections; default 1)")
    p.add_argument("--json", action="store_true", help="print the detections as JSON on stdout")
    p.add_argument("--no-draw", action="store_true", help="do not write annotated images")
    add_quiet_arg(p)
    add_model_args(p)
    add_runtime_arg(p)
    return p


def crop_size_arg(text: str) -> tuple[int, int]:
    """``112`` → ``(112, 112)``; ``96x112`` → ``(96, 112)`` (width, height)."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 8 or max(values) > 4096:
        raise argparse.ArgumentTypeError(f"expected W or WxH with sides 8..4096 (e.g. 112 or 96x112), got {text!r}")
    return (values[0], values[-1])


def _check_folder_holds_no_input(folder: Path, flag: str, what: str, roots, paths) -> str:
    """``folder`` (given as ``flag``) is a folder or new, and holds no input; returns its name for messages."""
    shown = _show(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise UsageError(f"{flag} {shown}: exists and is not a folder; give a new or empty folder")
    real = os.path.realpath(folder)
    for path in list(roots) + list(paths):
        if os.path.lexists(path) and _inside(os.path.realpath(path), real):
            raise UsageError(f"{_show(path)}: input lies inside the {what} {shown}; detect never writes "
                             f"where its inputs are: choose another {flag}")
    return shown


def check_crops_folder(crops: Path, roots: list[str], paths: list[str]) -> None:
    """``--crops`` must be a new or empty folder holding no input (checked before any work)."""
    shown = _check_folder_holds_no_input(crops, "--crops", "crops folder", roots, paths)
    if crops.is_dir() and any(not fileio.is_lock_file(e.name) for e in os.scandir(crops)):
        raise UsageError(f"--crops {shown}: folder is not empty; give a new or empty folder (nothing was changed)")


def crop_name(input_name: str, k: int) -> str:
    """The file name of face ``k``'s crop of the input named ``input_name`` (its relative name with
    the extension): ``sub/a.jpg`` → ``sub/a.jpg_face0.png``."""
    return f"{input_name}_face{k}.png"


_CROP_NAME = re.compile(r"^(.*)_face[0-9]+\.png$", re.DOTALL)


def write_crops(crops: Path, name: str, image, result, size: tuple[int, int], faces: list[dict],
                use_landmarks: bool = True) -> None:
    """The aligned crops of one image's faces as ``crops/<name>_face<k>.png`` (:func:`crop_name`,
    atomic), each warped, encoded and written before the next is made (memory: one crop), and their
    entries in ``faces`` (the image's JSON records, same order)."""
    for k, face in enumerate(faces):
        one = align_faces(image, result.boxes[k:k + 1], result.landmarks[k:k + 1], size=size,
                          use_landmarks=use_landmarks)
        target = crops / crop_name(name, k)
        target.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_bytes_atomic(target, fileio.encode_image(one.crops[0], ".png"))
        face["crop"] = str(target)
        face["crop_from"] = "landmarks" if one.from_landmarks[0] else "box"
        face["crop_matrix"] = [[round(float(v), 5) for v in row] for row in one.matrices[0]]


def _video_output_names(input_name: str, taken: set[str]) -> tuple[str, str]:
    """``(annotated video, JSON Lines)`` names in the output folder for the video whose input name
    is ``input_name`` (:func:`_input_names`); a name already in ``taken`` (``a.mp4`` and ``a.mov``
    would both give ``a.jsonl``) keeps the input's extension (``a.mov.jsonl``). Both are added to
    ``taken``."""
    stem = os.path.splitext(input_name)[0]
    video, jsonl = annotated_video_name(input_name), stem + ".jsonl"
    if video in taken:
        video = input_name + ".mp4"
    if jsonl in taken:
        jsonl = input_name + ".jsonl"
    taken.update((video, jsonl))
    return video, jsonl


def _run_video(detector, path: str, out_dir: Path, outputs: tuple[str, str], args, written: dict,
               on_interrupt=None):
    """One video → ``(its detections.json record, one-line error or None)``; the written files
    are added to ``written`` (name → sha256). Ctrl-C after some frames: their files are kept,
    ``on_interrupt(record)`` gets the partial record, and the interrupt goes on."""
    video_name, jsonl_name = outputs
    annotated = None if args.no_draw else out_dir / video_name
    bar = tqdm(total=declared_frames(path), unit="frame", desc=os.path.basename(path), file=sys.stderr, leave=False,
               disable=args.quiet)
    try:
        summary = detect_video(detector, path, annotated=annotated, jsonl=out_dir / jsonl_name, every=args.every,
                               on_frame=lambda _: bar.update(1))
    except RetinaFaceError as exc:
        return {"image": path, "error": str(exc)}, str(exc)
    except VideoInterrupted as exc:
        if on_interrupt is not None:
            on_interrupt(_video_record(exc.summary, path, out_dir, video_name, jsonl_name, annotated, args, written))
        raise
    finally:
        bar.close()
    record = _video_record(summary, path, out_dir, video_name, jsonl_name, annotated, args, written)
    return record, summary.error


def _video_record(summary, path, out_dir, video_name, jsonl_name, annotated, args, written) -> dict:
    record = {"image": path, "video": {"frames": summary.frames_read, "frames_detected": summary.frames_detected,
                                       "frames_declared": summary.frames_declared, "fps": summary.fps,
                                       "every": args.every, "faces": summary.faces,
                                       "jsonl": str(out_dir / jsonl_name)}}
    for name in ([jsonl_name] + ([] if annotated is None else [video_name])):
        written[os.path.normpath(name)] = _sha256(out_dir / name)
    if annotated is not None:
        record["annotated"] = str(annotated)
    if summary.error:
        record["error"] = summary.error
    return record


def _try_write(write, where: Path, what: str) -> tuple[str | None, bool]:
    """Run ``write()``: ``(None, False)`` when it worked, else ``(one-line error, fatal)``; fatal
    is a failure every later write would share too (disk full, quota, read-only, I/O error)."""
    try:
        write()
    except MemoryError:
        return f"{_show(where)}: out of memory writing {what}", False
    except cv2.error as exc:
        return f"{_show(where)}: cannot make {what}: OpenCV: {fileio.first_line(exc)}", False
    except (OSError, RetinaFaceError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return f"{_show(where)}: cannot write {what}: {reason}", isinstance(exc, OSError) and exc.errno in _FATAL_WRITE_ERRNOS
    return None, False


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies inside it (both already ``realpath``)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _relative_names(paths: list[str], roots: list[str]) -> list[str]:
    """Each input's name relative to the input folder it was found in (a file given by name: its
    base name); not yet distinct."""
    abs_roots = [(r, os.path.abspath(r)) for r in roots if os.path.isdir(r)]
    out = []
    for path in paths:
        ap = os.path.abspath(path)
        root = next((r for r, ar in abs_roots if os.path.commonpath([ar, ap]) == ar), None)
        out.append(os.path.normpath(os.path.relpath(path, root) if root else os.path.basename(path)))
    return out


def _input_names(paths: list[str], roots: list[str]) -> list[str]:
    """Relative names of the inputs, extension kept: folder inputs keep their sub-paths, files
    their base name; two inputs of one name (from two folders) get a numeric suffix
    (``a.jpg``, ``a_1.jpg``). Distinct for distinct inputs: crops and annotated files are named from them."""
    return _unique_names(paths, roots, annotated=False)


def _output_names(paths: list[str], roots: list[str]) -> list[str]:
    """Relative names of the annotated files (see :func:`_relative_names`); other formats become
    ``.jpg``; clashes (also ``a.bmp`` vs ``a.jpg``) get a numeric suffix."""
    return _unique_names(paths, roots, annotated=True)


def _unique_names(paths: list[str], roots: list[str], *, annotated: bool) -> list[str]:
    """The inputs' relative names made distinct with ``_1``, ``_2``, ... before the extension;
    ``annotated``: extensions detect cannot write become ``.jpg`` first."""
    names, taken = [], set()
    for rel in _relative_names(paths, roots):
        stem, ext = os.path.splitext(rel)
        if annotated and ext.lower() not in ANNOTATED_SUFFIXES:
            ext = ".jpg"
        name, n = stem + ext, 0
        while name in taken:
            n += 1
            name = f"{stem}_{n}{ext}"
        taken.add(name)
        names.append(name)
    return names


def check_planned_outputs(out_dir: Path, planned: list[tuple[str, str]], crops: Path | None,
                          crop_inputs: list[tuple[str, str]], inputs: list[str]) -> None:
    """Before any work: no planned output name repeats, lands on an input, or is the name of a
    crop another input will get. ``planned``: ``(name in out_dir, what it is for)``;
    ``crop_inputs``: ``(input name, input path)`` of the images whose crops go to ``crops``
    (``NAME_face<k>.png`` for every k). One-line :class:`UsageError` naming both."""
    base = os.path.realpath(out_dir)
    owners: dict[str, str] = {}
    for name, what in planned:
        where = os.path.normpath(os.path.join(base, name))
        if where in owners:
            raise UsageError(f"{_show(out_dir / name)}: planned both as {_show(owners[where])} and as {_show(what)}; "
                             "rename one input or run them separately (nothing was changed)")
        owners[where] = what
    for path in inputs:
        real = os.path.realpath(path)
        if real in owners:
            raise UsageError(f"{_show(path)}: an input would be replaced by {_show(owners[real])}; "
                             "choose another --output (nothing was changed)")
    if crops is None:
        return
    crop_base = os.path.realpath(crops)
    prefixes = {os.path.normpath(os.path.join(crop_base, name)): path for name, path in crop_inputs}
    for where, what in owners.items():
        match = _CROP_NAME.match(where)
        if match and match.group(1) in prefixes:
            raise UsageError(f"{_show(where)}: planned as {_show(what)} and as a face crop of "
                             f"{_show(prefixes[match.group(1)])}; give --crops a folder of its own (nothing was changed)")


def _show(path) -> str:
    """A path for a message: names that are not valid UTF-8 keep their bytes as ``\\xNN``."""
    text = os.fsdecode(path)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _sha256(path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _previous_report(out_dir: Path) -> dict[str, str | None] | None:
    """The annotated files an earlier detect wrote into ``out_dir`` (names relative to it →
    their sha256, ``None`` for reports older than the hashes), or ``None`` when ``out_dir``
    holds no detections.json. A detections.json that detect did not write is an error."""

    report = out_dir / REPORT_NAME
    if not os.path.lexists(report):
        return None
    where = f"--output {_show(out_dir)}: {_show(report)}"
    if report.is_symlink() or not report.is_file():
        raise UsageError(f"{where} is not a regular file; give a new or empty folder (nothing was changed)")
    try:
        data = json.loads(report.read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{where} cannot be read as a detect report ({str(exc).splitlines()[0]}); "
                       "give a new or empty folder (nothing was changed)") from None
    legacy = isinstance(data, dict) and "box_format" in data and isinstance(data.get("images"), list)
    if not isinstance(data, dict) or not (data.get("tool") == TOOL or legacy):
        raise UsageError(f"{where} was not written by {TOOL}; give a new or empty folder (nothing was changed)")
    written: dict[str, str | None] = {}
    if isinstance(data.get("annotated_files"), dict):
        written.update((n, h if isinstance(h, str) else None) for n, h in data["annotated_files"].items())
    elif isinstance(data.get("images"), list):  # older reports: the per-image "annotated" paths
        base = os.path.realpath(out_dir)
        for record in data["images"]:
            target = record.get("annotated") if isinstance(record, dict) else None
            if isinstance(target, str):
                real = os.path.realpath(target)
                if _inside(real, base) and real != base:
                    written[os.path.relpath(real, base)] = None
    return {os.path.normpath(n): h for n, h in written.items()
            if n and not os.path.isabs(n) and not os.path.normpath(n).startswith(os.pardir)}


def check_output(out_dir: Path, roots: list[str], paths: list[str], names: list[str], *,
                 draw: bool, always: list[str] = ()) -> dict[str, str | None]:
    """Every check of the output location, before any work (see the module docstring). Returns
    the annotated files earlier detect runs wrote there (name → sha256), kept in the new report."""

    shown = _check_folder_holds_no_input(out_dir, "--output", "output folder", roots, paths)
    if not out_dir.is_dir():
        return {}
    try:
        entries = sorted(e for e in os.listdir(out_dir) if not fileio.is_lock_file(e))
    except OSError as exc:
        raise UsageError(f"--output {shown}: cannot list the folder: {exc.strerror}") from None
    previous = _previous_report(out_dir)
    if previous is None and entries:
        raise UsageError(f"--output {shown}: folder is not empty and holds no {REPORT_NAME} from an earlier detect "
                       f"(it holds {_show(entries[0])!r}); give a new or empty folder (nothing was changed)")
    previous = previous or {}
    for name in (list(names) if draw else []) + list(always):
        target = out_dir / name
        if not os.path.lexists(target):
            continue
        key = os.path.normpath(name)
        ours = (key in previous and not target.is_symlink() and target.is_file()
                and (previous[key] is None or _sha256(target) == previous[key]))
        if not ours:
            raise UsageError(f"{_show(target)}: exists and is not an annotated image detect wrote (or was changed "
                           "since); it would be replaced: give a new or empty --output (nothing was changed)")
    return previous


def _prepare_output(out_dir: Path) -> None:
    """Create the output folder and prove it is writable, before the model is loaded."""

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".detect-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--output {_show(out_dir)}: cannot write there: {exc.strerror}") from None


class _Report:
    """``detections.json``: one record per input (``None`` until done), the files detect wrote
    (name → sha256), written atomically now and then and always at the end."""

    def __init__(self, out_dir: Path, paths: list[str], args, written: dict[str, str | None]):
        self.path = out_dir / REPORT_NAME
        self.paths, self.args, self.written = paths, args, written
        self.records: list[dict | None] = [None] * len(paths)
        self.text = ""
        self._last = 0.0

    def save(self, complete: bool = False) -> None:
        done = [r for r in self.records if r is not None]
        self.text = json.dumps(
            {"tool": TOOL, "complete": complete, "images_done": len(done), "images_total": len(self.paths),
             "threshold": self.args.threshold, "max_size": self.args.max_size,
             "box_format": "xyxy (pixels, original image)",
             "landmark_order": list(LANDMARK_NAMES),
             "annotated_files": dict(sorted(self.written.items())), "images": done},
            indent=1, ensure_ascii=True)  # ASCII: a file name that is not UTF-8 stays \udcxx, never a crash
        try:
            fileio.write_text_atomic(self.path, self.text)
        except OSError as exc:
            raise RetinaFaceError(f"{_show(self.path)}: cannot write: {exc.strerror or exc}") from None
        self._last = time.monotonic()

    def save_now_and_then(self) -> None:
        if time.monotonic() - self._last >= REPORT_EVERY_S:
            self.save()

    def stopped(self) -> str:
        """Save what is done after a failure; the note for the error line."""
        done = sum(r is not None for r in self.records)
        try:
            self.save()
        except RetinaFaceError as save_exc:
            return f"and {save_exc}"
        return f"{done} of {len(self.paths)} images recorded in {_show(self.path)}"


def _image_outputs(i: int, image, result, record: dict, report: _Report, names, input_names, out_dir: Path, crops,
                   args):
    """``[(what, where, write)]``: the files one image's detections go to."""
    outputs = []
    if crops is not None:
        outputs.append(("the face crops", crops,
                        lambda: write_crops(crops, input_names[i], image, result, args.crop_size, record["faces"])))
    if not args.no_draw:
        target = out_dir / names[i]

        def annotate():  # may run on a writer thread: the report's file list is updated by its caller
            data = fileio.encode_image(draw_detections(image, result), target.suffix)
            fileio.write_bytes_atomic(target, data)
            record[_WRITTEN] = (os.path.normpath(names[i]), hashlib.sha256(data).hexdigest())
            record["annotated"] = str(target)
        outputs.append(("the annotated image", target, annotate))
    return outputs


_WRITTEN = "_written"  # an image record's (annotated file name, sha256) until the report takes it
WRITES_IN_FLIGHT = 8   # images whose drawing / crops / files are being written while detection goes on


class _Writes:
    """Each image's outputs (drawing, encoding, crops, files) written on one thread, in order,
    while the next images are detected, at most :data:`WRITES_IN_FLIGHT` images behind.
    :meth:`done` gives back, in submission order, ``(index, record, [(error, fatal)])`` of the
    images finished (re-raising what a write raised); :meth:`drain` waits for all. After a fatal
    write error or an exception, the images still queued are not written (``None`` results):
    nothing is written after the failure that stops the run, as without the thread."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retinaface-write")
        self._pending: collections.deque = collections.deque()
        self._stop = threading.Event()

    def submit(self, i: int, record: dict, outputs: list) -> None:
        def run():
            if self._stop.is_set():
                return None
            try:
                results = [_try_write(write, where, what) for what, where, write in outputs]
            except BaseException:
                self._stop.set()
                raise
            if any(fatal for _, fatal in results):
                self._stop.set()
            return results
        self._pending.append((i, record, self._pool.submit(run)))

    def done(self, *, wait: bool = False, failed_ok: bool = False):
        while self._pending and (wait or self._pending[0][2].done() or len(self._pending) > WRITES_IN_FLIGHT):
            i, record, future = self._pending.popleft()
            if failed_ok and future.exception() is not None:
                continue
            results = future.result()
            if results is not None:
                yield i, record, results

    def drain(self, *, failed_ok: bool = False):
        """Wait for every write; ``failed_ok``: leave out the images whose writes raised."""
        yield from self.done(wait=True, failed_ok=failed_ok)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def _summary(records: list, image_indices: list[int], video_indices: list[int], threshold: float) -> str:
    """``2/2 images, 56 faces; 1/1 videos, 6 frames detected, 150 faces over those frames (score > 0.5)``:
    images and videos counted apart (a video's faces are summed over its frames)."""
    parts = []
    if image_indices or not video_indices:
        done = [records[i] for i in image_indices if records[i] is not None]
        ok = sum("error" not in r for r in done)
        parts.append(f"{ok}/{len(image_indices)} images, {sum(len(r.get('faces', [])) for r in done)} faces")
    if video_indices:
        done = [records[i] for i in video_indices if records[i] is not None]
        ok = sum("error" not in r for r in done)
        frames = sum(r.get("video", {}).get("frames_detected", 0) for r in done)
        faces = sum(r.get("video", {}).get("faces", 0) for r in done)
        parts.append(f"{ok}/{len(video_indices)} video{'s' if len(video_indices) != 1 else ''}, {frames} frames "
                     f"detected, {faces} faces over those frames")
    return "; ".join(parts) + f" (score > {threshold})"


def _check_args(args) -> None:
    if not (math.isfinite(args.threshold) and 0 <= args.threshold <= 1):
        raise UsageError(f"--score-threshold must be in [0, 1], got {args.threshold}")
    if args.iou_threshold is not None and not (math.isfinite(args.iou_threshold) and 0 <= args.iou_threshold <= 1):
        raise UsageError(f"--iou-threshold must be in [0, 1], got {args.iou_threshold}")
    if args.max_size is not None and args.max_size < 32:
        raise UsageError(f"--max-size must be >= 32, got {args.max_size}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.every < 1:
        raise UsageError(f"--every must be >= 1, got {args.every}")


def run(args) -> int:
    _check_args(args)
    out_dir = Path(args.output)
    crops = Path(args.crops) if args.crops else None
    # one run per output folder at a time: a second one is refused at once, naming the first
    with fileio.output_locks([(out_dir, "--output"), (crops, "--crops")]):
        return _run(args, out_dir, crops)


def _run(args, out_dir: Path, crops: Path | None) -> int:
    roots = args.paths or [str(fileio.bundled_image())]
    paths = fileio.expand_image_paths(roots, exclude=[out_dir] + ([crops] if crops is not None else []))
    if not paths:
        raise UsageError(f"no images found in {', '.join(_show(r) for r in roots)}")
    if not any(os.path.lexists(p) for p in paths):  # nothing to read: no output folder, no report
        raise UsageError(f"{', '.join(_show(p) for p in paths[:3])}: no such file (nothing was written)")
    input_names = _input_names(paths, roots)
    names = _output_names(paths, roots)
    image_indices = [i for i, path in enumerate(paths) if not is_video(path)]
    taken = {REPORT_NAME} | {names[i] for i in image_indices}
    videos = {i: _video_output_names(input_names[i], taken) for i, path in enumerate(paths) if is_video(path)}
    if crops is not None and videos:
        raise UsageError(f"--crops: face crops are made from images only, and {_show(paths[next(iter(videos))])} "
                         "is a video; run the videos without --crops (nothing was changed)")
    always = [v[1] for v in videos.values()] + ([] if args.no_draw else [v[0] for v in videos.values()])
    planned = [(REPORT_NAME, "the report")]
    planned += [] if args.no_draw else [(names[i], f"the annotated image of {paths[i]}") for i in image_indices]
    for i, (video, jsonl) in videos.items():
        planned += [(jsonl, f"the JSON Lines of {paths[i]}")]
        planned += [] if args.no_draw else [(video, f"the annotated video of {paths[i]}")]
    previous = check_output(out_dir, roots, paths, [names[i] for i in image_indices], draw=not args.no_draw,
                            always=always)
    if crops is not None:
        check_crops_folder(crops, roots, paths)
    check_planned_outputs(out_dir, planned, crops, [(input_names[i], paths[i]) for i in image_indices], paths)

    # the model first: bad --weights leave no output folder behind
    detector = Detector(args.weights, args.config, score_threshold=args.threshold, iou_threshold=args.iou_threshold,
                        max_size=args.max_size,
                        batch_size=args.batch_size, max_pixels=args.max_pixels, runtime=args.runtime)
    _prepare_output(out_dir)
    report = _Report(out_dir, paths, args, {n: h for n, h in previous.items() if (out_dir / n).is_file()})
    report.save()  # marks the folder as detect's before any image is written
    originals: dict[int, object] = {}  # read once: detected, then drawn, then dropped

    def read(i):
        try:
            return fileio.read_image(paths[i], max_pixels=args.max_pixels)
        except RetinaFaceError as exc:
            return exc
        except MemoryError:
            return ImageError(f"{paths[i]}: out of memory reading the image")

    reads = fileio.read_ahead(image_indices, read)

    def load():
        for i, image in reads:
            if not isinstance(image, Exception):
                originals[i] = image
            yield image

    failed = 0
    writes = _Writes()

    def finish(done):
        """The records of the images whose files are written (in the main thread)."""
        nonlocal failed
        for i, record, results in done:
            written = record.pop(_WRITTEN, None)
            if written is not None:
                report.written[written[0]] = written[1]
            for error, fatal in results:
                if fatal:
                    report.records[i] = {"image": paths[i], "error": error}
                    raise RetinaFaceError(f"{error}; detect stopped")
                if error:
                    failed += 1
                    record["error"] = error
                    progress.write(f"error: {error}", file=sys.stderr)
            report.records[i] = record

    progress = tqdm(total=len(image_indices), unit="img", disable=len(image_indices) < 2 or args.quiet, file=sys.stderr)
    try:
        try:
            for k, result in detector.iter_detect(load()):
                i = image_indices[k]
                progress.update(1)
                image = originals.pop(i, None)
                if isinstance(result, Exception):
                    failed += 1
                    progress.write(f"error: {_show(str(result))}", file=sys.stderr)
                    report.records[i] = {"image": paths[i], "error": str(result)}
                    continue
                record = {"image": paths[i], "width": image.shape[1], "height": image.shape[0],
                          "faces": result.to_list()}
                writes.submit(i, record, _image_outputs(i, image, result, record, report, names, input_names,
                                                        out_dir, crops, args))
                finish(writes.done())
                report.save_now_and_then()
            finish(writes.drain())
        finally:
            reads.close()
            writes.close()
        for i, outputs in videos.items():
            report.records[i], error = _run_video(detector, paths[i], out_dir, outputs, args, report.written,
                                                  on_interrupt=lambda record, i=i: report.records.__setitem__(i, record))
            if error:
                failed += 1
                print(f"error: {_show(error)}", file=sys.stderr)
            report.save()
    except BaseException as exc:
        progress.leave = False  # the bar is cleared: the error stays the last line
        progress.close()
        try:  # every file already written is recorded (the writer thread has finished)
            finish(writes.drain(failed_ok=True))
        except RetinaFaceError:
            pass
        note = report.stopped()
        if isinstance(exc, RetinaFaceError):
            raise RetinaFaceError(f"{exc} ({note})") from None
        print(f"detect stopped ({type(exc).__name__}); {note}", file=sys.stderr)
        raise
    progress.close()
    report.save(complete=True)
    if args.json:
        print(report.text)
    else:
        print(_summary(report.records, image_indices, list(videos), args.threshold) + f"; results in "
              f"{_show(report.path)}" + ("" if args.no_draw else f" and annotated {'files' if videos else 'images'} "
                                                                 f"in {_show(out_dir)}/"))
    if failed:
        print(f"{failed} of {len(paths)} images failed", file=sys.stderr)
    return 1 if failed else 0
