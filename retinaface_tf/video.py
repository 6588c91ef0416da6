"""Faces in a video: every frame (or every N-th) through the :class:`~retinaface_tf.inference.Detector`,
batched like images, into an annotated video and a JSON Lines file.

>>> from retinaface_tf import Detector
>>> from retinaface_tf.video import detect_video
>>> summary = detect_video(Detector(), "clip.mp4", annotated="out/clip.mp4", jsonl="out/clip.jsonl")

Any container and codec OpenCV reads (FFmpeg backend). The JSON Lines file holds one line per
detected frame: ``{"frame": index, "time_s": timestamp, "faces": [...]}`` (faces as in
``detections.json``), written and flushed as frames finish. The annotated video has every input
frame (a frame between two sampled ones shows the faces of the last sampled frame), the input's
frame rate and size; it is written to a temporary file and renamed into place when reading stops,
so a kill never leaves a half-written file where an earlier one was.

Ctrl-C after some frames are finished keeps them: the JSON Lines file and the annotated video
hold every frame finished by then and are renamed into place, and :class:`VideoInterrupted` (a
``KeyboardInterrupt``) carries the summary. Frames larger than ``max_pixels`` are refused from
the container's declared size before any frame is decoded, then checked per decoded frame.

A video that cannot be opened raises a one-line :class:`~retinaface_tf.errors.ImageError`. A
video whose frames stop before the count its header declares (truncated or damaged) keeps every
frame read before the damage, in both outputs, and the summary carries a one-line error naming
the file and the frame it stopped at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Callable

import cv2
import numpy as np

from retinaface_tf.errors import ImageError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, atomic_file, check_max_pixels
from retinaface_tf.vis.draw import draw_detections

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own lines ("moov atom not found"): our error says it
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
# the writer's codec per output container; anything else is written as .mp4
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


def is_video(path) -> bool:
    """Whether ``path`` names a video by its extension."""
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def annotated_video_name(name: str) -> str:
    """The annotated video's file name for an input named ``name`` (same container where the
    writer supports it, else ``.mp4``)."""
    stem, ext = os.path.splitext(name)
    return name if ext.lower() in _FOURCC else stem + ".mp4"


@dataclasses.dataclass
class VideoSummary:
    """What :func:`detect_video` did: frames read (= frames written to the annotated video),
    frames detected (every ``every``-th), faces found, the frame count the header declared
    (0: unknown), and a one-line error when the video stopped early (else ``None``)."""

    frames_read: int
    frames_detected: int
    faces: int
    frames_declared: int
    fps: float
    error: str | None = None


DEFAULT = object()  # detect_video's max_pixels: the detector's


class VideoInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`detect_video` after some frames were finished: those frames' JSON
    Lines and annotated video are in place; ``summary`` (a :class:`VideoSummary`) says how many."""

    def __init__(self, summary: "VideoSummary"):
        super().__init__(summary.error)
        self.summary = summary


def _declared(cap, prop) -> int:
    value = cap.get(prop) or 0.0
    return int(value) if np.isfinite(value) and 0 < value < 2**31 else 0
