"""Nothing lost, round 2 (issue 28): crop names that cannot collide, a lock per output folder,
bounds on what comes from outside (video frames, batches, export sizes, YAML, prediction
files), corrupt TFRecord shards and interrupted videos. Every case builds its own input."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from retinaface_tf.cli import main
from retinaface_tf.fileio import bundled_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo():
    return cv2.imread(str(bundled_image()))


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _write_video(path, frames, fourcc="MJPG", fps=10.0):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


# ------------------------------------------------------------------ 1. crop names
def test_crops_of_a_jpg_and_a_png_never_collide(tmp_path, photo, capsys):
    """``a.jpg`` and ``a.png`` (different pictures): one crop file per face, each the crop of its
    own image (the JSON's crop_matrix applied to its own source)."""
    photos = tmp_path / "in"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), photo)
    cv2.imwrite(str(photos / "a.png"), cv2.flip(cv2.resize(photo, (640, 426)), 1))
    crops = tmp_path / "crops"
    assert main(["detect", str(photos), "-o", str(tmp_path / "out"), "--crops", str(crops), "--no-draw"]) == 0
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    faces = [(r["image"], f) for r in report["images"] for f in r["faces"]]
    names = [f["crop"] for _, f in faces]
    assert len(faces) > 20 and len(set(names)) == len(faces) == len(list(crops.glob("*.png")))
    assert {Path(n).name for n in names if Path(n).name.startswith("a.jpg_face")} and \
        {Path(n).name for n in names if Path(n).name.startswith("a.png_face")}
    for image, face in faces:
        assert Path(face["crop"]).name.startswith(Path(image).name + "_face")
        crop = cv2.imread(face["crop"])
        expected = cv2.warpAffine(cv2.imread(image), np.array(face["crop_matrix"]), (112, 112))
        assert np.mean(np.abs(crop.astype(int) - expected.astype(int))) < 1.0


