"""`retinaface-tf detect` and image reading: formats, bad input, outputs."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from retinaface_tf.cli import main
from retinaface_tf.fileio import ImageError, bundled_image, read_image, to_bgr_uint8


@pytest.fixture(scope="module")
def photo():
    return cv2.imread(str(bundled_image()))


def test_image_layouts_are_converted(tmp_path, photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "d.png"), photo.astype(np.uint16) * 257)
    g = read_image(tmp_path / "g.png")
    assert g.shape == photo.shape and (g[..., 0] == gray).all() and (g[..., 2] == gray).all()
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), photo)
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), photo)  # 16-bit -> 8-bit exactly
    np.testing.assert_array_equal(to_bgr_uint8(photo.astype(np.float32) / 255.0), photo)


@pytest.mark.parametrize("name, content, needle", [
    ("missing.jpg", None, "no such file"),
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"not an image at all", "not a readable image"),
])
def test_bad_images_raise_one_line_naming_file(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert str(path) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)


def test_zero_sized_array_is_rejected():
    with pytest.raises(ValueError, match="zero-sized"):
        to_bgr_uint8(np.zeros((0, 12, 3), np.uint8))


def test_detect_batch_with_bad_files(tmp_path, capsys, photo):
    good = tmp_path / "in" / "crowd.jpg"
    good.parent.mkdir()
    cv2.imwrite(str(good), photo)
    cv2.imwrite(str(tmp_path / "in" / "small.png"), cv2.resize(photo, (512, 312)))
    corrupt = tmp_path / "in" / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:200])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    missing = tmp_path / "nope.jpg"
    out = tmp_path / "out"
    rc = main(["detect", str(tmp_path / "in"), str(notes), str(missing), "--output", str(out), "--score-threshold", "0.6"])
    captured = capsys.readouterr()
    assert rc == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    for bad in (corrupt, notes, missing):
        assert sum(str(bad) in line for line in errors) == 1
    report = json.loads((out / "detections.json").read_text())
    by_name = {r["image"]: r for r in report["images"]}
    assert len(by_name) == 5
    crowd = by_name[str(good)]
    assert len(crowd["faces"]) >= 20 and all(f["score"] > 0.6 for f in crowd["faces"])
    face = crowd["faces"][0]
    x1, y1, x2, y2 = face["box_xyxy"]
    assert 0 <= x1 < x2 <= 1024 and 0 <= y1 < y2 <= 624 and len(face["landmarks"]) == 5
    assert (out / "crowd.jpg").exists() and (out / "small.png").exists()
    annotated = cv2.imread(str(out / "crowd.jpg"))
    assert annotated.shape == photo.shape and not np.array_equal(annotated, photo)
    assert "error" in by_name[str(missing)]


def test_detect_json_stdout_and_max_size(tmp_path, capsys):
    rc = main(["detect", "--output", str(tmp_path), "--json", "--max-size", "640", "--no-draw"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    faces = report["images"][0]["faces"]
    assert len(faces) >= 20
    # downscaled internally, returned in original pixels: some boxes lie right of x = 640
    assert max(f["box_xyxy"][2] for f in faces) > 700


def test_cli_usage_errors(capsys):
    assert main(["detect", "--score-threshold", "2"]) == 2
    assert "--score-threshold must be in [0, 1]" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "retinaface_tf.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "detect" in out.stdout and "convert" in out.stdout


def test_read_ahead_keeps_order_and_bounds_the_reads_in_flight():
    """detect decodes up to READ_AHEAD images ahead on reader threads, yields them in input order,
    and closing the generator (a failure downstream) stops the reads not yet started."""
    import threading
    import time

    from retinaface_tf.fileio import READ_AHEAD, read_ahead

    started, lock = [], threading.Lock()

    def read(i):
        with lock:
            started.append(i)
        time.sleep(0.01 * (i % 3))  # out-of-order completion
        return i * 10

    assert list(read_ahead(list(range(20)), read)) == [(i, i * 10) for i in range(20)]
    started.clear()
    gen = read_ahead(list(range(100)), read)
    assert next(gen) == (0, 0)
    gen.close()
    assert len(started) <= READ_AHEAD + 2  # the first, the ones ahead, and one refill


def test_writes_after_a_fatal_error_are_not_made():
    """The writer thread runs each image's writes in order; after a fatal one (disk full) the
    images still queued are not written, as if the run had stopped there."""
    import errno

    from retinaface_tf.commands.detect import _Writes

    made = []

    def write_ok(name):
        return lambda: made.append(name)

    def write_full():
        raise OSError(errno.ENOSPC, "No space left on device")

    writes = _Writes()
    writes.submit(0, {"n": 0}, [("file", Path("a"), write_ok("a"))])
    writes.submit(1, {"n": 1}, [("file", Path("b"), write_full)])
    writes.submit(2, {"n": 2}, [("file", Path("c"), write_ok("c"))])
    done = list(writes.drain())
    writes.close()
    assert made == ["a"] and [i for i, _, _ in done] == [0, 1]
    assert done[0][2] == [(None, False)]
    assert done[1][2][0][1] is True and "No space left on device" in done[1][2][0][0]