def declared_frames(path) -> int | None:
    """The frame count the video's header declares (for a progress bar), or ``None`` when it
    declares none or cannot be opened (:func:`detect_video` reports that)."""
    try:
        cap = _open(os.fspath(path))
    except ImageError:
        return None
    try:
        count = _declared(cap, cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    return count or None


def _open(path: str):
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a regular file")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise ImageError(f"{path}: not a readable video (OpenCV cannot open it)")
    return cap


def _frame_limit_error(path: str, what: str, width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(f"{path}: {what} {width}x{height} = {width * height / 1e6:.4g} megapixels, over the limit of "
                      f"{max_pixels / 1e6:g} megapixels (raise it with --max-pixels)")


def detect_video(detector, path, *, annotated=None, jsonl=None, every: int = 1, batch_size: int | None = None,
                 on_frame: Callable[[int], None] | None = None, max_pixels=DEFAULT) -> VideoSummary:
    """Detect faces in the frames of the video ``path``.

    ``annotated``: write the video with boxes and landmarks drawn (every input frame);
    ``jsonl``: write one JSON line per detected frame. ``every``: detect every N-th frame (frame
    0, N, 2N, ...). Frames are batched ``batch_size`` at a time (default: the detector's).
    ``on_frame(index)`` is called for each frame read (a progress bar). ``max_pixels`` (default:
    the detector's): a video whose container declares larger frames is refused before any frame
    is decoded, and a decoded frame larger than that (the container lied) stops reading there,
    like damage: the frames before it are kept and the summary's error names the frame. Returns
    a :class:`VideoSummary`; an unopenable or oversized video raises :class:`ImageError` and
    leaves no file behind.
    """
    path = os.fspath(path)
    if int(every) < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    every = int(every)
    batch_size = int(batch_size or detector.batch_size)
    max_pixels = check_max_pixels(getattr(detector, "max_pixels", DEFAULT_MAX_PIXELS) if max_pixels is DEFAULT
                                  else max_pixels)
    cap = _open(path)
    width, height = (_declared(cap, prop) for prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    if max_pixels is not None and width * height > max_pixels:
        cap.release()
        raise _frame_limit_error(path, "frames declared", width, height, max_pixels)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    fps = fps if np.isfinite(fps) and fps > 0 else 25.0
    declared = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
    summary = VideoSummary(0, 0, 0, declared, fps)
    out_ext = os.path.splitext(os.fspath(annotated))[1].lower() if annotated is not None else ""
    video_ctx = atomic_file(annotated, suffix=out_ext or ".mp4") if annotated is not None else contextlib.nullcontext()
    lines_ctx = atomic_file(jsonl, suffix=".jsonl") if jsonl is not None else contextlib.nullcontext()
    with video_ctx as video_tmp, lines_ctx as lines_tmp:
        lines = open(lines_tmp, "w", encoding="utf-8") if lines_tmp is not None else None
        writer = None
        pending: list[tuple[int, float, np.ndarray]] = []  # frames read, not yet written
        last = None

        def flush():
            nonlocal writer, last
            sampled = [(i, f) for i, _, f in pending if i % every == 0]
            results = dict(zip((i for i, _ in sampled), detector.detect_batch([f for _, f in sampled]))) if sampled else {}
            for i, t, frame in pending:
                if i in results:
                    last = results[i]
                    summary.frames_detected += 1
                    summary.faces += len(last)
                    if lines is not None:
                        lines.write(json.dumps({"frame": i, "time_s": round(t, 4), "faces": last.to_list()}) + "\n")
                        lines.flush()
                if video_tmp is not None:
                    if writer is None:
                        writer = cv2.VideoWriter(os.fspath(video_tmp), cv2.VideoWriter_fourcc(*_FOURCC.get(out_ext, "mp4v")),
                                                 fps, (frame.shape[1], frame.shape[0]))
                        if not writer.isOpened():
                            raise ImageError(f"{annotated}: OpenCV cannot write a video there")
                    writer.write(draw_detections(frame, last) if last is not None else frame)
                done[0] = i + 1
            pending.clear()

        oversized = interrupted = None
        done = [0]  # frames written to both outputs
        budget = getattr(detector, "batch_pixels", None) or 24_000_000
        try:
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                if max_pixels is not None and frame.shape[0] * frame.shape[1] > max_pixels:
                    oversized = _frame_limit_error(path, f"frame {summary.frames_read} is", frame.shape[1],
                                                   frame.shape[0], max_pixels)
                    del frame
                    break
                t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                index = summary.frames_read
                summary.frames_read += 1
                pending.append((index, t if np.isfinite(t) else index / fps, frame))
                if on_frame is not None:
                    on_frame(index)
                # a batch is full, or the frames held (with --every N, those between) reach the memory budget
                if (sum(1 for i, _, _ in pending if i % every == 0) >= batch_size
                        or sum(f.shape[0] * f.shape[1] for _, _, f in pending) >= budget):
                    flush()
            flush()
        except KeyboardInterrupt as exc:  # the frames finished so far are kept, as finished images are
            if not done[0]:
                raise
            interrupted = exc
        finally:
            cap.release()
            if writer is not None:
                writer.release()
            if lines is not None:
                lines.close()
        if summary.frames_read == 0:  # nothing to keep: the temporary files are removed
            raise oversized or ImageError(f"{path}: no frame could be read (damaged or not a video)")
    if interrupted is not None:
        summary.frames_read = done[0]
        summary.error = (f"{path}: interrupted at frame {done[0]}; the {done[0]} frames before it are kept "
                         "(JSON Lines and annotated video)")
        raise VideoInterrupted(summary) from interrupted
    if oversized is not None:
        summary.error = f"{oversized}; the {summary.frames_read} frames before it are kept"
    elif declared and summary.frames_read < declared:
        summary.error = (f"{path}: video stops at frame {summary.frames_read} of {declared} declared (truncated or "
                         f"damaged); the {summary.frames_read} frames read are kept")
    return summary