def test_crop_names_landing_on_planned_outputs_are_refused(tmp_path, photo, capsys):
    """``--crops`` = ``--output`` with an input named ``p.jpg_face0.png``: its annotated image
    would be a crop's name: refused before any work. The issue's ``p_face0.png`` no longer
    collides (crops carry the extension): both outputs are kept and the sha256 is right."""
    photos = tmp_path / "in"
    photos.mkdir()
    small = cv2.resize(photo, (512, 341))
    cv2.imwrite(str(photos / "p.jpg"), small)
    cv2.imwrite(str(photos / "p.jpg_face0.png"), cv2.flip(small, 1))
    out = tmp_path / "out"
    assert main(["detect", str(photos), "-o", str(out), "--crops", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "p.jpg_face0.png" in line and "face crop of" in line and str(photos / "p.jpg") in line
    assert not out.exists()

    (photos / "p.jpg_face0.png").rename(photos / "p_face0.png")
    assert main(["detect", str(photos), "-o", str(out), "--crops", str(out)]) == 0
    report = json.loads((out / "detections.json").read_text())
    for name, digest in report["annotated_files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert "p_face0.png" in report["annotated_files"] and (out / "p.jpg_face0.png").is_file()


def test_planned_output_collisions(tmp_path):
    from retinaface_tf.commands.detect import _input_names, _video_output_names, check_planned_outputs
    from retinaface_tf.errors import UsageError

    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"x\.jsonl: planned both as the JSON Lines of A and as the JSON Lines of B"):
        check_planned_outputs(out, [("x.jsonl", "the JSON Lines of A"), ("x.jsonl", "the JSON Lines of B")], None, [], [])
    (tmp_path / "in.jpg").write_bytes(b"")
    with pytest.raises(UsageError, match="an input would be replaced"):
        check_planned_outputs(tmp_path, [("in.jpg", "the annotated image")], None, [], [str(tmp_path / "in.jpg")])
    check_planned_outputs(out, [("a.jpg", "1"), ("b.jpg", "2")], out, [("a.jpg", "a.jpg")], [])  # a.jpg_face0 differs
    with pytest.raises(UsageError, match="face crop of"):
        check_planned_outputs(out, [("sub/a.jpg_face12.png", "x")], out / "sub", [("a.jpg", "in/a.jpg")], [])
    # two inputs of one name from two folders: distinct names, extension kept
    assert _input_names(["d1/a.jpg", "d2/a.jpg", "a.png"], ["d1/a.jpg", "d2/a.jpg", "a.png"]) == \
        ["a.jpg", "a_1.jpg", "a.png"]
    taken = {"detections.json"}
    assert _video_output_names("a.mp4", taken) == ("a.mp4", "a.jsonl")
    assert _video_output_names("a.mov", taken) == ("a.mov", "a.mov.jsonl")
    assert _video_output_names("a.webm", taken) == ("a.webm.mp4", "a.webm.jsonl")


def test_two_videos_of_one_stem_keep_both_results(tmp_path, photo, capsys):
    frames = [cv2.resize(photo, (160, 106))] * 2
    a = _write_video(tmp_path / "a.avi", frames)
    b = _write_video(tmp_path / "a.mp4", frames, fourcc="mp4v")
    out = tmp_path / "out"
    assert main(["detect", str(a), str(b), "-o", str(out)]) == 0
    report = json.loads((out / "detections.json").read_text())
    assert {"a.avi", "a.jsonl", "a.mp4", "a.mp4.jsonl"} <= set(report["annotated_files"])
    assert len((out / "a.jsonl").read_text().splitlines()) == len((out / "a.mp4.jsonl").read_text().splitlines()) == 2


def test_video_with_crops_is_refused(tmp_path, photo, capsys):
    clip = _write_video(tmp_path / "clip.avi", [cv2.resize(photo, (160, 106))] * 2)
    assert main(["detect", str(clip), "-o", str(tmp_path / "out"), "--crops", str(tmp_path / "c")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--crops" in line and "clip.avi" in line and "video" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()


def test_crops_are_written_one_at_a_time(tmp_path):
    """20 faces at 1024x1024: the peak memory of write_crops stays near one crop (3 MiB), not
    20 (60 MiB); each crop is written before the next is warped."""
    from retinaface_tf.commands.detect import write_crops
    from retinaface_tf.inference import Detections

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)
    n = 20
    x0 = rng.uniform(0, 500, n)
    y0 = rng.uniform(0, 300, n)
    boxes = np.stack([x0, y0, x0 + 80, y0 + 90], 1).astype(np.float32)
    lm = np.stack([boxes[:, :2] + [20, 30], boxes[:, :2] + [60, 30], boxes[:, :2] + [40, 50],
                   boxes[:, :2] + [25, 70], boxes[:, :2] + [55, 70]], 1).astype(np.float32)
    result = Detections(boxes, np.ones(n, np.float32), lm)
    faces = [{} for _ in range(n)]
    tracemalloc.start()
    write_crops(tmp_path / "c", "x.jpg", image, result, (1024, 1024), faces)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(list((tmp_path / "c").glob("x.jpg_face*.png"))) == n
    assert peak < 5 * 1024 * 1024 * 3, peak
    assert all(f["crop_from"] == "landmarks" for f in faces)


def test_a_crop_that_cannot_be_made_is_one_images_error(tmp_path, photo, capsys, monkeypatch):
    """An OpenCV error while making crops (e.g. out of memory at --crop-size 4096) fails that
    image only: the other inputs are still processed, exit 1, one line naming the crops."""
    import retinaface_tf.commands.detect as detect

    photos = tmp_path / "in"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), cv2.resize(photo, (512, 341)))
    cv2.imwrite(str(photos / "b.jpg"), cv2.resize(photo, (400, 266)))
    real = detect.align_faces

    def failing(image, *a, **k):
        if image.shape[1] == 512:
            raise cv2.error("OpenCV(4.x) error: (-4:Insufficient memory) Failed to allocate 50331648 bytes")
        return real(image, *a, **k)

    monkeypatch.setattr(detect, "align_faces", failing)
    out = tmp_path / "out"
    assert main(["detect", str(photos), "-o", str(out), "--crops", str(tmp_path / "c"), "--no-draw"]) == 1
    err = capsys.readouterr().err
    assert "cannot make the face crops: OpenCV:" in err and "Traceback" not in err
    report = json.loads((out / "detections.json").read_text())
    assert report["complete"] and len(report["images"]) == 2
    assert len(list((tmp_path / "c").glob("b.jpg_face*.png"))) > 3
