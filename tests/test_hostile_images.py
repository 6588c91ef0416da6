"""Nothing lost: hostile images, file names and output locations for detect / evaluate / the
Detector / training data. Every hostile input is built here, in tmp_path."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from retinaface_tf import fileio
from retinaface_tf.cli import main
from retinaface_tf.errors import RetinaFaceError
from retinaface_tf.fileio import (DEFAULT_MAX_PIXELS, ImageError, bundled_image, parse_pixel_count, probe_image,
                                  read_image)

BIG = 30000  # 30000 x 30000 = 900 megapixels: 2.7 GB of BGR once decoded


# ------------------------------------------------------------------ crafted headers
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(w: int, h: int) -> bytes:
    """A tiny PNG whose IHDR declares w x h (the pixel data is a few zero rows, never reached)."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def jpeg_bytes(w: int, h: int) -> bytes:
    # an APP1 (EXIF-like) segment holding a decoy 16x16 SOF first: a naive byte scan would read it
    decoy = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03" + b"\x00" * 9
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(decoy)) + decoy
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", h, w) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app1 + sof + b"\xff\xd9"


def bmp_bytes(w: int, h: int) -> bytes:
    dib = struct.pack("<IiiHHIIiiII", 40, w, -h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + dib


def gif_bytes(w: int, h: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b";"


def webp_bytes(w: int, h: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (w - 1).to_bytes(3, "little") + \
        (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def tiff_be_bytes(w: int, h: int) -> bytes:  # big-endian classic TIFF, LONG tags
    entries = struct.pack(">HHII", 256, 4, 1, w) + struct.pack(">HHII", 257, 4, 1, h)
    return b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) + entries + b"\x00" * 4


def bigtiff_bytes(w: int, h: int) -> bytes:  # little-endian BigTIFF, SHORT width, LONG8 height
    entries = struct.pack("<HHQQ", 256, 3, 1, w) + struct.pack("<HHQQ", 257, 16, 1, h)
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + entries + b"\x00" * 8


def pnm_bytes(w: int, h: int) -> bytes:
    return f"P6\n# a comment 1 1\n{w} {h}\n255\n".encode()


def jp2_bytes(w: int, h: int) -> bytes:
    def box(kind, body):
        return struct.pack(">I", 8 + len(body)) + kind + body
    ihdr = box(b"ihdr", struct.pack(">IIHBBBB", h, w, 3, 7, 7, 0, 0))
    return (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ") + box(b"jp2h", ihdr)
            + box(b"jp2c", b"\xff\x4f\xff\x51"))


CRAFTED = {"PNG": png_bytes, "JPEG": jpeg_bytes, "BMP": bmp_bytes, "GIF": gif_bytes, "WebP": webp_bytes,
           "TIFF": tiff_be_bytes, "BigTIFF": bigtiff_bytes, "PNM": pnm_bytes, "JPEG 2000": jp2_bytes}


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel is decoded."""
    def refuse(*a, **k):
        raise AssertionError("cv2.imdecode was called: the header check should have refused the image")
    monkeypatch.setattr(cv2, "imdecode", refuse)


def _one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    return text.strip()


def _messages(stderr: str) -> list[str]:
    """stderr lines without tqdm's progress bars (redrawn with carriage returns)."""
    parts = (p.strip() for p in stderr.replace("\r", "\n").splitlines())
    return [p for p in parts if p and not re.match(r"^\d+%\|", p)]


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_pixel_bombs_are_refused_from_the_header_before_decoding(tmp_path, kind, no_decoding):
    w, h = (BIG, BIG) if kind not in ("GIF",) else (65535, 65535)
    w = 60000 if kind == "BigTIFF" else w  # SHORT field
    path = tmp_path / f"bomb.{kind.lower().replace(' ', '')}"
    path.write_bytes(CRAFTED[kind](w, h))
    header = probe_image(path, max_pixels=None)
    assert (header.width, header.height) == (w, h)
    assert header.format == {"BigTIFF": "TIFF"}.get(kind, kind)
    with pytest.raises(ImageError) as err:
        read_image(path)
    msg = _one_line(str(err.value))
    assert msg.startswith(f"{path}: ") and f"{w}x{h}" in msg and "over the limit of 100 megapixels" in msg
    assert "--max-pixels" in msg


def test_header_sizes_match_what_opencv_decodes(tmp_path):
    photo = cv2.imread(str(bundled_image()))[:37, :53]  # odd sizes catch swapped fields
    for ext in (".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".jp2", ".ppm", ".pgm", ".pam", ".sr", ".hdr"):
        image = photo if ext != ".pgm" else photo[..., 0]
        if ext == ".hdr":
            image = photo.astype(np.float32) / 255
        ok, buf = cv2.imencode(ext, image)
        if not ok:  # an OpenCV build without this codec
            continue
        path = tmp_path / f"x{ext}"
        path.write_bytes(buf.tobytes())
        header = probe_image(path)
        assert (header.height, header.width) == read_image(path).shape[:2] == (37, 53), ext


def test_pixel_limit_is_adjustable(tmp_path):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(ImageError, match=r"50x40 = 0.002 megapixels, over the limit of 0.001 megapixels"):
        read_image(path, max_pixels=1000)
    assert read_image(path, max_pixels=2000).shape == (40, 50, 3)
    assert read_image(path, max_pixels=None).shape == (40, 50, 3)
    assert parse_pixel_count("400M") == 400_000_000 and parse_pixel_count("2500") == 2500
    assert parse_pixel_count("1.5k") == 1500 and DEFAULT_MAX_PIXELS == 100_000_000
    for bad in ("0", "-5", "nan", "inf", "1.5", "lots"):
        with pytest.raises(ValueError):
            parse_pixel_count(bad)


def test_unknown_and_truncated_headers_are_one_line(tmp_path, no_decoding):
    cases = {"text.jpg": (b"hello, not an image", "unknown format"),
             "empty.png": (b"", "empty file"),
             "short.png": (png_bytes(10, 10)[:20], "corrupt header"),
             "cut.jpg": (b"\xff\xd8\xff\xe1\x40\x00abc", "corrupt header"),
             "zero.png": (png_bytes(0, 10), "no pixels")}
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError) as err:
            read_image(tmp_path / name)
        msg = _one_line(str(err.value))
        assert msg.startswith(f"{tmp_path / name}: ") and needle in msg, msg


def test_named_pipe_device_and_folder_are_refused_without_blocking(tmp_path):
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("read_image blocked")))
    signal.alarm(20)
    try:
        for path, needle in ((pipe, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                             (tmp_path, "is a directory")):
            with pytest.raises(ImageError) as err:
                read_image(path)
            assert _one_line(str(err.value)) == f"{path}: {needle}" + (
                " (a pipe, device or socket); only files are read" if "regular" in needle else ", not an image")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _non_utf8_name(folder: Path) -> Path:
    path = folder / os.fsdecode(b"caf\xe9.jpg")
    try:
        path.write_bytes(b"")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem refuses file names that are not valid UTF-8")
    return path


def test_non_utf8_file_name_is_read(tmp_path):
    path = _non_utf8_name(tmp_path)
    photo = cv2.imread(str(bundled_image()))
    path.write_bytes(cv2.imencode(".jpg", photo)[1].tobytes())
    assert read_image(path).shape == photo.shape
    assert read_image(os.fsencode(path)).shape == photo.shape


# ------------------------------------------------------------------ Detector
def test_detector_settings_are_checked_before_loading():
    from retinaface_tf.inference import Detector, DetectorError

    nan, inf = float("nan"), float("inf")
    for kwargs, needle in [({"score_threshold": nan}, "score_threshold must be a number in [0, 1], got nan"),
                           ({"iou_threshold": nan}, "iou_threshold must be a number in [0, 1], got nan"),
                           ({"iou_threshold": inf}, "iou_threshold must be a number in [0, 1], got inf"),
                           ({"score_threshold": 1.5}, "score_threshold"),
                           ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
                           ({"max_detections": 0}, "max_detections must be a whole number >= 1"),
                           ({"pre_nms_top_k": -3}, "pre_nms_top_k"),
                           ({"max_size": 0}, "max_size"),
                           ({"max_pixels": 0}, "max_pixels")]:
        with pytest.raises(DetectorError) as err:
            Detector(weights="/nonexistent/weights", **kwargs)  # fails on the setting, not on the weights
        assert needle in _one_line(str(err.value))
        assert isinstance(err.value, RetinaFaceError) and isinstance(err.value, ValueError)


@pytest.fixture(scope="module")
def detector():
    from retinaface_tf.inference import Detector

    return Detector(max_size=1000)


def test_detector_bad_calls_are_one_line_errors(detector):
    from retinaface_tf.inference import DetectorError

    photo = cv2.imread(str(bundled_image()))
    for resize in (0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(DetectorError, match="resize must be a finite number > 0"):
            detector.detect(photo, resize=resize)
    with pytest.raises(DetectorError, match="score_threshold must be a number in"):
        detector.detect(photo, score_threshold=float("nan"))
    with pytest.raises(ImageError, match="over the limit of 100 megapixels"):
        detector.detect(photo, resize=100)  # 102400 x 62400 pixels: refused before resizing
    with pytest.raises(ImageError, match="image 0: not an image"):
        detector.detect(None)


def test_iter_detect_yields_an_error_per_bad_item_and_goes_on(detector, tmp_path):
    photo = cv2.imread(str(bundled_image()))
    items = [photo, None, np.zeros((0, 4, 3), np.uint8), str(tmp_path / "missing.jpg"), np.zeros((4, 4), object),
             photo]
    results = dict(detector.iter_detect(items))
    assert sorted(results) == list(range(len(items)))
    for i in (1, 2, 3, 4):
        assert isinstance(results[i], RetinaFaceError), i
        _one_line(str(results[i]))
    assert str(results[1]) == "image 1: not an image (got None)"
    assert "missing.jpg: no such file" in str(results[3])
    assert len(results[0]) == len(results[5]) > 0


def test_thin_strip_at_max_size_keeps_one_pixel(detector):
    strip = np.full((1, 20000, 3), 120, np.uint8)  # 20000 * 1000/20000 = 1000 wide, 0.05 -> 0 rows
    net_input, scale = detector._prepare(strip, None)
    assert net_input.shape == (1, 1000, 3) and scale == (20.0, 1.0)
    assert len(detector.detect(strip)) == 0
    tall = np.full((20000, 1, 3), 120, np.uint8)
    assert detector._prepare(tall, None)[0].shape == (1000, 1, 3)


# ------------------------------------------------------------------ detect: output location
def _photos(folder: Path, n: int = 2, size=(160, 104)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = cv2.resize(cv2.imread(str(bundled_image())), size)
    paths = []
    for i in range(n):
        p = folder / f"p{i}.jpg"
        cv2.imwrite(str(p), np.roll(photo, 7 * i, axis=1))
        paths.append(p)
    return paths


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_that_holds_inputs_or_foreign_files_is_refused_before_any_work(tmp_path, capsys):
    photos = tmp_path / "photos"
    files = _photos(photos)
    before = _snapshot(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"my photo")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "detections.json").write_text('{"something": "else"}')
    cases = [
        (["detect", str(photos), "--output", str(photos)], f"{photos}: input lies inside the output folder {photos}"),
        (["detect", str(files[0]), "--output", str(photos)], f"{files[0]}: input lies inside the output folder"),
        (["detect", str(files[0]), "--output", str(tmp_path)], "input lies inside the output folder"),
        (["detect", str(files[0]), "--output", str(files[1])], f"--output {files[1]}: exists and is not a folder"),
        (["detect", str(files[0]), "--output", str(files[1] / "sub")], "cannot write there: Not a directory"),
        (["detect", str(files[0]), "--output", str(foreign)],
         f"--output {foreign}: folder is not empty and holds no detections.json from an earlier detect"),
        (["detect", str(files[0]), "--output", str(fake)], "detections.json was not written by retinaface-tf detect"),
        (["detect", str(files[0]), "--score-threshold", "nan"], "--score-threshold must be in [0, 1], got nan"),
        (["detect", str(files[0]), "--score-threshold", "inf"], "--score-threshold must be in [0, 1], got inf"),
        (["detect", str(files[0]), "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = _one_line(capsys.readouterr().err)
        assert err.startswith("retinaface-tf detect: error: ") and needle in err, (argv, err)
    after = _snapshot(tmp_path)
    assert after == {**before, **{p.relative_to(tmp_path): p.read_bytes() for p in
                                  (foreign / "holiday.jpg", fake / "detections.json")}}


def test_rerun_replaces_only_what_detect_wrote(tmp_path, capsys):
    photos = tmp_path / "photos"
    _photos(photos)
    out = photos / "annotated"  # the output folder inside the input folder: skipped when walking photos
    for _ in range(2):
        assert main(["detect", str(photos), "--output", str(out)]) == 0
        report = json.loads((out / "detections.json").read_text())
        assert [r["image"] for r in report["images"]] == [str(photos / "p0.jpg"), str(photos / "p1.jpg")]
        assert report["complete"] is True and sorted(report["annotated_files"]) == ["p0.jpg", "p1.jpg"]
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")  # a foreign file that no output name collides with: left alone
    mine = b"\xff\xd8 my own picture"
    (out / "p1.jpg").write_bytes(mine)  # a file detect wrote, since replaced by the user
    before = _snapshot(out)
    assert main(["detect", str(photos), "--output", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{out / 'p1.jpg'}: exists and is not an annotated image detect wrote (or was changed since)" in err
    assert _snapshot(out) == before


# ------------------------------------------------------------------ detect: nothing lost
def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("retinaface-tf")
    return [str(script)] if script.exists() else [sys.executable, "-m", "retinaface_tf.cli"]


def test_cli_hostile_batch_loses_nothing(tmp_path):
    """A pixel bomb, a named pipe, a non-UTF-8 name and a 1 x 20000 strip among good photos, in a
    real `retinaface-tf detect` process: every good image is processed, every bad one named."""
    photos = tmp_path / "photos"
    good = _photos(photos, 1)[0]
    (photos / "bomb.png").write_bytes(png_bytes(BIG, BIG))
    os.mkfifo(photos / "pipe.jpg")
    cafe = _non_utf8_name(photos)
    cafe.write_bytes(good.read_bytes())
    strip = tmp_path / "tall_1x20000.png"
    cv2.imwrite(str(strip), np.full((1, 20000, 3), 90, np.uint8))
    inputs_before = _snapshot(photos)
    out = tmp_path / "out"
    proc = subprocess.run(_console_script() + ["detect", str(photos), str(strip), "other_missing.jpg",
                                               "--max-size", "1000", "--output", str(out)],
                          capture_output=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, err
    errors = [line[len("error: "):] for line in _messages(err) if line.startswith("error: ")]
    assert len(errors) == 3, err
    assert any(e.startswith(f"{photos / 'bomb.png'}: PNG of 30000x30000 = 900 megapixels") for e in errors)
    assert f"{photos / 'pipe.jpg'}: not a regular file (a pipe, device or socket); only files are read" in errors
    assert "other_missing.jpg: no such file" in errors
    report = json.loads((out / "detections.json").read_text())
    assert report["complete"] is True and report["images_done"] == report["images_total"] == 6
    by_image = {r["image"]: r for r in report["images"]}
    assert len(by_image[str(good)]["faces"]) > 0
    assert by_image[os.fsdecode(cafe)]["faces"] == by_image[str(good)]["faces"]
    assert by_image[str(strip)]["width"] == 20000 and by_image[str(strip)]["faces"] == []
    written = sorted(os.listdir(os.fsencode(out)))
    assert written == sorted([b"caf\xe9.jpg", b"detections.json", b"p0.jpg", b"tall_1x20000.png"])
    assert _snapshot(photos) == inputs_before


def test_cli_output_is_input_folder_subprocess(tmp_path):
    photos = tmp_path / "photos"
    _photos(photos)
    before = _snapshot(photos)
    proc = subprocess.run(_console_script() + ["detect", str(photos), "--output", str(photos)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == (f"retinaface-tf detect: error: {photos}: input lies inside the output folder "
                                      f"{photos}; detect never writes where its inputs are: choose another --output")
    assert proc.stdout == "" and _snapshot(photos) == before


def test_failure_mid_run_keeps_finished_results(tmp_path, monkeypatch, capsys):
    from retinaface_tf.commands import detect

    photos = tmp_path / "photos"
    _photos(photos, 3)
    real_draw = detect.draw_detections
    for exc, expected in ((RuntimeError("boom in drawing"), RuntimeError), (KeyboardInterrupt(), 130)):
        calls = []

        def draw(image, det, _exc=exc):
            calls.append(1)
            if len(calls) == 2:
                raise _exc
            return real_draw(image, det)

        monkeypatch.setattr(detect, "draw_detections", draw)
        out = tmp_path / f"out_{type(exc).__name__}"
        argv = ["detect", str(photos), "--output", str(out), "--batch-size", "1"]
        if expected is RuntimeError:
            with pytest.raises(RuntimeError, match="boom in drawing"):
                main(argv)
        else:
            assert main(argv) == 130
        report = json.loads((out / "detections.json").read_text())
        assert report["complete"] is False and report["images_total"] == 3
        assert [r["image"] for r in report["images"]] == [str(photos / "p0.jpg")]
        assert len(report["images"][0]["faces"]) > 0 and (out / "p0.jpg").is_file()
        assert f"detect stopped ({type(exc).__name__}); 1 of 3 images recorded in {out / 'detections.json'}" in \
            capsys.readouterr().err
        assert sorted(os.listdir(out)) == ["detections.json", "p0.jpg"]  # no temporary file left


def test_full_disk_is_one_line_and_keeps_earlier_files(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    _photos(photos, 3)
    out = tmp_path / "out"
    real_write = fileio.write_bytes_atomic
    images_written = []

    def write(path, data):
        if Path(path).suffix != ".json":
            images_written.append(path)
            if len(images_written) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, data)

    monkeypatch.setattr(fileio, "write_bytes_atomic", write)
    assert main(["detect", str(photos), "--output", str(out), "--batch-size", "1"]) == 2
    [err] = _messages(capsys.readouterr().err)
    assert err == (f"retinaface-tf detect: error: {out / 'p1.jpg'}: cannot write the annotated image: No space "
                   f"left on device; detect stopped (2 of 3 images recorded in {out / 'detections.json'})")
    first = out / "p0.jpg"
    assert cv2.imread(str(first)).shape == (104, 160, 3)
    report = json.loads((out / "detections.json").read_text())
    assert report["complete"] is False and list(report["annotated_files"]) == ["p0.jpg"]
    assert "No space left on device" in report["images"][1]["error"]
    assert sorted(os.listdir(out)) == ["detections.json", "p0.jpg"]


def test_max_pixels_flag(tmp_path, capsys):
    photos = tmp_path / "photos"
    _photos(photos, 1)
    assert main(["detect", str(photos), "--output", str(tmp_path / "o1"), "--max-pixels", "10K", "--no-draw"]) == 1
    err = capsys.readouterr().err
    assert f"{photos / 'p0.jpg'}: JPEG of 160x104 = 0.01664 megapixels, over the limit of 0.01 megapixels" in err
    with pytest.raises(SystemExit):
        main(["detect", str(photos), "--max-pixels", "0"])
    assert "argument --max-pixels: not a positive whole number of pixels: '0'" in capsys.readouterr().err


# ------------------------------------------------------------------ evaluate
def test_evaluate_refuses_bad_values_and_outputs_before_any_work(tmp_path, capsys):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("mine")
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"not a plot")
    base = ["evaluate", "-g", str(tmp_path / "gt"), "--images", str(tmp_path / "images")]
    cases = [(["--iou-threshold", "nan"], "--iou-threshold must be in [0, 1], got nan"),
             (["--score-threshold", "nan"], "--score-threshold must be in [0, 1], got nan"),
             (["--save-predictions", str(keep), "--no-plot"], f"--save-predictions {keep}: folder is not empty"),
             (["--save-predictions", str(notes), "--no-plot"], "exists and is not a folder"),
             (["--save-predictions", str(tmp_path / "images" / "p"), "--no-plot"], "overlaps --images"),
             (["--plot", str(notes)], f"--plot {notes}: exists and is not a plot"),
             (["--plot", str(keep)], f"--plot {keep}: is a folder"),
             (["--plot", str(notes / "x.png")], "is not a folder")]
    before = _snapshot(tmp_path)
    for extra, needle in cases:
        assert main(base + extra) == 2, extra
        err = _one_line(capsys.readouterr().err)
        assert needle in err, (extra, err)
    assert _snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["keep", "notes.png"]


def test_evaluate_full_disk_keeps_complete_prediction_files(widerface_dir, tmp_path, monkeypatch, capsys):
    event = "50--Celebration_Or_Party"
    images = tmp_path / "images" / event
    images.mkdir(parents=True)
    for src in sorted((widerface_dir / "val" / "images" / event).iterdir())[:2]:
        os.symlink(src, images / src.name)
    real_write = fileio.write_text_atomic
    calls = []

    def write(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, text)

    monkeypatch.setattr(fileio, "write_text_atomic", write)
    saved = tmp_path / "saved"
    rc = main(["evaluate", "--images", str(tmp_path / "images"), "-g", str(widerface_dir / "ground_truth"),
               "--save-predictions", str(saved), "--quiet", "--no-plot"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{calls[1]}: cannot write the prediction file: No space left on device" in err
    assert "stopped after 1 of 2 images" in err
    files = os.listdir(saved / event)
    assert files == [Path(calls[0]).name]
    lines = (saved / event / files[0]).read_text().splitlines()
    assert int(lines[1]) == len(lines) - 2 > 0


# ------------------------------------------------------------------ training data
def test_label_paths_cannot_escape_the_images_folder(tmp_path):
    from retinaface_tf.data.widerface import LabelFileError, read_annotations

    for header in ("/etc/hostname", "../../etc/hostname", "a/../../x.jpg", "..", "C:/x.jpg", "a\x00b.jpg"):
        label = tmp_path / "label.txt"
        label.write_text(f"# ok/a.jpg\n1 1 4 4\n\n# {header}\n1 1 4 4\n")
        with pytest.raises(LabelFileError) as err:
            read_annotations(label)
        msg = _one_line(str(err.value))
        assert msg.startswith(f"{label}:4: image path ") and ("absolute" in msg or "outside" in msg or "NUL" in msg)
    label.write_text("# a/../b.jpg\n1 1 4 4\n")  # stays inside: fine
    assert read_annotations(label).images[0].path == "a/../b.jpg"


def test_training_checks_every_image_before_any_step(tmp_path):
    from synthetic import make_dataset

    from retinaface_tf.config import Config, DataConfig
    from retinaface_tf.data.pipeline import DatasetError, build_dataset
    from retinaface_tf.data.widerface import BadImagesError, check_images, read_annotations
    from retinaface_tf.training import train

    label, images = make_dataset(tmp_path / "data", images=5)
    data = (images / "im1.jpg").read_bytes()
    (images / "im1.jpg").write_bytes(data[: len(data) // 2])  # truncated: TensorFlow cannot decode it
    (images / "im3.jpg").write_bytes(png_bytes(BIG, BIG))  # a pixel bomb named .jpg
    cv2.imwrite(str(images / "im4.tif"), np.zeros((8, 8, 3), np.uint8))
    os.replace(images / "im4.tif", images / "im4.jpg")  # a TIFF TensorFlow's decode_image cannot read
    ann = read_annotations(label)
    with pytest.raises(BadImagesError) as err:
        check_images(ann, images)
    msg = _one_line(str(err.value))
    assert msg.startswith(f"{label}:4: {images / 'im1.jpg'}: TensorFlow cannot decode this JPEG")
    assert msg.endswith("(3 of 5 images cannot be used; the first is shown)")
    (images / "im1.jpg").write_bytes(data)
    with pytest.raises(BadImagesError, match=rf"^{label}:10: {images / 'im3.jpg'}: PNG of 30000x30000"):
        check_images(ann, images)
    (images / "im3.jpg").write_bytes(data)
    with pytest.raises(BadImagesError, match="TIFF cannot be decoded by TensorFlow's decode_image"):
        build_dataset(label, images, batch_size=2, data=DataConfig(image_size=64))
    cfg = Config.preset("mobilenet025").override({"data.image_size": "64", "train.batch_size": "2"})
    with pytest.raises(BadImagesError, match="im4.jpg"):
        train(cfg, output_dir=tmp_path / "run", label_file=label, images_dir=images)
    assert not (tmp_path / "run").exists()

    dropped = tmp_path / "dropped.txt"
    dropped.write_text("# im0.jpg\n1 1 0 5\n# im2.jpg\n3 3 4 0\n")
    with pytest.warns(UserWarning, match="dropped 2 face"):
        with pytest.raises(DatasetError, match=r"no images with faces to train on \(2 face\(s\) with zero"):
            build_dataset(dropped, images, batch_size=2, data=DataConfig(image_size=64))


def test_pipeline_names_a_file_that_changed_after_the_check(tmp_path):
    import tensorflow as tf
    from synthetic import make_dataset

    from retinaface_tf.config import DataConfig
    from retinaface_tf.data.pipeline import build_dataset

    label, images = make_dataset(tmp_path / "data", images=2)
    ds = build_dataset(label, images, batch_size=None, data=DataConfig(image_size=64), training=False, shuffle=False)
    (images / "im1.jpg").write_text("replaced by a text file after the check")
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        for _ in ds:
            pass
    assert str(images / "im1.jpg") in str(err.value) and "not a JPEG, PNG, BMP, GIF or WebP" in str(err.value)


def test_output_names_never_clash(tmp_path):
    from retinaface_tf.commands.detect import _output_names

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    paths = [str(folder / "a.bmp"), str(folder / "a.jpg"), str(folder / "sub" / "a.jpg"), str(tmp_path / "a.jpg"),
             str(tmp_path / "x" / "a.tif")]
    names = _output_names(paths, [str(folder), str(tmp_path / "a.jpg"), str(tmp_path / "x" / "a.tif")])
    assert names == ["a.jpg", "a_1.jpg", os.path.join("sub", "a.jpg"), "a_2.jpg", "a_3.jpg"]


def test_train_max_pixels_flag(tmp_path, capsys):
    """``train --max-pixels`` lowers (or raises) the header limit for training images, checked
    before any step; nothing is written."""
    from synthetic import make_dataset

    label, images = make_dataset(tmp_path / "data", images=2)
    run = tmp_path / "run"
    code = main(["train", "--config", "mobilenet025", "--set", "data.image_size=64", "--batch-size", "2",
                 "--label-file", str(label), "--images", str(images), "--output", str(run), "--max-pixels", "100"])
    assert code != 0 and not run.exists()
    err = capsys.readouterr().err
    assert f"{images / 'im0.jpg'}" in err and "over the limit of 0.0001 megapixels" in err
    with pytest.raises(SystemExit):
        main(["train", "--max-pixels", "-5"])
