"""``retinaface-tf detect``: faces in files or folders → annotated images + JSON.

Output folder rule (checked before any work, nothing written on error): ``--output``
must be a new folder, an empty one, or the output of an earlier ``detect`` (it holds the
``detections.json`` that detect writes, which lists the annotated files detect wrote there with
their sha256). An annotated file replaces only a file that list names, unchanged since; any
other existing file in its place is an error. Other files in the folder are never touched. No input may lie inside the output
folder (an output folder inside an input folder is skipped when that folder is walked), so an
input is never written to.

``detections.json`` is rewritten every few seconds while images are processed and always at the
end, even when the run stops on an error or Ctrl-C: ``"complete": false`` marks a partial one,
and every image finished by then is in it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from retinaface_tf import fileio
from retinaface_tf.commands import add_model_args
from retinaface_tf.constants import LANDMARK_NAMES
from retinaface_tf.errors import ImageError, RetinaFaceError, UsageError
from retinaface_tf.inference import Detector
from retinaface_tf.vis.draw import draw_detections

REPORT_NAME = "detections.json"
TOOL = "retinaface-tf detect"
ANNOTATED_SUFFIXES = (".jpg", ".jpeg", ".png")
REPORT_EVERY_S = 2.0
# a write failing like this fails every later write too: stop (finished results are kept)
_FATAL_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="image files or folders (default: the bundled demo photo)")
    p.add_argument("--output", "-o", default="detections",
                   help="folder for annotated images and detections.json (default: ./detections); it must be "
                        "new, empty, or an earlier detect output, and may not hold any input")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum face score (default 0.5)")
    p.add_argument("--max-size", type=int, default=None,
                   help="downscale images whose long side exceeds this many pixels (default: original size)")
    p.add_argument("--max-pixels", type=fileio.max_pixels_arg, default=fileio.DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images larger than this from their header, before decoding (default "
                        f"{fileio.DEFAULT_MAX_PIXELS // 10**6}M = {fileio.DEFAULT_MAX_PIXELS} pixels; K/M/G suffixes allowed)")
    p.add_argument("--batch-size", type=int, default=8, help="images of equal size per inference batch (default 8)")
    p.add_argument("--json", action="store_true", help="print the detections as JSON on stdout")
    p.add_argument("--no-draw", action="store_true", help="do not write annotated images")
    add_model_args(p)
    return p


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies inside it (both already ``realpath``)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _output_names(paths: list[str], roots: list[str]) -> list[str]:
    """Relative names of the annotated files: folder inputs keep their sub-paths, files their
    base name; other formats become ``.jpg``; clashes (also ``a.bmp`` vs ``a.jpg``) get a
    numeric suffix."""
    names, taken = [], set()
    abs_roots = [(r, os.path.abspath(r)) for r in roots if os.path.isdir(r)]
    for path in paths:
        ap = os.path.abspath(path)
        root = next((r for r, ar in abs_roots if os.path.commonpath([ar, ap]) == ar), None)
        rel = os.path.relpath(path, root) if root else os.path.basename(path)
        stem, ext = os.path.splitext(rel)
        if ext.lower() not in ANNOTATED_SUFFIXES:
            ext = ".jpg"
        name, n = stem + ext, 0
        while name in taken:
            n += 1
            name = f"{stem}_{n}{ext}"
        taken.add(name)
        names.append(name)
    return names


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
                 draw: bool) -> dict[str, str | None]:
    """Every check of the output location, before any work (see the module docstring). Returns
    the annotated files earlier detect runs wrote there (name → sha256), kept in the new report."""

    shown = _show(out_dir)
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise UsageError(f"--output {shown}: exists and is not a folder; give a new or empty folder")
    out_real = os.path.realpath(out_dir)
    for path in list(roots) + list(paths):
        if os.path.lexists(path) and _inside(os.path.realpath(path), out_real):
            raise UsageError(f"{_show(path)}: input lies inside the output folder {shown}; detect never writes "
                           "where its inputs are: choose another --output")
    if not out_dir.is_dir():
        return {}
    try:
        entries = sorted(os.listdir(out_dir))
    except OSError as exc:
        raise UsageError(f"--output {shown}: cannot list the folder: {exc.strerror}") from None
    previous = _previous_report(out_dir)
    if previous is None and entries:
        raise UsageError(f"--output {shown}: folder is not empty and holds no {REPORT_NAME} from an earlier detect "
                       f"(it holds {_show(entries[0])!r}); give a new or empty folder (nothing was changed)")
    previous = previous or {}
    if draw:
        for name in names:
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


def run(args) -> int:
    if not (math.isfinite(args.threshold) and 0 <= args.threshold <= 1):
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.max_size is not None and args.max_size < 32:
        raise UsageError(f"--max-size must be >= 32, got {args.max_size}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    roots = args.paths or [str(fileio.bundled_image())]
    out_dir = Path(args.output)
    paths = fileio.expand_image_paths(roots, exclude=[out_dir])
    if not paths:
        raise UsageError(f"no images found in {', '.join(_show(r) for r in roots)}")
    names = _output_names(paths, roots)
    previous = check_output(out_dir, roots, paths, names, draw=not args.no_draw)

    # the model first: bad --weights leave no output folder behind
    detector = Detector(args.weights, args.config, score_threshold=args.threshold, max_size=args.max_size,
                        batch_size=args.batch_size, max_pixels=args.max_pixels)
    _prepare_output(out_dir)

    records: list[dict | None] = [None] * len(paths)
    written = {n: h for n, h in previous.items() if (out_dir / n).is_file()}
    report_path = out_dir / REPORT_NAME
    state = {"last": 0.0, "text": ""}

    def save_report(complete: bool) -> None:
        done = [r for r in records if r is not None]
        state["text"] = json.dumps(
            {"tool": TOOL, "complete": complete, "images_done": len(done), "images_total": len(paths),
             "threshold": args.threshold, "max_size": args.max_size,
             "box_format": "xyxy (pixels, original image)",
             "landmark_order": list(LANDMARK_NAMES),
             "annotated_files": dict(sorted(written.items())), "images": done},
            indent=1, ensure_ascii=True)  # ASCII: a file name that is not UTF-8 stays \udcxx, never a crash
        try:
            fileio.write_text_atomic(report_path, state["text"])
        except OSError as exc:
            raise RetinaFaceError(f"{_show(report_path)}: cannot write: {exc.strerror or exc}") from None
        state["last"] = time.monotonic()

    save_report(False)  # marks the folder as detect's before any image is written
    originals: dict[int, object] = {}  # read once: detected, then drawn, then dropped

    def load():
        for i, path in enumerate(paths):
            try:
                originals[i] = fileio.read_image(path, max_pixels=args.max_pixels)
            except RetinaFaceError as exc:
                yield exc
                continue
            except MemoryError:
                yield ImageError(f"{path}: out of memory reading the image")
                continue
            yield originals[i]

    failed = 0
    progress = tqdm(total=len(paths), unit="img", disable=len(paths) < 2, file=sys.stderr)
    try:
        for i, result in detector.iter_detect(load()):
            progress.update(1)
            image = originals.pop(i, None)
            if isinstance(result, Exception):
                failed += 1
                progress.write(f"error: {_show(str(result))}", file=sys.stderr)
                records[i] = {"image": paths[i], "error": str(result)}
                continue
            record = {"image": paths[i], "width": image.shape[1], "height": image.shape[0],
                      "faces": result.to_list()}
            if not args.no_draw:
                target = out_dir / names[i]
                try:
                    data = fileio.encode_image(draw_detections(image, result), target.suffix)
                    fileio.write_bytes_atomic(target, data)
                except (OSError, RetinaFaceError) as exc:
                    reason = getattr(exc, "strerror", None) or str(exc)
                    if isinstance(exc, OSError) and exc.errno in _FATAL_WRITE_ERRNOS:
                        records[i] = {"image": paths[i], "error": f"{target}: cannot write: {reason}"}
                        raise RetinaFaceError(f"{_show(target)}: cannot write the annotated image: {reason}; "
                                              "detect stopped") from None
                    failed += 1
                    record["error"] = f"{target}: cannot write: {reason}"
                    progress.write(f"error: {_show(target)}: cannot write the annotated image: {reason}",
                                   file=sys.stderr)
                else:
                    written[os.path.normpath(names[i])] = hashlib.sha256(data).hexdigest()
                    record["annotated"] = str(target)
            records[i] = record
            if time.monotonic() - state["last"] >= REPORT_EVERY_S:
                save_report(False)
    except BaseException as exc:
        progress.leave = False  # the bar is cleared: the error stays the last line
        progress.close()
        done = sum(r is not None for r in records)
        try:
            save_report(False)
            note = f"{done} of {len(paths)} images recorded in {_show(report_path)}"
        except RetinaFaceError as save_exc:
            note = f"and {save_exc}"
        if isinstance(exc, RetinaFaceError):
            raise RetinaFaceError(f"{exc} ({note})") from None
        print(f"detect stopped ({type(exc).__name__}); {note}", file=sys.stderr)
        raise
    progress.close()
    save_report(True)
    if args.json:
        print(state["text"])
    else:
        faces = sum(len(r.get("faces", [])) for r in records)
        print(f"{len(paths) - failed}/{len(paths)} images, {faces} faces (score > {args.threshold}); "
              f"results in {_show(report_path)}" + ("" if args.no_draw else f" and annotated images in {_show(out_dir)}/"))
    if failed:
        print(f"{failed} of {len(paths)} images failed", file=sys.stderr)
    return 1 if failed else 0
