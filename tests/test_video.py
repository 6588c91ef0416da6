"""Faces in a video (issue 13 §4): a short video built from real photos with OpenCV's writer;
frame counts in = out, a frame's detections equal the image detections of the same pixels,
--every N, a truncated video keeps the frames read before the damage."""

import json

import cv2
import numpy as np
import pytest

from retinaface_tf.cli import main
from retinaface_tf.errors import ImageError
from retinaface_tf.fileio import bundled_image
from retinaface_tf.inference import Detector
from retinaface_tf.video import detect_video, is_video

SIZE = (320, 196)  # (w, h)
FRAMES = 10


@pytest.fixture(scope="module")
def frames():
    photo = cv2.resize(cv2.imread(str(bundled_image())), SIZE, interpolation=cv2.INTER_AREA)
    return [np.roll(photo, 12 * k, axis=1) for k in range(FRAMES)]


def _write(path, frames, fourcc="MJPG", fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, SIZE)
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def _read(path):
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


@pytest.fixture(scope="module")
def detector(bundled_model):
    model, config = bundled_model
    return Detector(model=model, config=config, batch_size=4)


def test_every_frame_equals_image_detection_of_the_same_pixels(tmp_path, frames, detector):
    clip = _write(tmp_path / "clip.avi", frames)
    decoded = _read(clip)  # the pixels the video path sees (MJPG is lossy)
    assert len(decoded) == FRAMES
    summary = detect_video(detector, clip, annotated=tmp_path / "out" / "clip.avi", jsonl=tmp_path / "out" / "c.jsonl")
    assert (summary.frames_read, summary.frames_detected, summary.frames_declared, summary.error) == \
        (FRAMES, FRAMES, FRAMES, None)
    assert len(_read(tmp_path / "out" / "clip.avi")) == FRAMES  # frame counts in = out
    lines = [json.loads(line) for line in (tmp_path / "out" / "c.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    np.testing.assert_allclose([line["time_s"] for line in lines], np.arange(FRAMES) / 10.0, atol=1e-3)
    for line, frame in zip(lines, decoded):
        alone = detector.detect(frame)
        assert len(line["faces"]) == len(alone) > 5
        np.testing.assert_allclose([f["score"] for f in line["faces"]], alone.scores, atol=1e-4)
        np.testing.assert_allclose([f["box_xyxy"] for f in line["faces"]], alone.boxes, atol=0.01)
    assert summary.faces == sum(len(line["faces"]) for line in lines)


def test_every_n_and_mp4(tmp_path, frames, detector):
    clip = _write(tmp_path / "clip.mp4", frames, fourcc="mp4v")
    summary = detect_video(detector, clip, annotated=tmp_path / "o.mp4", jsonl=tmp_path / "o.jsonl", every=3)
    assert (summary.frames_read, summary.frames_detected) == (FRAMES, 4)
    assert [json.loads(x)["frame"] for x in (tmp_path / "o.jsonl").read_text().splitlines()] == [0, 3, 6, 9]
    assert len(_read(tmp_path / "o.mp4")) == FRAMES
    assert is_video(clip) and not is_video(tmp_path / "a.jpg")


def test_truncated_and_unreadable_videos(tmp_path, frames, detector):
    clip = _write(tmp_path / "clip.avi", frames)
    data = clip.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    summary = detect_video(detector, cut, annotated=tmp_path / "cut_out.avi", jsonl=tmp_path / "cut.jsonl")
    assert 0 < summary.frames_read < FRAMES and summary.frames_declared == FRAMES
    assert summary.error == (f"{cut}: video stops at frame {summary.frames_read} of {FRAMES} declared (truncated or "
                             f"damaged); the {summary.frames_read} frames read are kept")
    assert len(_read(tmp_path / "cut_out.avi")) == summary.frames_read  # the frames before the damage are kept
    assert len((tmp_path / "cut.jsonl").read_text().splitlines()) == summary.frames_read
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(ImageError, match="junk.mp4: not a readable video"):
        detect_video(detector, junk, annotated=tmp_path / "junk_out.mp4")
    assert not (tmp_path / "junk_out.mp4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_detect_cli_on_a_video(tmp_path, frames, capsys):
    clip = _write(tmp_path / "clip.avi", frames)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 2])
    out = tmp_path / "out"
    code = main(["detect", str(clip), str(cut), str(bundled_image()), "-o", str(out), "--every", "2"])
    err = capsys.readouterr().err
    assert code == 1 and f"error: {cut}: video stops at frame" in err  # one line for the damaged video
    report = json.loads((out / "detections.json").read_text())
    by_name = {r["image"]: r for r in report["images"]}
    assert by_name[str(clip)]["video"]["frames"] == FRAMES and by_name[str(clip)]["video"]["frames_detected"] == 5
    assert len(by_name[str(bundled_image())]["faces"]) > 10
    assert {"clip.avi", "clip.jsonl", "cut.avi", "cut.jsonl"} <= set(report["annotated_files"])
    assert len(_read(out / "clip.avi")) == FRAMES
    # a second run may replace what the first wrote; a foreign file in the way is refused
    assert main(["detect", str(clip), "-o", str(out)]) == 0
    (out / "clip.jsonl").write_text("mine")
    assert main(["detect", str(clip), "-o", str(out)]) != 0
    assert (out / "clip.jsonl").read_text() == "mine"
    assert main(["detect", str(clip), "-o", str(tmp_path / "o2"), "--every", "0"]) != 0
    assert "--every must be >= 1, got 0" in capsys.readouterr().err
