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


# ------------------------------------------------------------------ 2. one run per output folder
_HOLDER = """
import sys, time
from retinaface_tf.fileio import output_lock
with output_lock(sys.argv[1], command="holder " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def holder():
    """``holder(target)``: a second real process that holds ``target``'s lock until the test ends."""
    import subprocess
    import sys

    procs = []

    def start(target, seconds=120):
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target), str(seconds)], stdout=subprocess.PIPE,
                                env=_env(), text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_output_lock_in_one_process(tmp_path):
    from retinaface_tf.errors import OutputInUseError
    from retinaface_tf.fileio import lock_path, output_lock

    out = tmp_path / "a" / "b" / "out"
    with output_lock(out, command="first run") as path:
        assert path == lock_path(tmp_path / "a" / "b" / "x" / ".." / "out") and path.is_file()
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["command"] == "first run"
        with pytest.raises(OutputInUseError) as exc:
            with output_lock(str(out) + "/"):
                pass
        msg = str(exc.value)
        assert "\n" not in msg and f"in use by another run (pid {os.getpid()}, started " in msg and "first run" in msg
    assert not path.exists() and not (tmp_path / "a").exists()  # the lock and the folders made for it are gone
    with output_lock(out):  # free again
        pass


@pytest.mark.parametrize("command", ["detect", "train", "evaluate", "convert", "export-tflite", "export-saved"])
def test_every_writing_command_refuses_a_locked_output(tmp_path, holder, capsys, command):
    """Another process holds the output: the command is refused at once with one line naming the
    holder's pid, and the output is untouched (not even created)."""
    out = tmp_path / ("out.tflite" if command == "export-tflite" else "out")
    proc = holder(out)
    argv = {"detect": ["detect", str(bundled_image()), "-o", str(out)],
            "train": ["train", "--output", str(out), "--label-file", "none.txt", "--images", "none"],
            "evaluate": ["evaluate", "-g", str(tmp_path / "gt"), "--images", str(tmp_path / "im"),
                         "--save-predictions", str(out)],
            "convert": ["convert", str(tmp_path / "x.pth"), "-o", str(out)],
            "export-tflite": ["export", "--format", "tflite", "-o", str(out)],
            "export-saved": ["export", "-o", str(out)]}[command]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"in use by another run (pid {proc.pid}, started " in line and f"holder {out}" in line
    assert not out.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, holder, capsys):
    from retinaface_tf.fileio import lock_path

    out = tmp_path / "out"
    proc = holder(out)
    proc.kill()
    proc.wait()
    lock = lock_path(out)
    assert json.loads(lock.read_text())["pid"] == proc.pid  # left behind by kill -9
    assert main(["detect", str(bundled_image()), "-o", str(out), "--no-draw"]) == 0
    assert json.loads((out / "detections.json").read_text())["complete"] and not lock.exists()


@pytest.mark.slow
def test_two_detect_processes_into_one_folder(tmp_path, photo):
    """Two real ``detect`` processes into one --output: the second is refused while the first
    runs (it is paused with SIGSTOP once it holds the lock, so the overlap is certain); the first
    finishes and its report is complete."""
    import signal
    import subprocess
    import sys
    import time

    from retinaface_tf.fileio import lock_path

    photos = tmp_path / "in"
    photos.mkdir()
    for k in range(3):
        cv2.imwrite(str(photos / f"p{k}.jpg"), cv2.resize(photo, (320 + 32 * k, 213)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "retinaface_tf", "detect", str(photos), "-o", str(out)]
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if json.loads(lock_path(out).read_text())["pid"] == first.pid:
                break
        except (OSError, ValueError, KeyError):
            pass
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    line = _one_error_line(second.stderr)
    assert f"--output {out}: in use by another run (pid {first.pid}, started " in line
    assert first.wait(timeout=300) == 0
    report = json.loads((out / "detections.json").read_text())
    assert report["complete"] and len(report["images"]) == 3 and not lock_path(out).exists()


# ------------------------------------------------------------------ 3. the remaining silent ones
@pytest.mark.parametrize("flag", ["--max-detections", "--pre-nms-top-k"])
@pytest.mark.parametrize("value", ["0", "-1", "100001"])
def test_export_refuses_zero_detections(tmp_path, capsys, flag, value):
    out = tmp_path / "m"
    assert main(["export", "-o", str(out), flag, value]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{flag} must be in [1, 100000], got {value}" in line and not out.exists()


def test_export_settings_never_turn_zero_into_the_default():
    from retinaface_tf.config import Config
    from retinaface_tf.errors import ExportError
    from retinaface_tf.serving import ExportSettings

    cfg = Config.load("mobilenet025")
    assert ExportSettings.from_config(cfg).max_detections == 750
    for kwargs in ({"max_detections": 0}, {"pre_nms_top_k": 0}):
        with pytest.raises(ExportError, match=r"must be in \[1, 100000\], got"):
            ExportSettings.from_config(cfg, **kwargs)


def test_label_values_that_overflow_float32_are_refused(tmp_path):
    from retinaface_tf.data.widerface import read_retinaface_labels, read_wider_bbx_gt
    from retinaface_tf.errors import LabelFileError

    label = tmp_path / "label.txt"
    label.write_text("# a.jpg\n10 10 20 20\n# b.jpg\n1e39 1e39 1e39 1e39\n")
    with pytest.raises(LabelFileError, match=rf"^{label}:4: '1e39' is out of range"):
        read_retinaface_labels(label)
    label.write_text("# a.jpg\n3e38 10 3e38 20\n")  # finite in float32 each, inf as x + w
    with pytest.raises(LabelFileError, match=rf"^{label}:2: '3e38' is out of range"):
        read_retinaface_labels(label)
    gt = tmp_path / "bbx.txt"
    gt.write_text("a.jpg\n1\n1 2 1e39 4 0 0 0 0 0 0\n")
    with pytest.raises(LabelFileError, match=rf"^{gt}:3: '1e39' is out of range"):
        read_wider_bbx_gt(gt)


# ------------------------------------------------------------------ 4. bounds
def _fifo(path):
    os.mkfifo(path)
    return path


def test_label_and_prediction_files_must_be_regular(tmp_path):
    """A FIFO (which would hang) and a symlink to /dev/zero (which never ends) are refused as
    "not a regular file", at once; so is a file past the size limit."""
    from retinaface_tf.data import widerface as D
    from retinaface_tf.errors import LabelFileError, PredictionError
    from retinaface_tf.evaluation.widerface import read_prediction_file, read_predictions

    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    for bad in (_fifo(tmp_path / "fifo.txt"), tmp_path / "zero.txt"):
        with pytest.raises(LabelFileError, match=rf"^{bad}: cannot read label file: not a regular file"):
            D.read_annotations(bad)
        with pytest.raises(PredictionError, match=rf"^{bad}: not a regular file"):
            read_prediction_file(bad)
    preds = tmp_path / "preds" / "0--Parade"
    preds.mkdir(parents=True)
    (preds / "x.txt").write_text("x\n1\n1 2 3 4 0.9\n")
    _fifo(preds / "y.txt")
    with pytest.raises(PredictionError, match=r"y\.txt: not a regular file"):
        read_predictions(tmp_path / "preds")
    with pytest.raises(LabelFileError, match=r"\.mat: not a regular file"):
        D.load_mat(_fifo(tmp_path / "gt.mat"))


def test_label_file_size_limit(tmp_path, monkeypatch):
    from retinaface_tf.data import widerface as D
    from retinaface_tf.errors import LabelFileError

    monkeypatch.setattr(D, "MAX_LABEL_BYTES", 1000)
    label = tmp_path / "label.txt"
    label.write_text("# a.jpg\n" + "10 10 20 20\n" * 200)
    with pytest.raises(LabelFileError, match=r"label.txt: cannot read label file: 2408 bytes, more than a label file may hold \(1000 bytes\)"):
        D.read_retinaface_labels(label)


def _alias_bomb(levels=9):
    parts = ["&a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for i in range(1, levels):
        parts.append(f"&{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    return parts


def test_yaml_alias_bombs_are_refused_with_a_short_message(tmp_path, capsys):
    import time

    from retinaface_tf.config import Config
    from retinaface_tf.errors import ConfigError

    t = time.perf_counter()
    assert main(["train", "-o", str(tmp_path / "run"), "--set", "train.epochs=[" + ", ".join(_alias_bomb()) + "]"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "aliases (*a) are not allowed" in line and len(line) < 400
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("lols:\n" + "".join(f"  - {p}\n" for p in _alias_bomb()) + "base: *i\n")
    with pytest.raises(ConfigError) as exc:
        Config.load(str(cfg))
    assert f"{cfg}:" in str(exc.value) and "aliases (*a) are not allowed" in str(exc.value) and len(str(exc.value)) < 300
    # without aliases: a deep nest, a long value and a huge base are all one short line
    for value in ("[" * 20000, "x" * 200000):
        with pytest.raises(ConfigError) as exc:
            Config.load("mobilenet025").override({"train.epochs": value})
        assert len(str(exc.value)) < 300 and "\n" not in str(exc.value)
    cfg.write_text("base: [" + ", ".join(["[1, 2, 3, 4, 5, 6, 7, 8]"] * 5000) + "]\n")
    with pytest.raises(ConfigError, match="unknown config name") as exc:
        Config.load(str(cfg))
    assert len(str(exc.value)) < 400
    with pytest.raises(ConfigError, match="not a regular file"):
        Config.load(str(_fifo(tmp_path / "fifo.yaml")))
    assert time.perf_counter() - t < 20


@pytest.mark.parametrize("size", ["100000x100000", "9000x32", "5000x5000"])
def test_export_input_size_is_bounded(tmp_path, capsys, size):
    out = tmp_path / "m.tflite"
    assert main(["export", "--format", "tflite", "--input-size", size, "-o", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--input-size {size}: input size {size} is too large" in line
    assert list(tmp_path.iterdir()) == []


def _png_header(path, width, height):
    """A PNG whose IHDR declares ``width x height`` (no pixel data: only the header is read)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk +
                     struct.pack(">I", zlib.crc32(chunk)))
    return path


def test_export_calibration_image_over_the_limit_names_no_foreign_flag(tmp_path, capsys):
    big = _png_header(tmp_path / "big.png", 20000, 20000)
    out = tmp_path / "m.tflite"
    assert main(["export", "--format", "tflite", "--quantize", "int8", "--calibration-images", str(big),
                 "-o", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{big}: PNG of 20000x20000" in line and "give smaller calibration images" in line
    assert "--max-pixels" not in line and not out.exists()


@pytest.fixture(scope="module")
def detector(bundled_model):
    from retinaface_tf.inference import Detector

    model, config = bundled_model
    return Detector(model=model, config=config, batch_size=4)


def test_video_frames_obey_max_pixels(tmp_path, photo, capsys, detector, monkeypatch):
    """The container's declared size is checked before any frame is decoded (one line naming the
    file, nothing left behind); a frame the container did not declare is checked once decoded."""
    import retinaface_tf.video as video
    from retinaface_tf.errors import ImageError

    clip = _write_video(tmp_path / "clip.avi", [cv2.resize(photo, (400, 300))] * 3)
    small = tmp_path / "small.jpg"
    cv2.imwrite(str(small), cv2.resize(photo, (300, 200)))
    out = tmp_path / "out"
    assert main(["detect", str(clip), str(small), "-o", str(out), "--max-pixels", "100K"]) == 1
    err = capsys.readouterr().err
    assert f"error: {clip}: frames declared 400x300 = 0.12 megapixels, over the limit of 0.1 megapixels" in err
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "small.jpg"]  # no temporary file
    report = json.loads((out / "detections.json").read_text())
    assert report["images"][0]["error"].startswith(f"{clip}: frames declared")

    monkeypatch.setattr(video, "_declared", lambda cap, prop: 0)  # a container that declares nothing
    with pytest.raises(ImageError, match=r"clip.avi: frame 0 is 400x300 = 0.12 megapixels, over the limit"):
        video.detect_video(detector, clip, annotated=tmp_path / "o" / "c.avi", jsonl=tmp_path / "o" / "c.jsonl",
                           max_pixels=100_000)
    assert list((tmp_path / "o").iterdir()) == []


def test_batches_are_cut_to_the_pixel_budget(photo, bundled_model, monkeypatch):
    """batch_size 8, four equal and four mixed images, and a budget of 2 of the largest: batches of at
    most 2, cut before TensorFlow runs; detections equal the unbounded batch's."""
    from retinaface_tf.inference import Detector

    model, config = bundled_model
    images = [cv2.resize(photo, (320, 224))] * 4 + [cv2.resize(photo, (320 - 32 * k, 224)) for k in range(1, 5)]
    wide = Detector(model=model, config=config, batch_size=8)
    tight = Detector(model=model, config=config, batch_size=8, batch_pixels=2 * 320 * 224)
    sizes = []
    real = Detector._run
    monkeypatch.setattr(Detector, "_run", lambda self, batch, thr: sizes.append(len(batch)) or real(self, batch, thr))
    expected = wide.detect_batch(images)
    assert max(sizes) > 2
    sizes.clear()
    got = tight.detect_batch(images)
    assert sizes and max(sizes) <= 2 and sum(sizes) == len(images)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
    with pytest.raises(Exception, match="batch_pixels must be a whole number >= 1"):
        Detector(model=model, config=config, batch_pixels=0)


def test_ctrl_c_during_a_video_keeps_the_finished_frames(tmp_path, photo, capsys, monkeypatch):
    """Ctrl-C after two batches of a 12-frame video: the JSON Lines and the annotated video hold
    the 8 finished frames, and detections.json records them with "complete": false."""
    from retinaface_tf.inference import Detector

    frames = [np.roll(cv2.resize(photo, (320, 212)), 8 * k, axis=1) for k in range(12)]
    clip = _write_video(tmp_path / "clip.avi", frames)
    calls = []
    real = Detector.detect_batch

    def interrupted(self, images, **kwargs):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, images, **kwargs)

    monkeypatch.setattr(Detector, "detect_batch", interrupted)
    out = tmp_path / "out"
    assert main(["detect", str(clip), "-o", str(out), "--batch-size", "4"]) == 130
    lines = (out / "clip.jsonl").read_text().splitlines()
    assert [json.loads(x)["frame"] for x in lines] == list(range(8))
    cap = cv2.VideoCapture(str(out / "clip.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    cap.release()
    report = json.loads((out / "detections.json").read_text())
    assert report["complete"] is False
    record = report["images"][0]
    assert record["video"]["frames"] == 8 and "interrupted at frame 8" in record["error"]
    assert set(report["annotated_files"]) == {"clip.avi", "clip.jsonl"}
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ 5. corrupt TFRecord shards
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import make_dataset

    from retinaface_tf.data.tfrecord import write_tfrecords
    from retinaface_tf.data.widerface import read_annotations

    root = tmp_path_factory.mktemp("shards")
    label, images = make_dataset(root / "data", images=4, size=(64, 64))
    paths = write_tfrecords(read_annotations(label), images, root / "good" / "train", num_shards=2)
    return root, [Path(p) for p in paths], label, images


def _record(encoded: bytes, bbox, landmarks=None, has=None, filename=b"x.jpg") -> bytes:
    import tensorflow as tf

    n = len(bbox) // 4
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
               "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename])),
               "face/bbox": tf.train.Feature(float_list=tf.train.FloatList(value=bbox)),
               "face/landmarks": tf.train.Feature(float_list=tf.train.FloatList(
                   value=[-1.0] * 10 * n if landmarks is None else landmarks)),
               "face/has_landmarks": tf.train.Feature(int64_list=tf.train.Int64List(
                   value=[0] * n if has is None else has))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shard(path, records):
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return path


def test_corrupt_shards_name_the_shard_and_record(tmp_path, shards):
    from retinaface_tf.data.tfrecord import check_tfrecords
    from retinaface_tf.errors import TFRecordError

    _, good, _, images = shards
    assert check_tfrecords([str(p) for p in good]) == 4
    data = good[0].read_bytes()
    jpeg = (images / "im0.jpg").read_bytes()
    cases = {
        "truncated": (data[: len(data) - 40], r"record 1: cannot be read, the shard is truncated or damaged"),
        "flipped": (data[:60] + bytes([data[60] ^ 0x10]) + data[61:], r"record 0: cannot be read"),
        "random": (np.random.default_rng(1).bytes(3000), r"record 0: cannot be read"),
    }
    for name, (content, needle) in cases.items():
        bad = tmp_path / f"{name}.tfrecord"
        bad.write_bytes(content)
        with pytest.raises(TFRecordError, match=rf"^{bad}: {needle}") as exc:
            check_tfrecords(str(bad))
        assert "\n" not in str(exc.value)
    records = {
        "bbox5": (_record(jpeg, [1.0, 2, 30, 40, 5]), r"record 1 \(x.jpg\): face/bbox holds 5 values, not a multiple of 4"),
        "brokenjpeg": (_record(jpeg[:200] + b"\x00" * 50, [1.0, 2, 30, 40]), r"record 1 \(x.jpg\): image/encoded: "),
        "inf": (_record(jpeg, [1.0, 2, float("inf"), 40]), r"record 1 \(x.jpg\): face/bbox holds a value that is not finite"),
        "text": (_record(b"hello", [1.0, 2, 30, 40]), r"record 1 \(x.jpg\): image/encoded: not a readable image"),
        "notexample": (b"\xff\xff\xff", r"record 1: not a tf.train.Example"),
        "landmarks": (_record(jpeg, [1.0, 2, 30, 40], landmarks=[1.0] * 7), r"record 1 \(x.jpg\): 1 faces but 7 face/landmarks"),
    }
    ok = _record(jpeg, [1.0, 2, 30, 40])
    for name, (record, needle) in records.items():
        bad = _write_shard(tmp_path / f"{name}.tfrecord", [ok, record])
        with pytest.raises(TFRecordError, match=rf"^{bad}: {needle}"):
            check_tfrecords(str(bad))
    with pytest.raises(TFRecordError, match="not a regular file"):
        check_tfrecords(str(_fifo(tmp_path / "fifo.tfrecord")))


def test_train_on_a_corrupt_shard_fails_at_once_and_leaves_nothing(tmp_path, shards, capsys):
    """One line naming the shard, no run folder; the corrected rerun (other shards) then trains."""
    _, good, _, _ = shards
    bad = tmp_path / "bad" / "train-00000.tfrecord"
    bad.parent.mkdir()
    bad.write_bytes(good[0].read_bytes()[:-30])
    run = tmp_path / "run"
    common = ["train", "--output", str(run), "--set", "data.image_size=64", "--batch-size", "2", "--epochs", "1",
              "--steps-per-epoch", "1", "--quiet"]
    assert main(common + ["--tfrecords", str(tmp_path / "bad" / "*.tfrecord")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{bad}: record 1: cannot be read" in line
    assert not run.exists()
    assert main(common + ["--tfrecords", str(good[0].parent / "*.tfrecord")]) == 0
    assert (run / "model.weights.h5").is_file()


def test_a_start_that_fails_in_the_first_step_leaves_nothing(tmp_path, shards, monkeypatch):
    """The data breaks inside the first step (a shard damaged after the check): one-line
    TrainingError, and run.yaml / config.yaml are removed so a corrected rerun is not refused."""
    import tensorflow as tf

    import retinaface_tf.training.trainer as trainer
    from retinaface_tf.config import Config
    from retinaface_tf.errors import TrainingError

    _, good, _, _ = shards
    monkeypatch.setattr(trainer, "check_tfrecords", lambda *a, **k: 4)
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(np.random.default_rng(0).bytes(500))
    cfg = Config.load("mobilenet025").override({"data.image_size": "64", "train.batch_size": "2",
                                                "train.epochs": "1"})
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"bad.tfrecord: training stopped, the data cannot be read \(DataLossError") \
            as exc:
        trainer.train(cfg, output_dir=run, tfrecord_pattern=str(bad), steps_per_epoch=1, verbose=0)
    assert "\n" not in str(exc.value) and "run folder was removed" in str(exc.value)
    assert not run.exists()
